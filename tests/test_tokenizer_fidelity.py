"""Fidelity to sentencepiece and transformers in the corners: text after a special token, <unk>,
models without byte fallback, and the readable BPE decoder on control and byte pieces.

Reference values are literal (taken from sentencepiece 0.2 and transformers 5.24 with the real
Llama 2 tokenizer.model); where those libraries are installed they are also compared live.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import given, settings, strategies as st

from conftest import SHARED
from minillama.tokenizer import LlamaTokenizer, TokenizerError, bpe
from minillama.tokenizer.bpe import BPETokenizer, decode_bytes

MODEL = os.path.join(SHARED, "models", "llama2-tokenizer", "tokenizer.model")
pytestmark = pytest.mark.skipif(not os.path.exists(MODEL), reason="../shared/models/llama2-tokenizer is absent")


@pytest.fixture(scope="module")
def tok():
    return LlamaTokenizer.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def sp():
    import sentencepiece
    return sentencepiece.SentencePieceProcessor(model_file=MODEL)


@pytest.fixture(scope="module")
def readable():
    return BPETokenizer.from_file(MODEL)


def byte_id(value: int) -> int:
    return 3 + value  # Llama 2 keeps <0x00> ... <0xFF> at ids 3 ... 258


# ---- (a) text after a special token gets no dummy prefix ----------------------------------

PARSED = {  # text -> ids with add_special_tokens=False, as transformers 5.24 gives them
    "<s>hi</s>": [1, 2918, 2],  # "hi" after <s>: 2918 "hi", not 7251 "▁hi"
    "<s> Hello<s>how": [1, 15043, 1, 3525],  # " Hello" -> "▁Hello"; "how" -> 3525, not 920 "▁how"
    "Hello<s>how": [15043, 1, 3525],  # text at the very start keeps its dummy prefix
    "a</s> b": [263, 2, 289],
    "<s>": [1],
}


@pytest.mark.parametrize("text", PARSED)
def test_no_dummy_prefix_after_a_special_token(tok, text):
    assert tok.encode(text, parse_special_tokens=True, add_special_tokens=False) == PARSED[text]
    assert tok.encode(text, parse_special_tokens=True) == [1] + PARSED[text]  # add_bos_token=True, as Llama-2-hf
    assert tok.convert_tokens_to_ids(tok.tokenize(text, parse_special_tokens=True)) == PARSED[text]


def test_literal_special_text_stays_text_by_default(tok, sp):
    assert tok.encode("<s>hi</s>", bos=False) == sp.encode("<s>hi</s>") == [529, 29879, 29958, 2918, 829, 29879, 29958]


def test_after_special_encoding_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")
    shutil.copy(MODEL, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text('{"add_bos_token": true, "add_eos_token": false}')
    hf = transformers.LlamaTokenizer.from_pretrained(tmp_path)
    ours = LlamaTokenizer.from_pretrained(tmp_path)
    texts = list(PARSED) + ["<s>[INST] Hi [/INST] Hello </s><s>[INST] again [/INST]", "x</s>\n<s>y", "é<unk>日本</s>🙂"]
    for text in texts:
        assert ours.encode(text, parse_special_tokens=True) == hf.encode(text), repr(text)
        assert ours.encode(text, parse_special_tokens=True, add_special_tokens=False) == \
            hf.encode(text, add_special_tokens=False), repr(text)
        assert ours.tokenize(text, parse_special_tokens=True) == hf.tokenize(text), repr(text)


def test_without_dummy_prefix_changes_only_that_flag(sp):
    import sentencepiece
    data = open(MODEL, "rb").read()
    changed = bpe.parse_model_proto(bpe.without_dummy_prefix(data))
    original = bpe.parse_model_proto(data)
    assert original.add_dummy_prefix and not changed.add_dummy_prefix
    assert (changed.pieces, changed.scores, changed.types) == (original.pieces, original.scores, original.types)
    plain = sentencepiece.SentencePieceProcessor(model_proto=bpe.without_dummy_prefix(data))
    assert plain.encode("hi") == [2918] and sp.encode("hi") == [7251]


# ---- (b) <unk> decodes to " ⁇ " ------------------------------------------------------------

UNK = {(0,): " \u2047 ", (1, 0, 2): " \u2047 ", (15043, 0, 3186): "Hello \u2047  world", (0, 15043): " \u2047  Hello"}


@pytest.mark.parametrize("ids", UNK)
def test_unknown_decodes_as_sentencepiece(tok, sp, readable, ids):
    assert tok.decode(list(ids)) == UNK[ids] == sp.decode(list(ids)) == readable.decode(list(ids))
    assert "".join(tok.decode_stream(list(ids))) == UNK[ids]


def test_unknown_shown_as_its_text_when_not_skipping(tok):
    # transformers' rendering: "<s><unk></s>", "Hello<unk> world"
    assert tok.decode([1, 0, 2], skip_special_tokens=False) == "<s><unk></s>"
    assert tok.decode([15043, 0, 3186], skip_special_tokens=False) == "Hello<unk> world"


def test_unknown_used_as_padding_is_skipped():
    tok = LlamaTokenizer.from_pretrained(MODEL)
    tok.pad_token = tok.unk_token
    assert tok.decode([0, 0, 1, 15043]) == "Hello"


# ---- (c) a model without byte fallback -----------------------------------------------------

def rewrite_pieces(data: bytes, change) -> bytes:
    """The serialized model with ``change(piece message bytes)`` applied to every piece (field 1)."""
    out, pos = bytearray(), 0
    while pos < len(data):
        start = pos
        key, pos = bpe._read_varint(data, pos)
        pos = bpe._skip_value(data, pos, key & 7)
        field = data[start:pos]
        if key == (1 << 3) | 2:
            _, body = bpe._read_varint(data, start + 1)
            message = change(data[body:pos])
            field = bpe._varint(key) + bpe._varint(len(message)) + message
        out += field
    return bytes(out)


def without_byte_fallback(data: bytes) -> bytes:
    """Llama 2's model with byte fallback off and its 256 byte pieces made UNUSED (type 5)."""
    def unused(piece):
        return piece + b"\x18\x05" if dict(bpe._fields(piece)).get(3) == bpe.BYTE else piece
    return bpe.with_spec_flag(rewrite_pieces(data, unused), spec=2, flag=35, value=0)


@pytest.fixture(scope="module")
def no_fallback(tmp_path_factory):
    folder = tmp_path_factory.mktemp("no-byte-fallback")
    (folder / "tokenizer.model").write_bytes(without_byte_fallback(open(MODEL, "rb").read()))
    return folder / "tokenizer.model"


def test_tokenize_shows_unknown_surface_text(no_fallback):
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=str(no_fallback))
    tok = LlamaTokenizer.from_pretrained(no_fallback)
    text = "hi 🙂 there"
    assert sp.encode(text) == tok.encode(text, bos=False) == [7251, 29871, 0, 727]
    assert tok.tokenize(text) == sp.encode(text, out_type=str) == ["\u2581hi", "\u2581", "🙂", "\u2581there"]
    assert tok.tokenize("<s>🙂x", parse_special_tokens=True) == ["<s>", "🙂", "x"]
    assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text)) == "hi  \u2047  there"


# ---- (d) and (e) the readable decoder ---------------------------------------------------

READABLE = {
    (1, 15043): "Hello",  # the first piece after BOS loses its dummy-prefix space
    (2, 2, 15043): "Hello",
    (15043, 2, 15043): "Hello Hello",  # only at the start
    (1, 29871, 15043): " Hello",  # a lone "▁" carries the dummy prefix
    (259, 15043): "  Hello",  # "▁▁": one space dropped
    (byte_id(0x41), 15043): "A Hello",
    (byte_id(0xE2), byte_id(0x82), 15043): "\ufffd\ufffd Hello",  # one U+FFFD per byte of a cut "€"
    (byte_id(0xE2), byte_id(0xE2), byte_id(0x82), byte_id(0xAC)): "\ufffd€",
    (byte_id(0xED), byte_id(0xA0), byte_id(0x80)): "\ufffd" * 3,  # a surrogate is no character
    (byte_id(0xC0), byte_id(0x80)): "\ufffd" * 2,  # nor an overlong encoding
}


@pytest.mark.parametrize("ids", READABLE)
def test_readable_decode_reference_values(readable, sp, ids):
    assert readable.decode(list(ids)) == READABLE[ids] == sp.decode(list(ids))


def test_decode_bytes():
    assert decode_bytes("€🙂a".encode()) == "€🙂a"
    assert decode_bytes(b"\xe2\x82") == "\ufffd\ufffd"
    assert decode_bytes(b"\xf0\x9f\x99") == "\ufffd" * 3
    assert b"\xe2\x82".decode("utf-8", errors="replace") == "\ufffd"  # why Python's own replace will not do


ANY_IDS = st.lists(st.one_of(st.integers(0, 258), st.sampled_from([29871, 259, 15043, 3186]), st.integers(0, 31999)),
                   max_size=12)


@settings(max_examples=400, deadline=None)
@given(ANY_IDS)
def test_property_readable_decode_of_any_ids(readable, sp, ids):
    assert readable.decode(ids) == sp.decode(ids)


# ---- the model file is checked at load --------------------------------------------------

def test_non_utf8_piece_refused_at_load(tmp_path):
    data = open(MODEL, "rb").read()
    needle = b"\x0a\x08\xe2\x96\x81Hello\x15"  # the piece message of "▁Hello": field 1, 8 bytes, then its score
    assert data.count(needle) == 1
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(data.replace(needle, b"\x0a\x08\xe2\x96\x81\xffello\x15"))
    with pytest.raises(TokenizerError, match=r"tokenizer.model: not a sentencepiece model \(piece 15043 is not UTF-8"):
        LlamaTokenizer.from_pretrained(bad)


def test_fifo_model_refused_at_once(tmp_path):
    fifo = tmp_path / "tokenizer.model"
    os.mkfifo(fifo)
    with pytest.raises(TokenizerError, match="tokenizer.model: is not a regular file"):
        LlamaTokenizer.from_pretrained(tmp_path)


def test_model_folder_refused(tmp_path):
    (tmp_path / "tokenizer.model").mkdir()
    with pytest.raises(TokenizerError, match="tokenizer.model: is a folder"):
        LlamaTokenizer.from_pretrained(tmp_path)


# ---- tokenizer_config.json: read with care, written for transformers -------------------------

def model_folder(tmp_path, config=None, raw=None):
    shutil.copy(MODEL, tmp_path / "tokenizer.model")
    if config is not None or raw is not None:
        (tmp_path / "tokenizer_config.json").write_text(raw if raw is not None else __import__("json").dumps(config))
    return tmp_path


@pytest.mark.parametrize("raw, message", [
    ("[1, 2]", "expected a JSON object, got list"),
    ("[" * 100000 + "]" * 100000, "not valid JSON"),
    ('{"add_bos_token": "yes"}', "add_bos_token must be true or false, got 'yes'"),
    ('{"add_eos_token": 1}', "add_eos_token must be true or false, got 1"),
    ('{"pad_token": 5}', "pad_token must be a token string"),
    ('{"pad_token": {"content": {"nested": [[[["garbage"]]]]}}}', r"pad_token must be a token string .*\{'content': \{'nested': \[\.\.\.\]\}\}"),
    ('{"bos_token": ""}', "bos_token must be a token string"),
    ('{"padding_side": "middle"}', "padding_side must be 'left' or 'right'"),
    ('{"added_tokens_decoder": [1]}', "added_tokens_decoder must be an object"),
    ('{"added_tokens_decoder": {"x": {"content": "<pad>"}}}', r"added_tokens_decoder\['x'\] must map an id"),
    ('{"added_tokens_decoder": {"32000": "<pad>"}}', r"added_tokens_decoder\['32000'\] must map an id"),
    ('{"added_tokens_decoder": {"32005": {"content": "<pad>"}}}', "added token '<pad>' has id 32005, but added ids must follow the vocabulary"),
    ('{"added_tokens": {"<pad>": "32000"}}', "added_tokens must map token strings to ids"),
    ('{"chat_template": 3}', "chat_template must be a string"),
    ('{"chat_template": [{"name": "tool_use", "template": "x"}]}', "chat_template must be a string"),
    ('{"x": NaN}', "not valid JSON"),
    ('{"added_tokens_decoder": {"' + "9" * 5000 + '": 1}}', r"added_tokens_decoder\['99999999999999999.*'\] must map"),
    ('{"added_tokens": {' + ", ".join(f'"<t{i}>": {32000 + i}' for i in range(70000)) + '}}', "70000 added tokens is too many"),
])
def test_malformed_tokenizer_config(tmp_path, raw, message):
    folder = model_folder(tmp_path, raw=raw)
    with pytest.raises(TokenizerError, match="tokenizer_config.json: " + message) as error:
        LlamaTokenizer.from_pretrained(folder)
    assert "\n" not in str(error.value) and len(str(error.value)) < 400


def test_tokenizer_config_fifo_refused_at_once(tmp_path):
    folder = model_folder(tmp_path)
    os.mkfifo(folder / "tokenizer_config.json")
    with pytest.raises(TokenizerError, match="tokenizer_config.json: is not a regular file"):
        LlamaTokenizer.from_pretrained(folder)


def test_tokenizer_config_fields_applied(tmp_path):
    folder = model_folder(tmp_path, {
        "add_bos_token": False, "add_eos_token": True, "padding_side": "right", "pad_token": {"content": "<pad>"},
        "added_tokens_decoder": {"0": {"content": "<unk>"}, "32000": {"content": "<pad>"}, "32001": {"content": "<x>"}},
        "chat_template": [{"name": "default", "template": "{{ bos_token }}"}]})
    tok = LlamaTokenizer.from_pretrained(folder)
    assert tok.encode("Hello") == [15043, 2] and tok.padding_side == "right"
    assert (tok.pad_token_id, tok.convert_tokens_to_ids("<x>"), len(tok)) == (32000, 32001, 32002)
    assert tok.chat_template == "{{ bos_token }}"


def test_save_pretrained_writes_transformers_files(tmp_path):
    import json
    tok = LlamaTokenizer.from_pretrained(MODEL)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.add_eos_token = True
    paths = tok.save_pretrained(tmp_path / "saved")
    assert [os.path.basename(p) for p in paths] == ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"]
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert (config["add_bos_token"], config["add_eos_token"], config["pad_token"]) == (True, True, "<pad>")
    assert {k: v["content"] for k, v in config["added_tokens_decoder"].items()} == \
        {"0": "<unk>", "1": "<s>", "2": "</s>", "32000": "<pad>"}
    assert json.loads((tmp_path / "saved" / "special_tokens_map.json").read_text()) == \
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    again = LlamaTokenizer.from_pretrained(tmp_path / "saved")
    assert (again.encode("Hello"), again.pad_token_id, len(again)) == ([1, 15043, 2], 32000, 32001)


def test_save_pretrained_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")
    tok = LlamaTokenizer.from_pretrained(MODEL)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(tmp_path)
    texts = ["Hello world", "日本語 🙂", "a<pad>b", "x\ny"]
    for cls in (transformers.LlamaTokenizer, transformers.LlamaTokenizerFast):
        hf = cls.from_pretrained(tmp_path)
        assert (hf.add_bos_token, hf.add_eos_token, hf.pad_token, hf.pad_token_id) == (True, False, "<pad>", 32000)
        for text in texts:
            assert hf.encode(text) == tok.encode(text, parse_special_tokens=True), repr(text)
        tok.add_eos_token = True
        tok.save_pretrained(tmp_path)
        assert cls.from_pretrained(tmp_path).encode("Hello") == [1, 15043, 2]
        tok.add_eos_token = False
        tok.save_pretrained(tmp_path)


def test_tokenizer_json_fifo_and_garbage_refused(tmp_path):
    pytest.importorskip("tokenizers")
    from minillama.tokenizer import LlamaTokenizerFast
    os.mkfifo(tmp_path / "tokenizer.json")
    with pytest.raises(TokenizerError, match="tokenizer.json: is not a regular file"):
        LlamaTokenizerFast.from_pretrained(tmp_path)
    os.remove(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_bytes(b'{"model": ' * 5000)
    with pytest.raises(TokenizerError, match="tokenizer.json: not a tokenizers JSON file") as error:
        LlamaTokenizerFast.from_pretrained(tmp_path)
    assert "\n" not in str(error.value)


# ---- apply_chat_template with the Llama-2-chat template of the Hugging Face repos ----------------

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}]
CHAT_TEXT = "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\n2+2? [/INST] 4 </s><s>[INST] 3+3? [/INST]"
# transformers 5.24's ids for CHAT with that template: "[" is 29961 right after <s> (no dummy prefix)
CHAT_IDS = [1, 29961, 25580, 29962, 3532, 14816, 29903, 6778, 13, 3492, 526, 1935, 344, 29889, 13, 29966, 829,
            14816, 29903, 6778, 13, 13, 29906, 29974, 29906, 29973, 518, 29914, 25580, 29962, 29871, 29946, 29871,
            2, 1, 29961, 25580, 29962, 29871, 29941, 29974, 29941, 29973, 518, 29914, 25580, 29962]


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    import json
    from minillama.tokenizer.chat import LLAMA2_CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("llama2-chat")
    shutil.copy(MODEL, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "chat_template": LLAMA2_CHAT_TEMPLATE}))
    return folder


def test_llama2_chat_template(chat_folder, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "jinja2", None)  # Llama 2's template needs no jinja2
    tok = LlamaTokenizer.from_pretrained(chat_folder)
    assert tok.apply_chat_template(CHAT, return_dict=False) == CHAT_IDS
    assert tok.apply_chat_template(CHAT)["input_ids"] == CHAT_IDS  # a dict by default, as in transformers 5
    assert tok.apply_chat_template(CHAT, tokenize=False) == CHAT_TEXT
    assert tok.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=False) == CHAT_IDS
    encoded = tok.apply_chat_template(CHAT, return_dict=True)
    assert encoded.input_ids == CHAT_IDS and encoded.attention_mask == [1] * len(CHAT_IDS)
    assert tok.apply_chat_template([CHAT, CHAT[1:2]], return_dict=True)["input_ids"][0] == CHAT_IDS
    assert tok.apply_chat_template(CHAT, return_tensors="np", return_dict=False).shape == (1, len(CHAT_IDS))
    meta = LlamaTokenizer.from_pretrained(MODEL).apply_chat_template(CHAT, return_dict=False)  # no template: Meta's per-turn encoding
    assert meta[:4] == [1, 518, 25580, 29962] and len(meta) == len(CHAT_IDS)
    assert LlamaTokenizer.from_pretrained(MODEL).apply_chat_template(CHAT, tokenize=False) == CHAT_TEXT
    with pytest.raises(TokenizerError, match="rendering it needs jinja2"):
        tok.apply_chat_template(CHAT, chat_template="{{ messages[0]['content'] }}", return_dict=False)


def test_other_templates_rendered_with_jinja(chat_folder):
    pytest.importorskip("jinja2")
    from minillama.tokenizer.chat import LLAMA2_CHAT_TEMPLATE
    tok = LlamaTokenizer.from_pretrained(chat_folder)
    assert tok._render_template(LLAMA2_CHAT_TEMPLATE, CHAT, False, {}) == CHAT_TEXT  # the Python rendering is exact
    template = "{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
               "{% if add_generation_prompt %}assistant:{% endif %}"
    text = tok.apply_chat_template(CHAT[1:2], chat_template=template, add_generation_prompt=True, tokenize=False)
    assert text == "<s>user: 2+2?\nassistant:"
    assert tok.apply_chat_template(CHAT[1:2], chat_template=template, return_dict=False) == tok.encode(
        "<s>user: 2+2?\n", add_special_tokens=False, parse_special_tokens=True) == [1, 1792, 29901, 29871, 29906,
                                                                                  29974, 29906, 29973, 13]
    with pytest.raises(TokenizerError, match="chat template: Conversation roles must alternate"):
        tok._render_template(LLAMA2_CHAT_TEMPLATE, CHAT[1:3] + CHAT[2:3], False, {})
    with pytest.raises(TokenizerError, match="chat roles must alternate"):  # the same check without jinja
        tok.apply_chat_template(CHAT[1:3] + CHAT[2:3], return_dict=False)
    with pytest.raises(TokenizerError, match="chat template: TemplateSyntaxError: "):
        tok.apply_chat_template(CHAT, chat_template="{% for %}", return_dict=False)
    with pytest.raises(TokenizerError, match="chat template: SecurityError: "):  # the sandbox holds
        tok.apply_chat_template(CHAT, chat_template="{{ messages.__class__.__mro__ }}{{ ''.__class__.mro() }}", return_dict=False)
    with pytest.raises(TokenizerError, match="chat template: TypeError: "):
        tok.apply_chat_template([{"role": "user", "content": None}], chat_template="{{ messages[0]['content'] + 1 }}", return_dict=False)
    with pytest.raises(TokenizerError, match="chat_template must be a str, got int"):
        tok.apply_chat_template(CHAT, chat_template=5, return_dict=False)
    with pytest.raises(TokenizerError, match="a chat must be a non-empty list of message dicts"):
        tok.apply_chat_template(["hi"], chat_template=template, return_dict=False)


def test_chat_template_matches_transformers(chat_folder):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")
    from test_tokenizer import DIALOGS
    hf = transformers.LlamaTokenizer.from_pretrained(chat_folder)
    tok = LlamaTokenizer.from_pretrained(chat_folder)
    assert hf.apply_chat_template(CHAT, return_dict=False) == CHAT_IDS
    for dialog in DIALOGS + [CHAT]:
        assert tok.apply_chat_template(dialog, return_dict=False) == hf.apply_chat_template(dialog, return_dict=False)
        assert tok.apply_chat_template(dialog, tokenize=False) == hf.apply_chat_template(dialog, tokenize=False)
    assert tok.apply_chat_template(DIALOGS, return_dict=True)["input_ids"] == hf.apply_chat_template(DIALOGS)["input_ids"]


def test_damaged_model_files_load_or_raise_tokenizer_error(tmp_path):
    import random
    data = open(MODEL, "rb").read()
    rng = random.Random(0)
    damaged = [data[:n] for n in (1, 7, 100, 5000, len(data) // 2, len(data) - 3)]
    for _ in range(30):
        copy = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            copy[rng.randrange(len(copy))] = rng.randrange(256)
        damaged.append(bytes(copy))
    path = tmp_path / "tokenizer.model"
    for blob in damaged:
        path.write_bytes(blob)
        try:
            tok = LlamaTokenizer.from_pretrained(path)
        except TokenizerError as error:
            assert "\n" not in str(error) and str(error).startswith(str(path))
        else:
            ids = tok.encode("Hello world")
            assert all(0 <= i < len(tok) for i in ids) and isinstance(tok.decode(ids), str)


def test_companion_files_checked(tmp_path):
    folder = model_folder(tmp_path)
    (folder / "special_tokens_map.json").write_text('{"eos_token": ["</s>"]}')
    with pytest.raises(TokenizerError, match=r"special_tokens_map.json: eos_token must be a token string"):
        LlamaTokenizer.from_pretrained(folder)
    (folder / "special_tokens_map.json").write_text('{"pad_token": {"content": "<unk>"}}')
    assert LlamaTokenizer.from_pretrained(folder).pad_token_id == 0
    (folder / "chat_template.jinja").write_bytes(b"{{ bos_token }}\xff")
    with pytest.raises(TokenizerError, match="chat_template.jinja: not UTF-8 text"):
        LlamaTokenizer.from_pretrained(folder)
    (folder / "chat_template.jinja").write_text("{{ bos_token }}")
    assert LlamaTokenizer.from_pretrained(folder).chat_template == "{{ bos_token }}"
