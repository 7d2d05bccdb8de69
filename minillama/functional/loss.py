"""The training loss: cross-entropy of the next-token predictions, and its gradient.

Shapes: logits (..., vocab) with labels (...) for ``cross_entropy``; logits
(batch, seq, vocab) with labels (batch, seq) for the causal-LM pair. Labels equal
to ``ignore_index`` (-100, as in transformers) do not count.

The loss is computed in float32 (float64 for float64 logits), whatever the logits'
dtype, and returned as a 0-d array on the logits' backend: nothing waits for the
device until the caller takes ``float(loss)``. For the same reason labels are not
checked on the host: a label outside [0, vocab) other than ``ignore_index`` makes
the loss (and that position's gradient) nan, where torch would raise.
"""

from __future__ import annotations

import math

from ..backend import namespace_of


def cross_entropy(logits, labels, ignore_index: int = -100):
    """Mean of -log softmax(logits)[label] over the positions whose label is not ``ignore_index``.

    logits: (..., vocab); labels: (...) integers -> a 0-d array. log softmax is
    logits - logsumexp(logits), with the maximum taken out first so nothing
    overflows. With every label ignored the mean is 0/0: nan, as in torch and transformers.
    """
    xp = namespace_of(logits)
    wide = _widened(logits)  # (..., vocab)
    counted, known, safe_labels = _label_masks(labels, ignore_index, logits.shape[-1])
    picked = xp.take_along_axis(wide, xp.expand_dims(safe_labels, axis=-1), axis=-1)[..., 0]  # (...)
    losses = xp.where(known, _log_sum_exp(wide) - picked, xp.full_like(picked, math.nan))
    losses = xp.where(counted, losses, xp.zeros_like(losses))
    count = xp.sum(xp.astype(counted, wide.dtype))
    mean = xp.sum(losses) / xp.where(count > 0, count, xp.ones_like(count))
    return xp.where(count > 0, mean, xp.full_like(mean, math.nan))


def cross_entropy_backward(logits, labels, ignore_index: int = -100):
    """Gradient of ``cross_entropy`` with respect to the logits.

    At a counted position it is (softmax(logits) - one_hot(label)) / count, and zero
    at ignored ones (all zero when every label is ignored, as torch gives).
    logits: (..., vocab); labels: (...) -> (..., vocab) in the logits' dtype
    """
    xp = namespace_of(logits)
    wide = _widened(logits)  # (..., vocab)
    counted, known, safe_labels = _label_masks(labels, ignore_index, logits.shape[-1])
    count = xp.sum(xp.astype(counted, wide.dtype))
    weight = xp.astype(counted, wide.dtype) / xp.where(count > 0, count, xp.ones_like(count))  # (...)
    weight = xp.expand_dims(xp.where(known, weight, xp.full_like(weight, math.nan)), axis=-1)  # (..., 1)
    # Each (..., vocab) step below is one pass, in place where it can be: the logits are the
    # largest array of training, and every extra copy of them costs time and memory.
    grad = xp.exp(wide - xp.max(wide, axis=-1, keepdims=True))  # (..., vocab)
    grad *= weight / xp.sum(grad, axis=-1, keepdims=True)  # softmax(logits) * weight
    vocab_ids = xp.arange(logits.shape[-1], dtype=safe_labels.dtype)  # (vocab,)
    one_hot = vocab_ids == xp.expand_dims(safe_labels, axis=-1)  # (..., vocab) bool, one True per row
    grad[one_hot] -= xp.reshape(weight, (-1,))  # minus one_hot(label) * weight, the Trues in row order
    return xp.astype(grad, logits.dtype, copy=False)


def causal_lm_loss(logits, labels, ignore_index: int = -100):
    """The language-model loss: logits at position t predict the label at t + 1.

    logits: (batch, seq, vocab); labels: (batch, seq), usually the input ids -> a 0-d
    array. The same shift and mean as transformers' ``LlamaForCausalLM(..., labels=)``:
    the last position predicts nothing and the first label is never predicted.
    """
    return cross_entropy(logits[:, :-1, :], labels[:, 1:], ignore_index)


def causal_lm_loss_backward(logits, labels, ignore_index: int = -100):
    """Gradient of ``causal_lm_loss`` with respect to the logits: (batch, seq, vocab), zero at the last position.

    Position t's label is labels[:, t + 1], and the last position's is ignored: the gradient is
    computed on the whole logits array at once, with no shifted copy of it.
    """
    xp = namespace_of(labels)
    batch = labels.shape[0]
    nothing = xp.full((batch, 1), ignore_index, dtype=labels.dtype)  # the last position predicts nothing
    return cross_entropy_backward(logits, xp.concat([labels[:, 1:], nothing], axis=1), ignore_index)


def _widened(logits):
    """The logits in the loss's dtype: float64 stays, everything else becomes float32."""
    xp = namespace_of(logits)
    return xp.astype(logits, xp.float64 if logits.dtype == xp.float64 else xp.float32, copy=False)


def _log_sum_exp(x):
    """log(sum(exp(x))) over the last axis, the maximum taken out first: (..., vocab) -> (...)."""
    xp = namespace_of(x)
    top = xp.max(x, axis=-1, keepdims=True)  # (..., 1)
    return xp.log(xp.sum(xp.exp(x - top), axis=-1)) + top[..., 0]


def _label_masks(labels, ignore_index: int, vocab: int):
    """Which positions count, which labels are usable, and the labels with the unusable ones set to 0.

    counted: label != ignore_index; known: ignored or in [0, vocab) (a bad label makes nan).
    """
    xp = namespace_of(labels)
    counted = labels != ignore_index
    in_range = (labels >= 0) & (labels < vocab)
    known = in_range | ~counted
    return counted, known, xp.where(in_range, labels, xp.zeros_like(labels))
