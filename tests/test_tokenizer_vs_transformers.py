"""The same corpus through transformers' LlamaTokenizer (5.24), and LlamaTokenizerFast on a tokenizer.json.

transformers converts tokenizer.model into a `tokenizers` pipeline, which differs from
sentencepiece in a few classes of input; this test asserts that every difference falls
into one of the documented classes (docs/tokenizer.md), so a new kind of difference fails it.
"""

from __future__ import annotations

import os
import shutil

import pytest

from test_tokenizer import CORPUS, MODEL

pytest.importorskip("transformers")
pytest.importorskip("google.protobuf")  # transformers needs protobuf to read a sentencepiece model
pytestmark = pytest.mark.skipif(not os.path.exists(MODEL), reason="../shared/models/llama2-tokenizer is absent")

from minillama.tokenizer import LlamaTokenizer, LlamaTokenizerFast  # noqa: E402

SPECIAL_TEXT = ("<s>", "</s>", "<unk>")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import transformers
    sp_folder = tmp_path_factory.mktemp("sp")
    shutil.copy(MODEL, sp_folder / "tokenizer.model")
    hf = transformers.LlamaTokenizer.from_pretrained(sp_folder)
    json_folder = tmp_path_factory.mktemp("json")
    hf.save_pretrained(json_folder)  # writes tokenizer.json (and no tokenizer.model)
    return hf, sp_folder, json_folder


def classify(s):
    """Which documented class of difference explains ids that disagree."""
    if s.startswith(" "):
        return "leading-space"
    if "  " in s:
        return "space-runs"
    if "\u2581" in s:
        return "literal-U+2581"
    if any(t in s for t in SPECIAL_TEXT):
        return "special-text"
    return "unexplained"


def test_every_difference_is_a_documented_class(folders):
    hf, _, _ = folders
    ours = LlamaTokenizer.from_pretrained(MODEL)
    counts = {}
    for s in CORPUS:
        a = ours.encode(s, bos=False)
        b = hf.encode(s, add_special_tokens=False, split_special_tokens=True)
        if a != b:
            kind = classify(s)
            counts[kind] = counts.get(kind, 0) + 1
            assert kind != "unexplained", repr(s)
            if kind == "space-runs":  # another split of the same text
                assert ours.decode(a) == hf.decode(b)
    assert counts.get("leading-space", 0) > 0  # the main class is really present
    # Literal special-token text: transformers' default makes it the special id; split_special_tokens=True
    # reproduces sentencepiece; parse_special_tokens=True reproduces transformers.
    assert hf.encode("<s>hi</s>", add_special_tokens=False) == [1, 2918, 2]
    assert hf.encode("<s>hi</s>", add_special_tokens=False, split_special_tokens=True) == ours.encode("<s>hi</s>", bos=False)


def test_fast_tokenizer_reproduces_transformers(folders):
    hf, _, json_folder = folders
    assert not (json_folder / "tokenizer.model").exists()
    fast = LlamaTokenizerFast.from_pretrained(json_folder)
    assert (fast.bos_token_id, fast.eos_token_id, fast.unk_token_id, len(fast)) == (1, 2, 0, 32000)
    for s in CORPUS:
        assert fast.encode(s, bos=False) == hf.encode(s, add_special_tokens=False, split_special_tokens=True), repr(s)
        assert fast.encode(s, bos=False, parse_special_tokens=True) == hf.encode(s, add_special_tokens=False), repr(s)
        ids = fast.encode(s)
        assert fast.decode(ids) == hf.decode(ids, skip_special_tokens=True), repr(s)
        assert "".join(fast.decode_stream(ids)) == fast.decode(ids), repr(s)


def test_fast_tokenizer_same_interface(folders):
    _, _, json_folder = folders
    fast = LlamaTokenizerFast.from_pretrained(json_folder)
    assert fast.add_special_tokens({"pad_token": "<pad>"}) == 1 and fast.pad_token_id == 32000
    batch = fast(["Hello world", "Hi"], padding=True, return_tensors="np")
    assert batch.input_ids.shape[0] == 2 and batch.input_ids[1, 0] == 32000
    assert fast.apply_chat_template([{"role": "user", "content": "Hi"}], return_dict=False)[0] == 1
    assert fast.decode(fast.encode("<pad>", bos=False, parse_special_tokens=True), skip_special_tokens=False) == "<pad>"


@pytest.fixture(scope="module")
def llama2_hf_folder(tmp_path_factory):
    """tokenizer.model with the tokenizer_config.json settings of the Llama-2-*-hf repos."""
    folder = tmp_path_factory.mktemp("llama2-hf")
    shutil.copy(MODEL, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text('{"add_bos_token": true, "add_eos_token": false}')
    return folder


def test_bos_eos_settings_and_pairs_match_transformers(llama2_hf_folder):
    import transformers
    hf = transformers.LlamaTokenizer.from_pretrained(llama2_hf_folder)
    ours = LlamaTokenizer.from_pretrained(llama2_hf_folder)
    texts, pairs = ["Hello", "a b", "日本"], ["world", "c", "x y z"]
    for add_eos in (False, True):
        hf.add_eos_token = ours.add_eos_token = add_eos
        for add_bos in (True, False):
            hf.add_bos_token = ours.add_bos_token = add_bos
            assert ours.encode("Hello world") == hf.encode("Hello world")
            assert ours(texts)["input_ids"] == hf(texts)["input_ids"]
            assert ours(texts, pairs)["input_ids"] == hf(texts, pairs)["input_ids"]
            assert ours("Hello", "world") == dict(hf("Hello", "world"))


def test_fast_tokenizer_saved_folder_loads_in_transformers(folders, tmp_path):
    import transformers
    _, _, json_folder = folders
    fast = LlamaTokenizerFast.from_pretrained(json_folder)
    fast.add_special_tokens({"pad_token": "<pad>"})
    fast.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists() and (tmp_path / "special_tokens_map.json").exists()
    hf = transformers.LlamaTokenizerFast.from_pretrained(tmp_path)
    assert (hf.pad_token, hf.pad_token_id) == ("<pad>", 32000)
    again = LlamaTokenizerFast.from_pretrained(tmp_path)
    for s in CORPUS[:200] + ["<s>hi</s>", "a<pad>b"]:
        assert again.encode(s, parse_special_tokens=True) == fast.encode(s, parse_special_tokens=True), repr(s)
        assert again.encode(s, bos=False, parse_special_tokens=True) == hf.encode(s, add_special_tokens=False), repr(s)
