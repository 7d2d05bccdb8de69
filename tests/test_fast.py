"""Each speed arrangement of minillama.fast against the reference it replaces."""

from __future__ import annotations

import numpy as np
import pytest

import minillama
import minillama.formats.hf
from minillama import functional as F
from minillama.backend import get_namespace, to_numpy
from minillama.fast import attention as FA
from minillama.fast import assembly_for, fused
from minillama.formats.synthetic import write_random_checkpoint

rng = np.random.default_rng(0)


def on(backend, *arrays):
    xp = get_namespace(backend)
    return xp, [xp.asarray(a) for a in arrays]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_blocked_attention_equals_plain_attention(backend, dtype, monkeypatch):
    # Long prompts: blocks of queries, late normalisation. GQA, a padded row, cached keys before
    # the queries, a last short block.
    if dtype == "float16" and backend == "strict":
        pytest.skip("the Array API standard has no float16")
    monkeypatch.setattr(FA, "QUERY_BLOCK", 4)
    q = rng.standard_normal((2, 8, 10, 8)).astype(dtype)
    k = rng.standard_normal((2, 2, 13, 8)).astype(dtype)
    v = rng.standard_normal((2, 2, 13, 8)).astype(dtype)
    padding = np.ones((2, 13), dtype=np.int64)
    padding[1, :5] = 0  # row 1 is left-padded: its first two queries see no key at all
    xp, (qb, kb, vb, pb) = on(backend, q, k, v, padding)
    mask = F.attention_mask(10, 13, xp, pb)
    blocked = FA.causal_attention_in_blocks(qb, kb, vb, mask)
    plain, _ = F.attention(qb, kb, vb, mask)
    assert blocked.dtype == plain.dtype == (xp.float16 if dtype == "float16" else xp.float32)
    real = padding[:, 3:] == 1  # (batch, q_len) queries that are tokens; a padding query's uniform row
    tol = 2e-3 if dtype == "float16" else 1e-6  # spans the keys its block was given, so it differs
    blocked, plain = to_numpy(blocked).astype(np.float32), to_numpy(plain).astype(np.float32)
    np.testing.assert_allclose(blocked.transpose(0, 2, 1, 3)[real], plain.transpose(0, 2, 1, 3)[real], rtol=tol, atol=tol)


def test_attention_without_a_mask_is_attention_with_every_key_visible(backend):
    # One new token after a cache, no padding: the model passes no mask at all.
    q = rng.standard_normal((1, 8, 1, 8)).astype(np.float32)
    k = rng.standard_normal((1, 2, 6, 8)).astype(np.float32)
    v = rng.standard_normal((1, 2, 6, 8)).astype(np.float32)
    xp, (qb, kb, vb) = on(backend, q, k, v)
    everything = F.attention_mask(1, 6, xp)  # the last of 6 tokens sees all of them
    for attend in (lambda m: F.attention(qb, kb, vb, m)[0], lambda m: FA.attention_normalised_late(qb, kb, vb, m)):
        np.testing.assert_allclose(to_numpy(attend(None)), to_numpy(attend(everything)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_numpy(F.attention(qb, kb, vb, None)[1]).sum(-1), 1.0, rtol=1e-6)


CONFIGS = {
    "fused (gqa)": {},
    "biases: column-major only": dict(attention_bias=True, mlp_bias=True),
    "pretraining_tp": dict(pretraining_tp=2),
    "tied": dict(tie_word_embeddings=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("lazy", [False, True])
def test_cpu_assembly_equals_reference(tmp_path, name, lazy, monkeypatch):
    monkeypatch.setattr(FA, "QUERY_BLOCK", 8)  # so the 21-token prompt takes the blocked path
    write_random_checkpoint(tmp_path, dict(CONFIGS[name], max_position_embeddings=64), seed=5, dtype="float16")
    reference = minillama.load(tmp_path, assembly="reference", lazy=lazy)
    cpu = minillama.load(tmp_path, assembly="cpu", lazy=lazy)
    assert reference.assembly.name == "reference" and cpu.assembly.name == "cpu"
    ids = np.random.default_rng(1).integers(0, 512, size=(2, 21))
    mask = np.ones_like(ids)
    mask[1, :6] = 0
    a, b = reference(ids, attention_mask=mask).logits, cpu(ids, attention_mask=mask).logits
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a[mask == 1], b[mask == 1], rtol=1e-5, atol=1e-5)
    # decoding with a cache, one token at a time
    cache_a, cache_b = reference.new_cache(2, 24), cpu.new_cache(2, 24)
    reference(ids, attention_mask=mask, cache=cache_a)
    cpu(ids, attention_mask=mask, cache=cache_b)
    step = np.array([[3], [4]])
    longer = np.concatenate([mask, np.ones((2, 1), dtype=mask.dtype)], axis=1)
    np.testing.assert_allclose(reference(step, attention_mask=longer, cache=cache_a).logits,
                               cpu(step, attention_mask=longer, cache=cache_b).logits, rtol=1e-5, atol=1e-5)


def test_fused_layers_are_views_of_one_matrix_and_the_state_dict_sees_them(tmp_path):
    write_random_checkpoint(tmp_path, seed=1)
    model = minillama.load(tmp_path)
    layer = model.weights.layers[0]
    assert isinstance(layer, fused.FusedLayerWeights)
    assert np.shares_memory(layer.q_proj, layer.qkv_proj) and np.shares_memory(layer.v_proj, layer.qkv_proj)
    assert np.shares_memory(layer.gate_proj, layer.gate_up_proj) and layer.gate_up_proj.flags.f_contiguous
    state = model.state_dict()
    assert state["model.layers.0.self_attn.k_proj.weight"] is layer.k_proj
    assert model.num_parameters() == sum(int(np.prod(t.shape)) for t in minillama.formats.hf.read_hf_checkpoint(tmp_path).values())


def test_column_major_keeps_the_values():
    w = rng.standard_normal((12, 4)).astype(np.float32)
    stored = fused.column_major(w)
    assert stored.flags.f_contiguous and np.array_equal(stored, w)
    square = rng.standard_normal((4, 4)).astype(np.float32)
    assert fused.column_major(square) is square  # only tall matrices are rearranged


def test_assembly_choice(tmp_path):
    config = minillama.LlamaConfig(hidden_size=64, num_attention_heads=4)
    assert assembly_for(None, "numpy", config, False).name == "cpu"
    assert assembly_for(None, "strict", config, False).name == "reference"
    with pytest.raises(ValueError, match="assembly 'cpu' arranges NumPy arrays"):
        assembly_for("cpu", "strict", config, False)
    with pytest.raises(ValueError, match="assembly must be one of"):
        assembly_for("gpu-someday", "numpy", config, False)


# --- fast.train_attention: the training step's causal attention, block of queries by block ------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(2, 8, 4, 37, 16), (1, 4, 1, 9, 8), (2, 4, 4, 5, 8)], ids=["gqa", "mqa", "mha"])
@pytest.mark.parametrize("block", [1, 3, 8, 64])
def test_training_attention_equals_reference_attention_and_backward(backend, dtype, shape, block):
    from minillama.fast.train_attention import causal_attention, causal_attention_backward
    batch, heads, kv_heads, seq, head_dim = shape
    q = rng.standard_normal((batch, heads, seq, head_dim)).astype(dtype)
    k = rng.standard_normal((batch, kv_heads, seq, head_dim)).astype(dtype)
    v = rng.standard_normal((batch, kv_heads, seq, head_dim)).astype(dtype)
    grad = rng.standard_normal((batch, heads, seq, head_dim)).astype(dtype)
    xp, (qb, kb, vb, gb) = on(backend, q, k, v, grad)
    mask = F.attention_mask(seq, seq, xp, None)
    out, probs = F.attention(qb, kb, vb, mask)
    expected = (out,) + tuple(F.attention_backward(gb, qb, kb, vb, mask, probs))
    fast_out, kept = causal_attention(qb, kb, vb, mask, block=block)
    got = (fast_out,) + tuple(causal_attention_backward(gb, qb, kb, vb, mask, kept, block=block))
    tol = 1e-12 if dtype == "float64" else 2e-6
    for name, a, b in zip(("out", "grad_q", "grad_k", "grad_v"), got, expected):
        assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape), name
        a, b = to_numpy(a), to_numpy(b)
        assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b)), name
    # only the scores up to each block's last query are kept: less than the (seq, seq) square
    kept_scores = sum(int(np.prod(p.shape)) for p in kept[0])
    full = batch * heads * seq * seq
    assert kept_scores <= full and (kept_scores < full or block >= seq)


def test_loss_and_grads_use_the_blocked_pair_only_without_a_mask(tiny, monkeypatch):
    from minillama.fast import train_attention
    from minillama.train import backprop, loss_and_grads
    model = minillama.load(tiny, dtype="float64")
    ids = rng.integers(3, model.config.vocab_size, size=(2, 11))
    monkeypatch.setattr(train_attention, "QUERY_BLOCK", 4)  # 11 tokens: blocks of 4, 4 and 3
    fast_loss, fast = loss_and_grads(model, ids)
    weights, config = model.weights, model.config
    labels = model.xp.asarray(ids)
    loss, reference = backprop.forward_and_backward(weights, config, labels, labels, attend=backprop.REFERENCE_ATTENTION)
    assert abs(fast_loss - float(loss)) <= 1e-12 * abs(float(loss))
    for name, grad in reference.items():
        assert np.max(np.abs(to_numpy(fast[name]) - to_numpy(grad))) <= 1e-11 * max(1.0, np.max(np.abs(to_numpy(grad)))), name
    calls = []
    real = train_attention.causal_attention
    monkeypatch.setattr(backprop, "CAUSAL_BLOCKS", backprop.AttentionPair(
        "spy", lambda *a, **k: calls.append(1) or real(*a, **k), train_attention.causal_attention_backward))
    loss_and_grads(model, ids, attention_mask=np.ones_like(ids))  # a mask: the reference pair
    assert calls == []
    loss_and_grads(model, ids)
    assert len(calls) == model.config.num_hidden_layers
