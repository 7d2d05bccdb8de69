"""RMSNorm: scale each vector to unit root-mean-square, then apply a learned per-channel gain."""

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
