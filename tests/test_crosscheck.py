"""Logits against transformers, on random tiny checkpoints of every config variant Llama checkpoints use."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import minillama
from minillama import to_numpy
from conftest import make_hf_checkpoint, torch_forward
from reference_cases import VARIANTS

TOLERANCE = 1e-4  # max abs difference of float32 logits

def random_ids(vocab, batch, seq, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq))


def assert_close(ours, reference, tol=TOLERANCE):
    ours = to_numpy(ours)
    assert ours.dtype == np.float32
    diff = float(np.max(np.abs(ours - reference)))
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol}"
    return diff


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers(tmp_path, backend, variant):
    reference = make_hf_checkpoint(tmp_path, **VARIANTS[variant])
    ids = random_ids(96, 2, 24)
    expected = torch_forward(reference, ids).logits.numpy()
    model = minillama.LlamaForCausalLM.from_pretrained(tmp_path, backend=backend)
    assert_close(model(ids).logits, expected)


def test_dynamic_rope_beyond_max_positions(tmp_path, backend):
    # max_position_embeddings=16; sequences of 12 (unscaled) and 40 (NTK-scaled theta) tokens.
    overrides = dict(max_position_embeddings=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    make_hf_checkpoint(tmp_path, **overrides)
    model = minillama.LlamaForCausalLM.from_pretrained(tmp_path, backend=backend)
    for seq in (12, 40):
        # transformers' dynamic RoPE keeps state between calls; a fresh reference per length avoids it.
        reference = make_hf_checkpoint(tmp_path / f"ref{seq}", **overrides)
        ids = random_ids(96, 1, seq, seed=seq)
        assert_close(model(ids).logits, torch_forward(reference, ids).logits.numpy())


def test_dynamic_rope_changes_long_sequences(tmp_path):
    # Within max_position_embeddings dynamic RoPE is plain RoPE; past it, theta grows for the whole sequence.
    make_hf_checkpoint(tmp_path / "dyn", max_position_embeddings=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    make_hf_checkpoint(tmp_path / "plain", max_position_embeddings=16)
    dyn, plain = minillama.load(tmp_path / "dyn"), minillama.load(tmp_path / "plain")
    short, long = random_ids(96, 1, 16), random_ids(96, 1, 40)
    assert np.array_equal(dyn(short).logits, plain(short).logits)
    assert np.abs(dyn(long).logits[:, 1:] - plain(long).logits[:, 1:]).max() > 1e-3


@pytest.mark.parametrize("save_dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints(tmp_path, backend, save_dtype):
    reference = make_hf_checkpoint(tmp_path, save_dtype=save_dtype, num_key_value_heads=2)
    ids = random_ids(96, 2, 16)
    model = minillama.LlamaForCausalLM.from_pretrained(tmp_path, backend=backend)
    assert_close(model(ids).logits, torch_forward(reference, ids).logits.numpy())


def test_float16_compute_dtype(tmp_path):
    reference = make_hf_checkpoint(tmp_path, save_dtype="float16")
    ids = random_ids(96, 1, 16)
    model = minillama.LlamaForCausalLM.from_pretrained(tmp_path, dtype="float16")
    logits = model(ids).logits
    assert logits.dtype == np.float16
    # Half precision arithmetic: agreement to a few hundredths, not to float32 rounding.
    assert np.abs(logits.astype(np.float32) - torch_forward(reference, ids).logits.numpy()).max() < 0.05


def test_sharded_checkpoint(tmp_path, backend):
    reference = make_hf_checkpoint(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = random_ids(96, 1, 20)
    model = minillama.LlamaForCausalLM.from_pretrained(tmp_path, backend=backend)
    assert_close(model(ids).logits, torch_forward(reference, ids).logits.numpy())


def test_left_padded_batch_matches_each_sequence_alone(tmp_path, backend):
    reference = make_hf_checkpoint(tmp_path, num_key_value_heads=2)
    lengths = [20, 13, 5]
    rows = [random_ids(96, 1, n, seed=n)[0] for n in lengths]
    width = max(lengths)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    model = minillama.LlamaForCausalLM.from_pretrained(tmp_path, backend=backend)
    logits = to_numpy(model(ids, attention_mask=mask).logits)
    assert np.isfinite(logits).all()
    for i, row in enumerate(rows):
        alone = torch_forward(reference, row[None, :]).logits.numpy()[0]
        assert_close(logits[i, width - len(row):], alone)
    # transformers' own batched forward, given the same positions, agrees too.
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    batched = torch_forward(reference, ids, attention_mask=mask, position_ids=positions).logits.numpy()
    assert_close(logits[mask == 1], batched[mask == 1])


def test_hidden_states_and_attentions(tmp_path, backend):
    reference = make_hf_checkpoint(tmp_path, num_attention_heads=4, num_key_value_heads=2)
    ids = random_ids(96, 2, 12)
    expected = torch_forward(reference, ids, output_hidden_states=True, output_attentions=True)
    out = minillama.LlamaForCausalLM.from_pretrained(tmp_path, backend=backend)(
        ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == len(expected.hidden_states) == 3
    for ours, theirs in zip(out.hidden_states, expected.hidden_states):
        assert_close(ours, theirs.numpy())
    assert len(out.attentions) == 2
    for ours, theirs in zip(out.attentions, expected.attentions):
        assert tuple(ours.shape) == (2, 4, 12, 12)
        assert_close(ours, theirs.numpy(), tol=1e-6)


def test_llama_model_last_hidden_state(tmp_path, backend):
    reference = make_hf_checkpoint(tmp_path, cls_name="LlamaModel", num_key_value_heads=1)
    ids = random_ids(96, 2, 10)
    model = minillama.LlamaModel.from_pretrained(tmp_path, backend=backend)
    assert_close(model(ids).last_hidden_state, torch_forward(reference, ids).last_hidden_state.numpy())


def test_sequence_classification(tmp_path, backend):
    reference = make_hf_checkpoint(tmp_path, cls_name="LlamaForSequenceClassification", num_labels=3, pad_token_id=0)
    ids = random_ids(95, 3, 12) + 1  # no accidental pad tokens
    ids[1, :4] = 0  # left padding
    ids[2, 9:] = 0  # right padding
    mask = (ids != 0).astype(np.int64)
    expected = torch_forward(reference, ids, attention_mask=mask).logits.numpy()
    model = minillama.load(tmp_path, backend=backend)
    assert isinstance(model, minillama.LlamaForSequenceClassification)
    # Use transformers' positions (0..seq-1) so both models see the same inputs.
    positions = np.broadcast_to(np.arange(12), ids.shape)
    logits = model(ids, attention_mask=mask, position_ids=positions).logits
    assert tuple(logits.shape) == (3, 3)
    assert_close(logits, expected)


def test_pretraining_tp_agrees_with_unsliced(tmp_path, backend):
    # transformers 5 no longer slices; sliced float32 must agree with it to rounding.
    reference = make_hf_checkpoint(tmp_path, pretraining_tp=2, num_key_value_heads=2)
    ids = random_ids(96, 2, 16)
    model = minillama.LlamaForCausalLM.from_pretrained(tmp_path, backend=backend)
    assert model.config.pretraining_tp == 2
    sliced = to_numpy(model(ids).logits)
    assert_close(sliced, torch_forward(reference, ids).logits.numpy())
    model.config.pretraining_tp = 1
    assert_close(sliced, to_numpy(model(ids).logits), tol=1e-5)


def test_long_padded_prompt_uses_blocked_attention_and_matches(tmp_path, backend):
    # Prompts longer than QUERY_BLOCK take the blocked path; attention weights requested take the plain one.
    from minillama.fast.attention import QUERY_BLOCK
    reference = make_hf_checkpoint(tmp_path, num_key_value_heads=2, max_position_embeddings=1024)
    seq = 2 * QUERY_BLOCK + 45
    ids = random_ids(96, 2, seq, seed=3)
    mask = np.ones_like(ids)
    mask[1, :70] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    expected = torch_forward(reference, ids, attention_mask=mask, position_ids=positions).logits.numpy()
    model = minillama.LlamaForCausalLM.from_pretrained(tmp_path, backend=backend)
    blocked = to_numpy(model(ids, attention_mask=mask).logits)
    plain = to_numpy(model(ids, attention_mask=mask, output_attentions=True).logits)
    assert_close(blocked[mask == 1], expected[mask == 1])
    assert_close(blocked[mask == 1], plain[mask == 1], tol=1e-5)  # padding rows differ: they attend to nothing
    # With a cache, a long chunk after cached tokens is blocked too.
    cache = model.new_cache(2, seq)
    model(ids[:, :40], attention_mask=mask[:, :40], cache=cache)
    rest = to_numpy(model(ids[:, 40:], attention_mask=mask, cache=cache).logits)
    assert_close(rest[mask[:, 40:] == 1], expected[:, 40:][mask[:, 40:] == 1])
