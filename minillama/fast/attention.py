"""Blocked causal attention for long prompts: the same result as ``F.attention``, less work.

A speed arrangement, not a new idea. With a causal mask, queries early in a long prompt see
only early keys, so each block of queries is given only the keys up to its last query: for a
512-token prompt in blocks of 128 that is 62.5% of the scores of the full square, and a quarter
of the memory. Each block normalises late (softmax's division applied to the output, as flash
attention does). Tested equal to ``F.attention`` (tests/test_fast.py).
"""

from __future__ import annotations

from .. import functional as F
from ..backend import namespace_of
from ..model.forward import attention_heads, output_projection

# Long prompts attend in blocks of this many queries.
QUERY_BLOCK = 128  # measured best of 64-512 for 512-token prompts (docs/performance.md)


def causal_attention_in_blocks(q, k, v, mask):
    """F.attention's output (without the probabilities), computed block of queries by block of queries.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, k_len, head_dim); mask as in F.attention.
    """
    xp = namespace_of(q)
    q_len, k_len = q.shape[2], k.shape[2]
    past = k_len - q_len  # keys already cached before these queries
    outs = []
    for start in range(0, q_len, QUERY_BLOCK):
        end = min(start + QUERY_BLOCK, q_len)
        visible = past + end  # keys up to this block's last query
        block_mask = None if mask is None else mask[:, :, start:end, :visible]
        outs.append(attention_normalised_late(q[:, :, start:end, :], k[:, :, :visible, :], v[:, :, :visible, :],
                                              block_mask))
    return xp.concat(outs, axis=2)  # (batch, heads, q_len, head_dim)


def attention_normalised_late(q, k, v, mask):
    """F.attention's output without its probabilities, with two passes fewer over the scores.

    Softmax divides every probability by its row's sum; dividing the output instead touches
    head_dim numbers per query rather than k_len, and the row maximum is subtracted in place.
    Equal to F.attention up to rounding. Shapes as in F.attention.
    """
    xp = namespace_of(q)
    batch, heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    q = xp.reshape(q * head_dim ** -0.5, (batch, kv_heads, group * q_len, head_dim))
    scores = xp.reshape(q @ xp.matrix_transpose(k), (batch, heads, q_len, k_len))
    wide = xp.float64 if q.dtype == xp.float64 else xp.float32
    scores = xp.astype(scores, wide, copy=False)
    if mask is not None:
        scores = xp.where(mask, scores, float(xp.finfo(wide).min))
    scores -= xp.max(scores, axis=-1, keepdims=True)
    exps = xp.exp(scores)  # (batch, heads, q_len, k_len), not yet divided by the row sums
    # Sums of up to k_len values could overflow float16, so this product stays float32 (or float64).
    unnormalised = xp.reshape(exps, (batch, kv_heads, group * q_len, k_len)) @ xp.astype(v, wide, copy=False)
    out = xp.reshape(unnormalised, (batch, heads, q_len, head_dim)) / xp.sum(exps, axis=-1, keepdims=True)
    return xp.astype(out, q.dtype, copy=False)


def attend(q, k, v, mask, want_probs: bool):
    """F.attention, or the blocked form for a long prompt whose probabilities nobody reads."""
    if q.shape[2] > QUERY_BLOCK and not want_probs:
        return causal_attention_in_blocks(q, k, v, mask), None
    return F.attention(q, k, v, mask)


def blocked_self_attention(x, w, config, cos, sin, mask, cache=None, layer: int = 0, want_probs: bool = True):
    """Drop-in for ``model.self_attention``: the same projections, blocked attention for long prompts."""
    q, k, v = attention_heads(x, w, config, cos, sin)
    if cache is not None:
        k, v = cache.update(layer, k, v)
    out, probs = attend(q, k, v, mask, want_probs)
    return output_projection(out, w, config), probs
