"""minillama against transformers' stored outputs (tests/fixtures), with no torch installed.

scripts/make_fixtures.py ran transformers 5.24 on each case of tests/reference_cases.py and stored
config.json, the tensor list and the outputs; here the same checkpoint is rebuilt from NumPy
alone and minillama must reproduce the outputs: float32 logits within 1e-4, generated ids
token for token. tests/test_crosscheck.py runs the same comparisons live where torch is installed.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

import minillama
from minillama import to_numpy
from minillama.generation import generate
from reference_cases import CASES, TOKENIZER_JSON, load_fixtures, write_case_checkpoint

TOLERANCE = 1e-4  # max abs difference of float32 logits
DESCRIBED, ARRAYS = load_fixtures()


def assert_close(ours, reference, tol=TOLERANCE):
    ours = to_numpy(ours)
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape
    diff = float(np.max(np.abs(ours - reference)))
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol}"


def checkpoint(tmp_path, name):
    write_case_checkpoint(tmp_path / "ckpt", DESCRIBED["cases"][name])
    return tmp_path / "ckpt"


def by_kind(*kinds):
    return [name for name, case in CASES.items() if case["kind"] in kinds]


def test_fixtures_cover_every_case():
    assert set(DESCRIBED["cases"]) == set(CASES), "run scripts/make_fixtures.py after changing the cases"
    assert DESCRIBED["transformers"] == "5.24.0"


def test_rebuilt_checkpoint_reads_as_transformers_saved_it(tmp_path):
    # The fixture's tensor list is what transformers saved; a tied model saves no lm_head.
    tied = DESCRIBED["cases"]["logits/tied_embeddings"]
    assert "lm_head.weight" not in dict(tied["tensors"]) and tied["config"]["tie_word_embeddings"] is True
    model = minillama.load(checkpoint(tmp_path, "logits/saved_bfloat16"))
    assert model.config.num_key_value_heads == 2 and model.weights.embed_tokens.dtype == np.float32


@pytest.mark.parametrize("name", by_kind("logits", "classify"))
def test_logits_equal_transformers(tmp_path, backend, name):
    inputs = dict(CASES[name]["inputs"])
    ids = inputs.pop("ids")
    model = minillama.load(checkpoint(tmp_path, name), backend=backend)
    assert type(model).__name__ == CASES[name]["cls"]
    logits = to_numpy(model(ids, **inputs).logits)
    expected = ARRAYS[f"{name}/logits"]
    if "attention_mask" in inputs and CASES[name]["kind"] == "logits":  # padding rows hold no meaning
        keep = inputs["attention_mask"] == 1
        logits, expected = logits[keep], expected[keep]
    assert_close(logits, expected)


def test_left_padded_rows_equal_transformers_without_positions(tmp_path):
    # minillama counts positions from the mask itself; transformers was given them explicitly.
    name = "logits/left_padded"
    inputs = CASES[name]["inputs"]
    model = minillama.load(checkpoint(tmp_path, name))
    logits = to_numpy(model(inputs["ids"], attention_mask=inputs["attention_mask"]).logits)
    keep = inputs["attention_mask"] == 1
    assert_close(logits[keep], ARRAYS[f"{name}/logits"][keep])


def test_hidden_states_and_attentions_equal_transformers(tmp_path, backend):
    name = "states/hidden_and_attentions"
    ids = CASES[name]["inputs"]["ids"]
    out = minillama.load(checkpoint(tmp_path, name), backend=backend)(ids, output_hidden_states=True,
                                                                      output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    for i, ours in enumerate(out.hidden_states):
        assert_close(ours, ARRAYS[f"{name}/hidden_{i}"])
    for i, ours in enumerate(out.attentions):
        assert tuple(ours.shape) == (2, 4, 12, 12)
        assert_close(ours, ARRAYS[f"{name}/attention_{i}"], tol=1e-6)


def test_llama_model_last_hidden_state_equals_transformers(tmp_path, backend):
    name = "model/last_hidden_state"
    model = minillama.LlamaModel.from_pretrained(checkpoint(tmp_path, name), backend=backend)
    assert_close(model(CASES[name]["inputs"]["ids"]).last_hidden_state, ARRAYS[f"{name}/last_hidden_state"])


def test_float16_compute_stays_near_the_float32_reference(tmp_path):
    name = "logits/saved_float16"
    model = minillama.LlamaForCausalLM.from_pretrained(checkpoint(tmp_path, name), dtype="float16")
    logits = to_numpy(model(CASES[name]["inputs"]["ids"]).logits)
    assert logits.dtype == np.float16
    # Half precision arithmetic: agreement to a few hundredths, not to float32 rounding.
    assert np.abs(logits.astype(np.float32) - ARRAYS[f"{name}/logits"]).max() < 0.05


@pytest.mark.parametrize("name", by_kind("generate"))
def test_greedy_generation_equals_transformers(tmp_path, name):
    case = CASES[name]
    inputs, options = case["inputs"], case["options"]
    mask = inputs.get("attention_mask")
    eos = int(ARRAYS[f"{name}/eos"]) if f"{name}/eos" in ARRAYS else []
    out = generate(minillama.load(checkpoint(tmp_path, name)), inputs["ids"], attention_mask=mask,
                   max_new_tokens=options["max_new_tokens"], eos_token_id=eos, pad_token_id=0,
                   repetition_penalty=options.get("repetition_penalty", 1.0))
    np.testing.assert_array_equal(out.sequences, ARRAYS[f"{name}/sequences"])
    if eos != []:  # row 0 really stopped early, at the EOS
        assert out.new_tokens[0][-1] == eos and len(out.new_tokens[0]) <= options["eos_from_step"] + 1


def tokenizer_rows():
    from test_tokenizer import CORPUS, MODEL
    if not os.path.exists(MODEL):
        pytest.skip("../shared/models/llama2-tokenizer is absent")
    with gzip.open(TOKENIZER_JSON, "rt", encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    assert [row["chars"] for row in rows] == [len(s) for s in CORPUS], "rerun scripts/make_fixtures.py"
    return MODEL, list(zip(CORPUS, rows))


def test_tokenizer_ids_equal_transformers_but_for_documented_classes():
    # transformers' tokenizers pipeline differs from sentencepiece on a few classes of input
    # (docs/tokenizer.md); every difference must fall into one of them.
    from minillama.tokenizer import LlamaTokenizer
    from tokenizer_corpus import classify_difference as classify
    model_path, rows = tokenizer_rows()
    ours = LlamaTokenizer.from_pretrained(model_path)
    counts = {}
    for s, row in rows:
        a, b = ours.encode(s, bos=False), row["split_special"]
        if a != b:
            kind = classify(s)
            counts[kind] = counts.get(kind, 0) + 1
            assert kind != "unexplained", repr(s)
    assert counts == {"leading-space": 196, "space-runs": 98, "literal-U+2581": 2}


def test_tokenizer_decode_equals_transformers():
    from minillama.tokenizer import LlamaTokenizer
    model_path, rows = tokenizer_rows()
    ours = LlamaTokenizer.from_pretrained(model_path)
    for s, row in rows:
        expected = s if row["decoded"] is None else row["decoded"]
        assert ours.decode([1] + row["split_special"], skip_special_tokens=True) == expected, repr(s)
