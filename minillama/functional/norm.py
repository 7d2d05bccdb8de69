"""RMSNorm: scale each vector to unit root-mean-square, then apply a learned per-channel gain (and its backward)."""

from __future__ import annotations

from ..backend import namespace_of


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


def rms_norm_backward(grad_y, x, weight, eps: float):
    """Gradients of ``rms_norm`` with respect to x and the gain.

    With r = 1 / sqrt(mean(x^2) + eps) and n = x r, the output is weight * n, so
    grad_weight = sum of grad_y * n over positions, and grad_x = r (g - n mean(g n))
    with g = grad_y * weight. Half precision follows the forward: the normalisation's
    gradient is taken in float32 and cast back to x's dtype, as torch autograd does.
    x, grad_y: (..., hidden); weight: (hidden,) -> (grad_x (..., hidden), grad_weight (hidden,))
    """
    xp = namespace_of(x)
    wide = _widened(xp, x.dtype)
    x_wide = xp.astype(x, wide, copy=False)
    mean_square = xp.sum(x_wide * x_wide, axis=-1, keepdims=True) / x.shape[-1]  # (..., 1)
    inverse_rms = 1.0 / xp.sqrt(mean_square + eps)  # (..., 1)
    normed = x_wide * inverse_rms  # (..., hidden)
    normed_cast = xp.astype(normed, x.dtype, copy=False)  # what the forward multiplies by weight

    grad_rows = xp.reshape(grad_y * normed_cast, (-1, x.shape[-1]))  # (positions, hidden)
    grad_rows = xp.astype(grad_rows, _widened(xp, grad_rows.dtype), copy=False)  # half precision sums in float32
    grad_weight = xp.astype(xp.sum(grad_rows, axis=0), weight.dtype, copy=False)

    grad_normed = xp.astype(grad_y * weight, wide, copy=False)  # (..., hidden)
    along = xp.sum(grad_normed * normed, axis=-1, keepdims=True) / x.shape[-1]  # mean(g n): (..., 1)
    grad_x = inverse_rms * (grad_normed - normed * along)
    return xp.astype(grad_x, x.dtype, copy=False), grad_weight


def _widened(xp, dtype):
    """The dtype the normalisation computes in: float64 stays, everything else becomes float32."""
    return xp.float64 if dtype == xp.float64 else xp.float32
