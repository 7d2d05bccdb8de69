"""The smallest pieces: embedding lookup, linear layers, the SiLU activation and softmax.

Each ``*_backward`` takes the gradient of the loss with respect to the output
(``grad_y``, same shape as the output) and returns the gradients of the inputs.

Shapes use these names:
    batch     sequences in the batch
    seq       tokens per sequence (q_len for queries, k_len for keys)
    hidden    the model width (config.hidden_size)
    heads     query heads; kv_heads key/value heads (fewer with grouped-query attention)
    head_dim  width of one head
"""

from __future__ import annotations

from ..backend import index_add, namespace_of


def embedding(token_ids, table):
    """Look up one row of ``table`` per token.

    token_ids: (batch, seq) integers; table: (vocab, hidden) -> (batch, seq, hidden)
    """
    xp = namespace_of(table)
    batch, seq = token_ids.shape
    rows = xp.take(table, xp.reshape(token_ids, (batch * seq,)), axis=0)  # (batch * seq, hidden)
    return xp.reshape(rows, (batch, seq, table.shape[1]))


def embedding_backward(grad_out, token_ids, vocab_size: int):
    """Gradient of ``embedding`` with respect to the table.

    Row v of the table receives the sum of grad_out over every position holding token v.
    grad_out: (batch, seq, hidden); token_ids: (batch, seq) -> (vocab, hidden)
    """
    xp = namespace_of(grad_out)
    batch, seq, hidden = grad_out.shape
    ids = xp.reshape(token_ids, (batch * seq,))
    return index_add(xp, (vocab_size, hidden), ids, xp.reshape(grad_out, (batch * seq, hidden)))


def linear(x, weight, bias=None):
    """y = x W^T + b, with W stored (out_features, in_features) as in PyTorch checkpoints.

    x: (..., in) -> (..., out)
    """
    y = x @ weight.T
    return y if bias is None else y + bias


def linear_backward(grad_y, x, weight, bias=None):
    """Gradients of ``linear``: grad_x = grad_y W, grad_W = grad_y^T x, grad_b = sum of grad_y.

    grad_y: (..., out); x: (..., in); weight: (out, in) -> (grad_x (..., in),
    grad_weight (out, in), grad_bias (out,) or None). The weight and bias gradients
    sum over every leading axis (each position used the same weight).
    """
    xp = namespace_of(grad_y)
    grad_x = grad_y @ weight  # (..., in)
    grad_rows = xp.reshape(grad_y, (-1, weight.shape[0]))  # (positions, out)
    x_rows = xp.reshape(x, (-1, weight.shape[1]))  # (positions, in)
    grad_weight = grad_rows.T @ x_rows  # (out, in)
    grad_bias = None if bias is None else xp.sum(grad_rows, axis=0)  # (out,)
    return grad_x, grad_weight, grad_bias


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


def silu_backward(grad_y, x):
    """Gradient of ``silu``: d/dx [x s(x)] = s(x) (1 + x (1 - s(x))), with s the sigmoid.

    grad_y, x: same shape -> grad_x
    """
    xp = namespace_of(x)
    sigmoid = 1.0 / (1.0 + xp.exp(-x))
    slope = 1.0 - sigmoid  # built up in place: s (1 + x (1 - s))
    slope *= x
    slope += 1.0
    slope *= sigmoid
    return grad_y * slope


def softmax(x, axis: int = -1):
    """exp(x) / sum(exp(x)), with the maximum subtracted first so nothing overflows."""
    xp = namespace_of(x)
    exps = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    exps /= xp.sum(exps, axis=axis, keepdims=True)  # in place: exps is this function's own array
    return exps
