"""The smallest pieces: embedding lookup, linear layers, the SiLU activation and softmax.

Shapes use these names:
    batch     sequences in the batch
    seq       tokens per sequence (q_len for queries, k_len for keys)
    hidden    the model width (config.hidden_size)
    heads     query heads; kv_heads key/value heads (fewer with grouped-query attention)
    head_dim  width of one head
"""

from __future__ import annotations

from ..backend import namespace_of


def embedding(token_ids, table):
    """Look up one row of ``table`` per token.

    token_ids: (batch, seq) integers; table: (vocab, hidden) -> (batch, seq, hidden)
    """
    xp = namespace_of(table)
    batch, seq = token_ids.shape
    rows = xp.take(table, xp.reshape(token_ids, (batch * seq,)), axis=0)  # (batch * seq, hidden)
    return xp.reshape(rows, (batch, seq, table.shape[1]))


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


def softmax(x, axis: int = -1):
    """exp(x) / sum(exp(x)), with the maximum subtracted first so nothing overflows."""
    xp = namespace_of(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    exps = xp.exp(shifted)
    return exps / xp.sum(exps, axis=axis, keepdims=True)
