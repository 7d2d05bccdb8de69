"""Blocked attention with an online softmax against the reference F.attention."""

from __future__ import annotations

import numpy as np
import pytest

from minillama import functional as F
from minillama.backend import get_namespace, to_numpy
from minillama.fast.online_softmax import attention_online_softmax

TOLERANCE = {"float64": 1e-6, "float32": 1e-5}


def arrays(batch=2, heads=8, kv_heads=4, q_len=7, k_len=7, head_dim=16, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, heads, q_len, head_dim)).astype(dtype)
    k = rng.standard_normal((batch, kv_heads, k_len, head_dim)).astype(dtype)
    v = rng.standard_normal((batch, kv_heads, k_len, head_dim)).astype(dtype)
    return q, k, v


def compare(backend, q, k, v, padding=None, causal=True, block_size=64):
    xp = get_namespace(backend)
    qb, kb, vb = (xp.asarray(a) for a in (q, k, v))
    pb = None if padding is None else xp.asarray(padding)
    mask = F.attention_mask(q.shape[2], k.shape[2], xp, pb) if causal or padding is not None else None
    if not causal and mask is not None:  # padding only
        mask = xp.broadcast_to((pb != 0)[:, None, None, :], (q.shape[0], 1, q.shape[2], k.shape[2]))
    got = attention_online_softmax(qb, kb, vb, mask, block_size=block_size)
    expected, _ = F.attention(qb, kb, vb, mask)
    assert got.shape == expected.shape == q.shape
    assert got.dtype == qb.dtype
    return to_numpy(got), to_numpy(expected)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("block_size", [1, 3, 64, 100])
def test_equals_reference_across_block_sizes(backend, dtype, block_size):
    q, k, v = arrays(q_len=70, k_len=70, dtype=dtype)  # 70 keys: blocks of 3 end short, 100 > k_len
    got, expected = compare(backend, q, k, v, block_size=block_size)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_without_mask(backend, dtype):
    q, k, v = arrays(q_len=5, k_len=11, dtype=dtype)
    got, expected = compare(backend, q, k, v, causal=False, block_size=4)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("block_size", [1, 4, 64])
def test_causal_after_a_kv_cache(backend, block_size):
    # 3 new queries after 9 cached positions: query i sees keys 0 .. 9 + i.
    q, k, v = arrays(q_len=3, k_len=12)
    got, expected = compare(backend, q, k, v, block_size=block_size)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    q1, k1, v1 = arrays(q_len=1, k_len=12)  # one decoding step
    got, expected = compare(backend, q1, k1, v1, causal=False, block_size=block_size)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("block_size", [1, 2, 5, 64])
def test_left_padding(backend, block_size):
    # Row 1 has 5 padding positions: its first queries see no key (uniform, as F.attention gives),
    # and with block_size < 5 whole blocks are masked before the first real key arrives.
    q, k, v = arrays(q_len=10, k_len=10)
    padding = np.ones((2, 10), dtype=np.int64)
    padding[1, :5] = 0
    got, expected = compare(backend, q, k, v, padding=padding, block_size=block_size)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kv_heads", [8, 2, 1])  # multi-head, grouped-query, multi-query
def test_gqa_and_mqa(backend, kv_heads):
    q, k, v = arrays(heads=8, kv_heads=kv_heads, q_len=6, k_len=9)
    got, expected = compare(backend, q, k, v, block_size=4)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_float16_keeps_its_dtype():
    q, k, v = arrays(q_len=20, k_len=20, dtype="float16")
    got, expected = compare("numpy", q, k, v, block_size=8)
    assert got.dtype == np.float16
    # Both round to float16; the reference also computes its scores in float16.
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), atol=3e-3, rtol=0)
    exact, _ = compare("numpy", *(a.astype(np.float64) for a in (q, k, v)), block_size=8)
    np.testing.assert_allclose(got.astype(np.float64), exact, atol=2e-3, rtol=0)


def test_large_scores_do_not_overflow():
    # Scores near 1e3 would overflow exp() without the running maximum.
    q, k, v = arrays(q_len=6, k_len=6, dtype="float32")
    got, expected = compare("numpy", 30 * q, 30 * k, v, block_size=2)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_on_block_sees_the_running_maximum_and_denominator():
    q, k, v = arrays(batch=1, heads=1, kv_heads=1, q_len=1, k_len=7)
    seen = []
    attention_online_softmax(q, k, v, None, block_size=3,
                             on_block=lambda s, e, m, l: seen.append((s, e, float(m[0, 0, 0, 0]), float(l[0, 0, 0, 0]))))
    assert [(s, e) for s, e, _, _ in seen] == [(0, 3), (3, 6), (6, 7)]
    scores = (q[0, 0, 0] @ k[0, 0].T) / 4.0  # head_dim 16
    for s, e, m, l in seen:
        assert m == pytest.approx(scores[:e].max())
        assert l == pytest.approx(np.exp(scores[:e] - scores[:e].max()).sum())


def test_block_size_must_be_positive():
    q, k, v = arrays(q_len=2, k_len=2)
    with pytest.raises(ValueError, match="block_size"):
        attention_online_softmax(q, k, v, block_size=0)
