"""Rotary position embedding (RoPE).

Each attention head's vector of ``head_dim`` numbers is cut into ``head_dim / 2``
pairs, and pair ``i`` of the token at position ``p`` is rotated by the angle
``p * inv_freq[i]``, where ``inv_freq[i] = theta ** (-2i / head_dim)``. The
dot product of a rotated query and a rotated key then depends only on how far
apart the two tokens are.

Which numbers form a pair is a matter of layout:

* Hugging Face ("rotate-half", used here): pair ``i`` is ``(x[i], x[i + head_dim/2])``.
* Meta's release and llama2.c ("interleaved"): pair ``i`` is ``(x[2i], x[2i+1])``,
  treated as one complex number. Hugging Face's conversion script permutes the
  rows of ``q_proj`` and ``k_proj`` so that the rotate-half layout computes the
  same attention; :func:`apply_rotary_interleaved` shows Meta's layout.

All angles are computed in float32, as both reference implementations do.
"""

from __future__ import annotations

import math

from ..backend import namespace_of


def inverse_frequencies(config, xp, seq_len: int | None = None):
    """The rotation speed of each pair, after the config's ``rope_scaling``.

    Returns a float32 array of shape (head_dim // 2,). ``seq_len`` (the longest
    position in use plus one) matters only for ``dynamic`` scaling.
    """
    dim = config.head_dim
    theta = config.rope_theta
    scaling = config.rope_scaling or {"rope_type": "default"}
    kind = scaling["rope_type"]

    if kind == "dynamic" and seq_len is not None and seq_len > config.max_position_embeddings:
        # Dynamic NTK: past the trained length, grow theta so the slowest pair still fits.
        factor = scaling["factor"]
        theta = theta * ((factor * seq_len / config.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))

    exponents = xp.arange(0, dim, 2, dtype=xp.float32) / dim  # (head_dim // 2,)
    inv_freq = 1.0 / (theta ** exponents)

    if kind == "linear":
        # Position interpolation: every position is divided by the factor.
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        inv_freq = _llama3_scaling(inv_freq, scaling, xp)
    return inv_freq


def _llama3_scaling(inv_freq, scaling, xp):
    """Llama 3.1's frequency-dependent scaling: slow pairs divided by ``factor``,
    fast pairs unchanged, a smooth blend between the two."""
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelength = (2 * math.pi) / inv_freq  # (head_dim // 2,) tokens per full turn
    slow = wavelength > old_context / low
    fast = wavelength < old_context / high
    smooth = (old_context / wavelength - low) / (high - low)  # 0 at the slow end, 1 at the fast end
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return xp.where(slow, inv_freq / factor, xp.where(fast, inv_freq, blended))


def positions_from_mask(padding_mask):
    """Position of each token counting only real tokens, so left padding does not shift them.

    padding_mask: (batch, seq) of 1 (token) / 0 (padding) -> (batch, seq) int64; padding gets position 0.
    """
    xp = namespace_of(padding_mask)
    real = xp.astype(padding_mask != 0, xp.int64)
    return xp.maximum(xp.cumulative_sum(real, axis=1) - 1, 0)


def rope_cos_sin(position_ids, inv_freq, dtype):
    """cos and sin of every rotation angle, laid out for rotate-half.

    position_ids: (batch, seq) integers; inv_freq: (head_dim // 2,) float32.
    Returns cos, sin: (batch, seq, head_dim) in ``dtype``.
    """
    xp = namespace_of(inv_freq)
    positions = xp.astype(position_ids, xp.float32)
    angles = positions[:, :, None] * inv_freq[None, None, :]  # (batch, seq, head_dim // 2)
    angles = xp.concat([angles, angles], axis=-1)  # (batch, seq, head_dim): pair i uses slots i and i + head_dim/2
    return xp.astype(xp.cos(angles), dtype, copy=False), xp.astype(xp.sin(angles), dtype, copy=False)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis."""
    xp = namespace_of(x)
    half = x.shape[-1] // 2
    return xp.concat([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x, cos, sin):
    """Rotate every pair of ``x`` (rotate-half layout).

    x: (batch, heads, seq, head_dim); cos, sin: (batch, seq, head_dim).
    """
    cos, sin = cos[:, None, :, :], sin[:, None, :, :]  # broadcast over heads
    return x * cos + rotate_half(x) * sin


def apply_rotary_interleaved(x, cos, sin):
    """The same rotation in Meta's interleaved layout, pairs (x[2i], x[2i+1]).

    x: (batch, heads, seq, head_dim); cos, sin: (batch, seq, head_dim) from
    :func:`rope_cos_sin` (only the first half of the last axis is used).
    """
    xp = namespace_of(x)
    batch, heads, seq, dim = x.shape
    cos, sin = cos[:, None, :, : dim // 2], sin[:, None, :, : dim // 2]  # (batch, 1, seq, head_dim // 2)
    pairs = xp.reshape(x, (batch, heads, seq, dim // 2, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = xp.stack([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    return xp.reshape(rotated, x.shape)


def apply_rotary_backward(grad_out, cos, sin):
    """Gradient of :func:`apply_rotary` with respect to ``x``.

    The forward is y = x * cos + rotate_half(x) * sin, a rotation of each pair; its
    transpose is the rotation by the opposite angle: dx = dy * cos - rotate_half(dy * sin).
    (rotate_half is a quarter turn, and its transpose is the quarter turn back, -rotate_half.)
    grad_out: (batch, heads, seq, head_dim); cos, sin: (batch, seq, head_dim).
    """
    cos, sin = cos[:, None, :, :], sin[:, None, :, :]  # broadcast over heads
    return grad_out * cos - rotate_half(grad_out * sin)


def apply_rotary_interleaved_backward(grad_out, cos, sin):
    """Gradient of :func:`apply_rotary_interleaved` with respect to ``x``: each pair
    (real, imag) is rotated back by its angle, (real * cos + imag * sin, imag * cos - real * sin).
    """
    xp = namespace_of(grad_out)
    batch, heads, seq, dim = grad_out.shape
    cos, sin = cos[:, None, :, : dim // 2], sin[:, None, :, : dim // 2]  # (batch, 1, seq, head_dim // 2)
    pairs = xp.reshape(grad_out, (batch, heads, seq, dim // 2, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = xp.stack([real * cos + imag * sin, imag * cos - real * sin], axis=-1)
    return xp.reshape(rotated, grad_out.shape)
