"""Attention over blocks of keys with an online softmax: the idea behind flash attention.

``F.attention`` makes every score of a row, (q_len, k_len) numbers, before its softmax. The
softmax can instead be computed as the keys arrive, one block of ``block_size`` keys at a time,
keeping per query three running values:

* ``m``, the largest score seen so far (subtracted before ``exp``, so nothing overflows),
* ``l``, the softmax denominator so far, sum(exp(score - m)),
* ``acc``, the output so far before division, sum(exp(score - m) * value).

When a block raises the maximum from m_old to m_new, everything accumulated was scaled by
exp(-m_old) and must be scaled by exp(-m_new): ``l`` and ``acc`` are multiplied by
exp(m_old - m_new) (at most 1) before the block's own terms are added. After the last block the
output is acc / l. Only a (q_len, block_size) slice of scores exists at any time, which is what
lets a GPU kernel keep it in fast on-chip memory; here it shows the arithmetic, in any backend.
Tested equal to ``F.attention`` (tests/test_online_softmax.py).
"""

from __future__ import annotations

import math

from ..backend import namespace_of


def attention_online_softmax(q, k, v, mask=None, block_size: int = 64, on_block=None):
    """F.attention's output (without the probabilities), keys and values taken ``block_size`` at a time.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, k_len, head_dim), kv_heads dividing
    heads (query head h uses key/value head h // (heads // kv_heads)); mask: bool, broadcastable to
    (batch, 1, q_len, k_len), True where allowed, or None. As in F.attention, a masked score is the
    most negative number rather than -inf, so a query that may see no key (padding) gets the mean of
    the values, not NaN. Scores, m, l and acc are float32 (float64 for float64 input); the output has
    q's dtype. on_block, if given, is called after each block as on_block(start, end, m, l) with the
    running maximum and denominator, (batch, heads, q_len, 1) each (for inspection; they are live arrays).
    Returns the output (batch, heads, q_len, head_dim).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    xp = namespace_of(q)
    batch, heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    wide = xp.float64 if q.dtype == xp.float64 else xp.float32
    masked = float(xp.finfo(wide).min)
    # The query heads sharing a key/value head become extra rows, as in F.attention: no copy of k or v.
    scaled_q = xp.astype(q, wide) * head_dim ** -0.5
    scaled_q = xp.reshape(scaled_q, (batch, kv_heads, group * q_len, head_dim))

    m = xp.full((batch, heads, q_len, 1), -math.inf, dtype=wide)  # running maximum of each query's scores
    l = xp.zeros((batch, heads, q_len, 1), dtype=wide)  # running sum of exp(score - m)
    acc = xp.zeros((batch, heads, q_len, head_dim), dtype=wide)  # running sum of exp(score - m) * value
    for start in range(0, k_len, block_size):
        end = min(start + block_size, k_len)
        k_block = xp.astype(k[:, :, start:end, :], wide, copy=False)  # (batch, kv_heads, n, head_dim)
        v_block = xp.astype(v[:, :, start:end, :], wide, copy=False)
        n = end - start
        scores = scaled_q @ xp.matrix_transpose(k_block)  # (batch, kv_heads, group * q_len, n)
        scores = xp.reshape(scores, (batch, heads, q_len, n))
        if mask is not None:
            block_mask = mask if mask.shape[-1] == 1 else mask[..., start:end]  # (batch or 1, 1, q_len, n)
            scores = xp.where(block_mask, scores, masked)
        m_new = xp.maximum(m, xp.max(scores, axis=-1, keepdims=True))  # (batch, heads, q_len, 1)
        rescale = xp.exp(m - m_new)  # exp(m_old - m_new) <= 1; 0 on the first block (m_old = -inf)
        p = xp.exp(scores - m_new)  # (batch, heads, q_len, n), this block's unnormalised weights
        l = l * rescale + xp.sum(p, axis=-1, keepdims=True)
        block_out = xp.reshape(p, (batch, kv_heads, group * q_len, n)) @ v_block  # (batch, kv_heads, group * q_len, head_dim)
        acc = acc * rescale + xp.reshape(block_out, (batch, heads, q_len, head_dim))
        m = m_new
        if on_block is not None:
            on_block(start, end, m, l)
    return xp.astype(acc / l, q.dtype, copy=False)  # (batch, heads, q_len, head_dim)
