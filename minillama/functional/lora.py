"""LoRA: a low-rank update added to a frozen linear layer, and its backward.

A projection y = W x gains a trainable update of rank r << min(out, in):

    y = W x + scale * B (A x),    A: (r, in), B: (out, r), scale = alpha / r

Only A and B are trained; W stays as loaded. B starts at zero, so training starts from the
base model exactly. The update costs two thin products instead of one (out, in) matrix.
"""

from __future__ import annotations

from ..backend import namespace_of


def lora_delta(x, lora_A, lora_B, scale: float):
    """scale * (x A^T) B^T: the adapter's contribution to a projection's output.

    x: (..., in); lora_A: (r, in); lora_B: (out, r) -> (..., out)
    """
    down = x @ lora_A.T  # (..., r)
    return (down @ lora_B.T) * scale  # (..., out), scaled last as peft does


def lora_delta_backward(grad_y, x, lora_A, lora_B, scale: float):
    """Gradients of ``lora_delta``: with d = x A^T and g = scale * grad_y, grad_B = g^T d,
    grad_d = g B, grad_A = grad_d^T x and grad_x = grad_d A.

    grad_y: (..., out); x: (..., in) -> (grad_x (..., in), grad_A (r, in), grad_B (out, r)).
    The weight gradients sum over every leading axis (each position used the same A and B).
    """
    xp = namespace_of(grad_y)
    rank = lora_A.shape[0]
    grad_up = grad_y * scale  # (..., out)
    down = x @ lora_A.T  # (..., r)
    grad_rows = xp.reshape(grad_up, (-1, lora_B.shape[0]))  # (positions, out)
    grad_B = grad_rows.T @ xp.reshape(down, (-1, rank))  # (out, r)
    grad_down = grad_up @ lora_B  # (..., r)
    grad_A = xp.reshape(grad_down, (-1, rank)).T @ xp.reshape(x, (-1, lora_A.shape[1]))  # (r, in)
    grad_x = grad_down @ lora_A  # (..., in)
    return grad_x, grad_A, grad_B
