"""Backward of rotary embedding and grouped-query attention, against finite differences and torch autograd.

Every gradient is checked as the gradient of the scalar loss sum(forward(...) * grad_out) for a
random grad_out: central differences in float64 on every backend, and a plain torch implementation
differentiated by autograd where torch is installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from minillama import functional as F
from minillama.backend import get_namespace, to_numpy

rng = np.random.default_rng(14)


def on(backend, *arrays):
    xp = get_namespace(backend)
    return xp, [xp.asarray(a) for a in arrays]


def numerical_gradient(loss, x, step=1e-5):
    """Central differences of the scalar ``loss`` (a function of one NumPy float64 array) at ``x``."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (loss(plus) - loss(minus)) / (2 * step)
    return grad


def relative_error(actual, expected):
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def rope_tables(batch, seq, dim, offset=0):
    """cos, sin (batch, seq, dim) float64 for positions offset .. offset + seq - 1 (different per batch row)."""
    inv_freq = 10000.0 ** (-np.arange(0, dim, 2) / dim)
    positions = np.arange(seq)[None, :] + offset + 3 * np.arange(batch)[:, None]  # (batch, seq)
    angles = positions[:, :, None] * inv_freq[None, None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


# ---- rotary embedding --------------------------------------------------------------------------

ROTARIES = [(F.apply_rotary, F.apply_rotary_backward),
            (F.apply_rotary_interleaved, F.apply_rotary_interleaved_backward)]


@pytest.mark.parametrize("forward,backward", ROTARIES, ids=["rotate_half", "interleaved"])
def test_rotary_backward_matches_finite_differences(backend, forward, backward):
    x = rng.standard_normal((2, 3, 5, 8))
    grad_out = rng.standard_normal(x.shape)
    cos, sin = rope_tables(2, 5, 8, offset=7)
    xp, (cos_b, sin_b, grad_b) = on(backend, cos, sin, grad_out)

    def loss(x_host):
        return float(np.sum(to_numpy(forward(xp.asarray(x_host), cos_b, sin_b)) * grad_out))

    grad_x = to_numpy(backward(grad_b, cos_b, sin_b))
    assert relative_error(grad_x, numerical_gradient(loss, x)) < 1e-8


@pytest.mark.parametrize("forward,backward", ROTARIES, ids=["rotate_half", "interleaved"])
def test_rotary_backward_is_the_inverse_rotation(backend, forward, backward):
    x = rng.standard_normal((1, 2, 4, 6)).astype(np.float32)
    cos, sin = rope_tables(1, 4, 6, offset=100)
    xp, (x_b, cos_b, sin_b) = on(backend, x, cos.astype(np.float32), sin.astype(np.float32))
    back = backward(forward(x_b, cos_b, sin_b), cos_b, sin_b)  # a rotation's transpose undoes it
    assert back.dtype == xp.float32
    np.testing.assert_allclose(to_numpy(back), x, rtol=1e-5, atol=1e-5)


def test_rotary_backward_matches_torch(backend):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 4, 3, 8))
    grad_out = rng.standard_normal(x.shape)
    cos, sin = rope_tables(2, 3, 8, offset=2)
    for dtype, tolerance in [(np.float64, 1e-12), (np.float32, 1e-5)]:
        x_t = torch.tensor(x.astype(dtype), requires_grad=True)
        cos_t, sin_t = torch.tensor(cos.astype(dtype))[:, None], torch.tensor(sin.astype(dtype))[:, None]
        half = x_t.shape[-1] // 2
        rotated = torch.cat([-x_t[..., half:], x_t[..., :half]], dim=-1)
        (x_t * cos_t + rotated * sin_t).backward(torch.tensor(grad_out.astype(dtype)))
        xp, (grad_b, cos_b, sin_b) = on(backend, grad_out.astype(dtype), cos.astype(dtype), sin.astype(dtype))
        grad_x = F.apply_rotary_backward(grad_b, cos_b, sin_b)
        assert grad_x.dtype == xp.asarray(np.zeros(1, dtype)).dtype
        assert relative_error(to_numpy(grad_x), x_t.grad.numpy()) < tolerance
