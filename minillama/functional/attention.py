"""Causal self-attention with grouped-query heads, and the mask that says which keys a query sees."""

from __future__ import annotations

from ..backend import namespace_of
from .basics import softmax


def attention_mask(q_len: int, k_len: int, xp, padding_mask=None):
    """Which keys each query may attend to: True where allowed.

    Causal: the queries are the last ``q_len`` of ``k_len`` tokens, and query i
    sees key j when j is not in its future. ``padding_mask`` (batch, k_len),
    1 for real tokens and 0 for padding, hides padded keys.
    Returns a bool array (batch or 1, 1, q_len, k_len).
    """
    query_index = xp.arange(k_len - q_len, k_len)[:, None]  # (q_len, 1), absolute positions
    key_index = xp.arange(k_len)[None, :]  # (1, k_len)
    mask = (key_index <= query_index)[None, None, :, :]  # (1, 1, q_len, k_len)
    if padding_mask is not None:
        mask = mask & (padding_mask != 0)[:, None, None, :]  # (batch, 1, q_len, k_len)
    return mask


def attention(q, k, v, mask):
    """Scaled dot-product attention with grouped-query heads.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, k_len, head_dim),
    where kv_heads divides heads: query head h uses key/value head h // (heads // kv_heads).
    mask: bool, broadcastable to (batch, 1, q_len, k_len), True where allowed; or None when every
    query may see every key (one new token after a cache, no padding).
    Scores and softmax are float32 (or float64 when the input is). Returns
    (output (batch, heads, q_len, head_dim), probabilities (batch, heads, q_len, k_len)).
    """
    xp = namespace_of(q)
    batch, heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    # Stack the query heads that share a key/value head as extra rows: one matrix product per
    # key/value head serves its whole group, and no copy of k or v is made.
    q = q * head_dim ** -0.5  # scaling q rather than the scores touches q_len * head_dim numbers, not q_len * k_len
    q = xp.reshape(q, (batch, kv_heads, group * q_len, head_dim))
    scores = q @ xp.matrix_transpose(k)  # (batch, kv_heads, group * q_len, k_len)
    scores = xp.reshape(scores, (batch, heads, q_len, k_len))
    wide = xp.float64 if q.dtype == xp.float64 else xp.float32
    scores = xp.astype(scores, wide, copy=False)
    if mask is not None:
        # A masked score becomes the most negative number rather than -inf, so a row
        # with nothing to attend to (a padding query) gives a uniform row, not NaN.
        scores = xp.where(mask, scores, float(xp.finfo(wide).min))
    probs = xp.astype(softmax(scores, axis=-1), q.dtype, copy=False)  # (batch, heads, q_len, k_len)

    out = xp.reshape(probs, (batch, kv_heads, group * q_len, k_len)) @ v  # (batch, kv_heads, group * q_len, head_dim)
    return xp.reshape(out, (batch, heads, q_len, head_dim)), probs
