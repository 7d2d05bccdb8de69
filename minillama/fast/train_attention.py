"""Causal attention for training, block of queries by block of queries: F.attention and its backward, less work.

A speed arrangement for ``train.loss_and_grads``, not a new idea. In training every query sees
only the keys up to its own position, so the scores above the diagonal are computed, masked and
pushed through the softmax only to become zeros. Here the queries go in blocks of
``QUERY_BLOCK``, and a block is given only the keys up to its last query: for 256 tokens in
blocks of 64 that is 62.5% of the scores of the full square, in the forward, in the backward and
in the probabilities kept between them. Only the block's last ``block`` keys can be above the
diagonal, so only that corner is masked.

The backward uses the identity behind flash attention's: the softmax backward's row sum
``sum_j dP_ij P_ij`` equals ``dOut_i . Out_i`` (since ``Out_i = sum_j P_ij v_j``), one dot product
per query instead of a pass over the scores.

Only for a purely causal mask (no padding: ``loss_and_grads`` uses the reference whenever an
attention mask is given) and q_len == k_len (no cache). Tested equal to ``F.attention`` and
``F.attention_backward`` (tests/test_fast.py).
"""

from __future__ import annotations

from ..backend import namespace_of

QUERY_BLOCK = 64  # queries per block (256-token training windows: 4 blocks, 62.5% of the square)


def _causal_corner(xp, block: int):
    """(block, block) bool, True on and below the diagonal: which of a block's last keys each query sees."""
    rows = xp.arange(block)
    return rows[:, None] >= rows[None, :]


def causal_attention(q, k, v, mask=None, block: int | None = None):
    """F.attention(q, k, v, causal mask)'s output, and what :func:`causal_attention_backward` reads.

    q: (batch, heads, seq, head_dim); k, v: (batch, kv_heads, seq, head_dim). mask: the plain
    causal mask of F.attention_mask(seq, seq) or None; either way the causal mask is applied
    (this pair stands in for F.attention only when there is no padding).
    Returns (out (batch, heads, seq, head_dim), saved), saved = (the blocks' probabilities, out).
    """
    xp = namespace_of(q)
    batch, heads, seq, head_dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    block = block or QUERY_BLOCK
    wide = xp.float64 if q.dtype == xp.float64 else xp.float32
    lowest = float(xp.finfo(wide).min)
    q = xp.reshape(q * head_dim ** -0.5, (batch, kv_heads, group, seq, head_dim))
    out = xp.empty((batch, kv_heads, group, seq, head_dim), dtype=q.dtype)
    probs = []  # per block: (batch, kv_heads, group * block, keys up to the block's end)
    for start in range(0, seq, block):
        end = min(start + block, seq)
        rows = end - start
        q_block = xp.reshape(q[:, :, :, start:end, :], (batch, kv_heads, group * rows, head_dim))
        scores = xp.astype(q_block @ xp.matrix_transpose(k[:, :, :end, :]), wide, copy=False)
        scores = xp.reshape(scores, (batch, kv_heads, group, rows, end))
        scores[..., start:end] = xp.where(_causal_corner(xp, rows), scores[..., start:end], lowest)
        scores = xp.reshape(scores, (batch, kv_heads, group * rows, end))
        scores -= xp.max(scores, axis=-1, keepdims=True)
        block_probs = xp.exp(scores)
        block_probs /= xp.sum(block_probs, axis=-1, keepdims=True)
        block_probs = xp.astype(block_probs, q.dtype, copy=False)
        out[:, :, :, start:end, :] = xp.reshape(block_probs @ v[:, :, :end, :], (batch, kv_heads, group, rows, head_dim))
        probs.append(block_probs)
    out = xp.reshape(out, (batch, heads, seq, head_dim))
    return out, (probs, out)


def causal_attention_backward(grad_out, q, k, v, mask, saved, block: int | None = None):
    """F.attention_backward for the causal mask, block by block -> (grad_q, grad_k, grad_v).

    grad_out: (batch, heads, seq, head_dim); q, k, v, mask as for :func:`causal_attention`, whose
    ``saved`` this reads. dS = P * (dP - dOut . Out) per block; K and V gradients are summed
    over the blocks (each block's keys start at 0) and over each key/value head's query group.
    """
    xp = namespace_of(q)
    probs, out = saved
    block = block or QUERY_BLOCK  # the forward's: its probabilities come in these blocks
    batch, heads, seq, head_dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    scale = head_dim ** -0.5
    wide = xp.float64 if q.dtype == xp.float64 else xp.float32
    row_dots = xp.vecdot(xp.astype(grad_out, wide, copy=False), xp.astype(out, wide, copy=False))  # (batch, heads, seq)
    row_dots = xp.reshape(row_dots, (batch, kv_heads, group, seq))
    scaled_q = xp.reshape(q * scale, (batch, kv_heads, group, seq, head_dim))
    grad_out = xp.reshape(grad_out, (batch, kv_heads, group, seq, head_dim))
    grad_q = xp.empty((batch, kv_heads, group, seq, head_dim), dtype=q.dtype)
    grad_k = xp.zeros(k.shape, dtype=k.dtype)  # (batch, kv_heads, seq, head_dim)
    grad_v = xp.zeros(v.shape, dtype=v.dtype)
    for index, start in enumerate(range(0, seq, block)):
        end = min(start + block, seq)
        rows = end - start
        block_probs = probs[index]  # (batch, kv_heads, group * rows, end)
        block_grad_out = xp.reshape(grad_out[:, :, :, start:end, :], (batch, kv_heads, group * rows, head_dim))
        grad_v[:, :, :end, :] += xp.matrix_transpose(block_probs) @ block_grad_out
        grad_scores = xp.astype(block_grad_out @ xp.matrix_transpose(v[:, :, :end, :]), wide, copy=False)
        grad_scores -= xp.reshape(row_dots[:, :, :, start:end], (batch, kv_heads, group * rows, 1))
        grad_scores *= block_probs  # masked entries have P = 0, so they get no gradient
        grad_scores = xp.astype(grad_scores, q.dtype, copy=False)
        grad_q[:, :, :, start:end, :] = xp.reshape((grad_scores @ k[:, :, :end, :]) * scale,
                                                   (batch, kv_heads, group, rows, head_dim))
        q_block = xp.reshape(scaled_q[:, :, :, start:end, :], (batch, kv_heads, group * rows, head_dim))
        grad_k[:, :, :end, :] += xp.matrix_transpose(grad_scores) @ q_block
    return xp.reshape(grad_q, q.shape), grad_k, grad_v
