"""Each component against a direct NumPy statement of its definition, on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minillama import functional as F
from minillama.backend import get_namespace, to_numpy
from minillama.config import LlamaConfig
from minillama.functional.rope import (apply_rotary, apply_rotary_interleaved, inverse_frequencies, rope_cos_sin)

rng = np.random.default_rng(0)


def on(backend, *arrays):
    xp = get_namespace(backend)
    return xp, [xp.asarray(a) for a in arrays]


def test_rms_norm(backend):
    x = rng.standard_normal((2, 3, 8), dtype=np.float32)
    w = rng.standard_normal(8, dtype=np.float32)
    xp, (xb, wb) = on(backend, x, w)
    expected = w * x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-5)
    out = to_numpy(F.rms_norm(xb, wb, 1e-5))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_rms_norm_normalises_half_precision_in_float32():
    x = np.full((1, 4), 300.0, dtype=np.float16)  # 300**2 overflows float16's range
    out = F.rms_norm(get_namespace("numpy").asarray(x), np.ones(4, dtype=np.float16), 1e-6)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), 1.0, rtol=1e-3)


def test_linear_and_sliced_linear(backend):
    x = rng.standard_normal((2, 5, 12), dtype=np.float32)
    w = rng.standard_normal((6, 12), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    xp, (xb, wb, bb) = on(backend, x, w, b)
    expected = x @ w.T + b
    np.testing.assert_allclose(to_numpy(F.linear(xb, wb, bb)), expected, rtol=1e-5, atol=1e-5)
    for split in ("in", "out"):
        np.testing.assert_allclose(to_numpy(F.linear_sliced(xb, wb, bb, slices=3, split=split)), expected,
                                   rtol=1e-5, atol=1e-5)


def test_silu_and_swiglu(backend):
    x = rng.standard_normal((3, 8), dtype=np.float32)
    gate, up, down = (rng.standard_normal(s, dtype=np.float32) for s in ((16, 8), (16, 8), (8, 16)))
    xp, (xb, gb, ub, db) = on(backend, x, gate, up, down)
    silu = lambda a: a / (1 + np.exp(-a))
    np.testing.assert_allclose(to_numpy(F.silu(xb)), silu(x), rtol=1e-6, atol=1e-7)
    expected = (silu(x @ gate.T) * (x @ up.T)) @ down.T
    np.testing.assert_allclose(to_numpy(F.swiglu_mlp(xb, gb, ub, db)), expected, rtol=1e-4, atol=1e-4)


def test_softmax_is_stable(backend):
    x = np.array([[1000.0, 1001.0, 1002.0], [-1e30, 0.0, 1.0]], dtype=np.float32)
    xp, (xb,) = on(backend, x)
    out = to_numpy(F.softmax(xb))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[0], np.exp([-2, -1, 0]) / np.exp([-2, -1, 0]).sum(), rtol=1e-6)


def test_embedding(backend):
    table = rng.standard_normal((10, 4), dtype=np.float32)
    ids = np.array([[3, 0, 9], [1, 1, 2]])
    xp, (tb, ib) = on(backend, table, ids)
    np.testing.assert_array_equal(to_numpy(F.embedding(ib, tb)), table[ids])


def reference_attention(q, k, v, mask):
    """Plain multi-head attention after repeating each key/value head (transformers' repeat_kv)."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    scores = np.where(mask, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return probs @ v, probs


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (6, 1)])
def test_grouped_query_attention(backend, heads, kv_heads):
    q = rng.standard_normal((2, heads, 5, 8), dtype=np.float32)
    k = rng.standard_normal((2, kv_heads, 7, 8), dtype=np.float32)
    v = rng.standard_normal((2, kv_heads, 7, 8), dtype=np.float32)
    padding = np.array([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
    xp, (qb, kb, vb, pb) = on(backend, q, k, v, padding)
    mask = F.attention_mask(5, 7, xp, pb)
    out, probs = F.attention(qb, kb, vb, mask)
    expected_out, expected_probs = reference_attention(q, k, v, to_numpy(mask))
    np.testing.assert_allclose(to_numpy(out), expected_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(probs), expected_probs, rtol=1e-5, atol=1e-6)


def test_causal_mask_with_offset(backend):
    xp = get_namespace(backend)
    mask = to_numpy(F.attention_mask(2, 4, xp))[0, 0]  # the last 2 of 4 tokens ask
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 1, 1]])


def test_fully_masked_query_gives_no_nan(backend):
    xp, (q, k) = on(backend, np.ones((1, 1, 2, 4), np.float32), np.ones((1, 1, 2, 4), np.float32))
    mask = F.attention_mask(2, 2, xp, xp.asarray([[0, 1]]))  # query 0 may only see key 0, which is padding
    out, probs = F.attention(q, k, k, mask)
    assert np.isfinite(to_numpy(out)).all() and np.isfinite(to_numpy(probs)).all()


def test_inverse_frequencies_default(backend):
    xp = get_namespace(backend)
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=10000.0)
    inv = to_numpy(inverse_frequencies(config, xp))
    assert inv.dtype == np.float32
    np.testing.assert_allclose(inv, 10000.0 ** (-np.arange(0, 16, 2) / 16), rtol=1e-6)


def test_rope_preserves_norm_and_relative_angle(backend):
    xp = get_namespace(backend)
    config = LlamaConfig(hidden_size=64, num_attention_heads=4)
    inv = inverse_frequencies(config, xp)
    q = rng.standard_normal((1, 1, 1, 16), dtype=np.float32)
    k = rng.standard_normal((1, 1, 1, 16), dtype=np.float32)

    def score(pq, pk):
        cq, sq = rope_cos_sin(xp.asarray([[pq]]), inv, xp.float32)
        ck, sk = rope_cos_sin(xp.asarray([[pk]]), inv, xp.float32)
        rq, rk = apply_rotary(xp.asarray(q), cq, sq), apply_rotary(xp.asarray(k), ck, sk)
        assert np.isclose(np.linalg.norm(to_numpy(rq)), np.linalg.norm(q), rtol=1e-5)
        return float(to_numpy(xp.sum(rq * rk)))

    assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-4)  # only the distance matters
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def test_interleaved_layout_equals_rotate_half_after_permutation(backend):
    """Meta's interleaved pairs and HF's rotate-half give the same result once the
    features are permuted the way HF's conversion script permutes q_proj/k_proj rows."""
    xp = get_namespace(backend)
    config = LlamaConfig(hidden_size=64, num_attention_heads=4)
    cos, sin = rope_cos_sin(xp.asarray([[0, 1, 2, 7]]), inverse_frequencies(config, xp), xp.float32)
    x = rng.standard_normal((1, 2, 4, 16), dtype=np.float32)
    to_half = np.concatenate([np.arange(0, 16, 2), np.arange(1, 16, 2)])  # interleaved index of each rotate-half slot
    meta = to_numpy(apply_rotary_interleaved(xp.asarray(x), cos, sin))
    hf = to_numpy(apply_rotary(xp.asarray(x[..., to_half]), cos, sin))
    np.testing.assert_allclose(hf, meta[..., to_half], rtol=1e-5, atol=1e-6)


def test_llama3_scaling_bands():
    xp = get_namespace("numpy")
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    config = LlamaConfig(hidden_size=64, num_attention_heads=2, rope_scaling=scaling)
    plain = inverse_frequencies(LlamaConfig(hidden_size=64, num_attention_heads=2), xp)
    scaled = inverse_frequencies(config, xp)
    wavelength = 2 * np.pi / plain
    fast, slow = wavelength < 16, wavelength > 64
    np.testing.assert_allclose(scaled[fast], plain[fast])
    np.testing.assert_allclose(scaled[slow], plain[slow] / 8, rtol=1e-6)
    middle = ~fast & ~slow
    assert middle.any() and np.all((scaled[middle] < plain[middle]) & (scaled[middle] > plain[middle] / 8))
