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


def attention_backward(grad_out, q, k, v, mask, probs=None):
    """Gradients of :func:`attention`'s output with respect to q, k and v.

    With P = softmax(S), S = (q / sqrt(head_dim)) k^T and out = P v, the chain rule gives
    dV = P^T dOut, dP = dOut v^T, dS = P * (dP - rowsum(dP * P)) (the softmax backward, in
    float32, or float64 for float64 inputs, like the forward), dq = dS k / sqrt(head_dim)
    and dK = dS^T q / sqrt(head_dim).
    A key/value head serves a group of query heads, so its gradient is the sum over that group;
    the forward's reshape into groups makes the matrix products do that sum.
    Masked scores were replaced by a constant, so they get zero gradient; a fully masked row
    (a padding query) was uniform whatever q and k were, and passes gradient to v only.

    grad_out: (batch, heads, q_len, head_dim); q, k, v, mask as for :func:`attention`.
    probs: the forward's second output (batch, heads, q_len, k_len), in q's dtype; recomputed when not given.
    Returns (grad_q, grad_k, grad_v) shaped and typed like q, k and v.
    """
    xp = namespace_of(q)
    batch, heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = head_dim ** -0.5
    wide = xp.float64 if q.dtype == xp.float64 else xp.float32
    if probs is None:
        probs = attention(q, k, v, mask)[1]
    grouped_probs = xp.reshape(xp.astype(probs, q.dtype, copy=False), (batch, kv_heads, group * q_len, k_len))
    grouped_grad_out = xp.reshape(grad_out, (batch, kv_heads, group * q_len, head_dim))

    # out = P v: each key/value head's rows gather the whole group's queries, so one product sums them.
    grad_v = xp.matrix_transpose(grouped_probs) @ grouped_grad_out  # (batch, kv_heads, k_len, head_dim)
    grad_probs = grouped_grad_out @ xp.matrix_transpose(v)  # (batch, kv_heads, group * q_len, k_len)
    grad_probs = xp.reshape(grad_probs, (batch, heads, q_len, k_len))

    grad_scores = _softmax_backward(xp.astype(probs, wide, copy=False), xp.astype(grad_probs, wide, copy=False))
    if mask is not None and not _every_query_sees_a_key(mask):
        # A masked score was a constant. Its probability is exactly 0, so P * (...) is 0 there
        # already, except in a row with no key at all (a padding query: uniform P).
        grad_scores = xp.where(mask, grad_scores, 0.0)
    grad_scores = xp.astype(grad_scores, q.dtype, copy=False)  # (batch, heads, q_len, k_len)
    grad_scores = xp.reshape(grad_scores, (batch, kv_heads, group * q_len, k_len))

    # scores = (q * scale) k^T
    scaled_q = xp.reshape(q * scale, (batch, kv_heads, group * q_len, head_dim))
    grad_q = (grad_scores @ k) * scale  # (batch, kv_heads, group * q_len, head_dim)
    grad_k = xp.matrix_transpose(grad_scores) @ scaled_q  # (batch, kv_heads, k_len, head_dim)
    return xp.reshape(grad_q, q.shape), grad_k, grad_v


def _softmax_backward(probs, grad_probs):
    """Gradient through P = softmax(S) along the last axis: dS = P * (dP - sum(dP * P)).

    The sum is each row's weighted mean of dP; a change that adds the same to every score
    of a row leaves P unchanged, and indeed each row of dS sums to zero.
    grad_probs is overwritten with dS (the caller's own temporary: no (q_len, k_len) copy is made).
    """
    xp = namespace_of(probs)
    grad_probs -= xp.vecdot(grad_probs, probs)[..., None]  # each row's dot product, sum(dP * P)
    grad_probs *= probs
    return grad_probs


def _every_query_sees_a_key(mask) -> bool:
    """Whether each row of the (small, boolean) mask allows at least one key."""
    xp = namespace_of(mask)
    return bool(xp.all(xp.any(mask, axis=-1)))
