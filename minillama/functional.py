"""The components of a Llama block, each a small pure function: arrays in, arrays out.

Shapes use these names:
    batch     sequences in the batch
    seq       tokens per sequence (q_len for queries, k_len for keys)
    hidden    the model width (config.hidden_size)
    heads     query heads; kv_heads key/value heads (fewer with grouped-query attention)
    head_dim  width of one head
Rotary embeddings live in ``rope.py``; the assembly of a whole model in ``model.py``.
"""

from __future__ import annotations

from .backend import namespace_of


def embedding(token_ids, table):
    """Look up one row of ``table`` per token.

    token_ids: (batch, seq) integers; table: (vocab, hidden) -> (batch, seq, hidden)
    """
    xp = namespace_of(table)
    batch, seq = token_ids.shape
    rows = xp.take(table, xp.reshape(token_ids, (batch * seq,)), axis=0)  # (batch * seq, hidden)
    return xp.reshape(rows, (batch, seq, table.shape[1]))


def rms_norm(x, weight, eps: float):
    """Root-mean-square normalisation, then a learned per-channel gain.

    x: (..., hidden); weight: (hidden,). Half-precision input is normalised in
    float32 and cast back before the gain, as the reference does.
    """
    xp = namespace_of(x)
    x_wide = xp.astype(x, xp.float32, copy=False) if x.dtype != xp.float64 else x
    mean_square = xp.sum(x_wide * x_wide, axis=-1, keepdims=True) / x.shape[-1]  # (..., 1)
    normed = x_wide / xp.sqrt(mean_square + eps)
    return weight * xp.astype(normed, x.dtype, copy=False)


def linear(x, weight, bias=None):
    """y = x W^T + b, with W stored (out_features, in_features) as in PyTorch checkpoints.

    x: (..., in) -> (..., out)
    """
    y = x @ weight.T
    return y if bias is None else y + bias


def linear_sliced(x, weight, bias=None, slices: int = 1, split: str = "out"):
    """``linear`` computed in ``slices`` pieces, as Llama's ``pretraining_tp`` does.

    split="out": each slice computes some output features; they are concatenated
    (the same numbers as one big product). split="in": each slice multiplies part
    of the input features and the partial products are summed, which rounds
    differently. transformers 4.x did this for ``pretraining_tp > 1``.
    """
    if slices == 1:
        return linear(x, weight, bias)
    xp = namespace_of(x)
    if split == "out":
        step = weight.shape[0] // slices
        parts = [x @ weight[i * step:(i + 1) * step, :].T for i in range(slices)]
        y = xp.concat(parts, axis=-1)
    else:
        step = weight.shape[1] // slices
        y = x[..., 0:step] @ weight[:, 0:step].T
        for i in range(1, slices):
            y = y + x[..., i * step:(i + 1) * step] @ weight[:, i * step:(i + 1) * step].T
    return y if bias is None else y + bias


def silu(x):
    """x * sigmoid(x), the gate activation of SwiGLU."""
    xp = namespace_of(x)
    return x / (1.0 + xp.exp(-x))


def swiglu_mlp(x, gate_proj, up_proj, down_proj, gate_bias=None, up_bias=None, down_bias=None):
    """The feed-forward block: down(silu(gate(x)) * up(x)).

    x: (..., hidden); gate_proj, up_proj: (intermediate, hidden); down_proj: (hidden, intermediate)
    """
    gate = silu(linear(x, gate_proj, gate_bias))  # (..., intermediate)
    up = linear(x, up_proj, up_bias)  # (..., intermediate)
    return linear(gate * up, down_proj, down_bias)  # (..., hidden)


def softmax(x, axis: int = -1):
    """exp(x) / sum(exp(x)), with the maximum subtracted first so nothing overflows."""
    xp = namespace_of(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    exps = xp.exp(shifted)
    return exps / xp.sum(exps, axis=axis, keepdims=True)


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
