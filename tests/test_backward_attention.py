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


def torch_rotary(torch, x, cos, sin, layout):
    """The rotation stated in torch: rotate-half on the two halves, or complex multiplication of (x[2i], x[2i+1])."""
    cos, sin = cos[:, None], sin[:, None]  # (batch, 1, seq, head_dim)
    half = x.shape[-1] // 2
    if layout == "rotate_half":
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], half, 2).contiguous())
    turned = pairs * torch.complex(cos[..., :half], sin[..., :half])
    return torch.view_as_real(turned).reshape(x.shape)


@pytest.mark.parametrize("layout,backward", [("rotate_half", F.apply_rotary_backward),
                                             ("interleaved", F.apply_rotary_interleaved_backward)],
                         ids=["rotate_half", "interleaved"])
def test_rotary_backward_matches_torch(backend, layout, backward):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 4, 3, 8))
    grad_out = rng.standard_normal(x.shape)
    cos, sin = rope_tables(2, 3, 8, offset=2)
    for dtype, tolerance in [(np.float64, 1e-12), (np.float32, 1e-5)]:
        x_t = torch.tensor(x.astype(dtype), requires_grad=True)
        cos_t, sin_t = torch.tensor(cos.astype(dtype)), torch.tensor(sin.astype(dtype))
        torch_rotary(torch, x_t, cos_t, sin_t, layout).backward(torch.tensor(grad_out.astype(dtype)))
        xp, (grad_b, cos_b, sin_b) = on(backend, grad_out.astype(dtype), cos.astype(dtype), sin.astype(dtype))
        grad_x = backward(grad_b, cos_b, sin_b)
        assert grad_x.dtype == xp.asarray(np.zeros(1, dtype)).dtype
        assert relative_error(to_numpy(grad_x), x_t.grad.numpy()) < tolerance


# ---- grouped-query attention -------------------------------------------------------------------

HEADS = [(4, 4), (8, 2), (4, 1)]  # multi-head, grouped-query, multi-query
HEAD_IDS = ["mha", "gqa", "mqa"]
# (q_len, k_len, padding per batch row or None, causal): the queries are the last q_len of k_len tokens.
MASKS = {
    "none": (3, 5, None, False),
    "causal": (5, 5, None, True),
    "causal_left_padding": (5, 5, [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], True),  # rows 0, 1 of batch 1: all masked
    "shorter_queries_padding": (3, 7, [[0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]], True),
}


def attention_inputs(heads, kv_heads, q_len, k_len, dtype=np.float64, head_dim=4):
    q = rng.standard_normal((2, heads, q_len, head_dim)).astype(dtype)
    k = rng.standard_normal((2, kv_heads, k_len, head_dim)).astype(dtype)
    v = rng.standard_normal((2, kv_heads, k_len, head_dim)).astype(dtype)
    grad_out = rng.standard_normal(q.shape).astype(dtype)
    return q, k, v, grad_out


def make_mask(xp, case):
    q_len, k_len, padding, causal = MASKS[case]
    if not causal:
        return None
    return F.attention_mask(q_len, k_len, xp, None if padding is None else xp.asarray(padding))


@pytest.mark.parametrize("case", list(MASKS))
@pytest.mark.parametrize("heads,kv_heads", HEADS, ids=HEAD_IDS)
def test_attention_backward_matches_finite_differences(backend, heads, kv_heads, case):
    q_len, k_len = MASKS[case][:2]
    q, k, v, grad_out = attention_inputs(heads, kv_heads, q_len, k_len)
    xp, (q_b, k_b, v_b, grad_b) = on(backend, q, k, v, grad_out)
    mask = make_mask(xp, case)
    grads = F.attention_backward(grad_b, q_b, k_b, v_b, mask)

    inputs = [q, k, v]
    for which, (value, grad) in enumerate(zip(inputs, grads)):
        def loss(changed, which=which):
            args = [xp.asarray(changed if i == which else a) for i, a in enumerate(inputs)]
            return float(np.sum(to_numpy(F.attention(*args, mask)[0]) * grad_out))

        assert grad.dtype == xp.float64 and grad.shape == value.shape
        assert relative_error(to_numpy(grad), numerical_gradient(loss, value)) < 1e-6, "qkv"[which]


def torch_attention(torch, q, k, v, mask):
    """The plain statement: copy each key/value head to its group, scale, mask, softmax in float32, weigh."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = scores.to(wide)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(wide).min)
    return torch.softmax(scores, dim=-1).to(q.dtype) @ v


@pytest.mark.parametrize("case", list(MASKS))
@pytest.mark.parametrize("heads,kv_heads", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-8), (np.float32, 1e-4)], ids=["float64", "float32"])
def test_attention_backward_matches_torch(backend, heads, kv_heads, case, dtype, tolerance):
    torch = pytest.importorskip("torch")
    q_len, k_len = MASKS[case][:2]
    q, k, v, grad_out = attention_inputs(heads, kv_heads, q_len, k_len, dtype, head_dim=6)
    xp, (q_b, k_b, v_b, grad_b) = on(backend, q, k, v, grad_out)
    mask = make_mask(xp, case)
    grads = F.attention_backward(grad_b, q_b, k_b, v_b, mask)

    tensors = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    mask_t = None if mask is None else torch.tensor(to_numpy(mask))
    torch_attention(torch, *tensors, mask_t).backward(torch.tensor(grad_out))
    for name, grad, tensor in zip("qkv", grads, tensors):
        assert grad.dtype == xp.asarray(np.zeros(1, dtype)).dtype, name
        assert np.isfinite(to_numpy(grad)).all(), name
        assert relative_error(to_numpy(grad), tensor.grad.numpy()) < tolerance, name


def test_fully_masked_query_passes_gradient_to_v_only(backend):
    """A padding query's row is uniform over the keys whatever q and k are: dq = dk = 0, dv = dOut / k_len."""
    q, k, v, grad_out = attention_inputs(8, 2, 5, 5, np.float32)
    grad_out[0] = 0.0
    grad_out[1, :, 2:] = 0.0  # only batch 1's padding queries (rows 0 and 1) send gradient
    xp, (q_b, k_b, v_b, grad_b) = on(backend, q, k, v, grad_out)
    mask = make_mask(xp, "causal_left_padding")
    grad_q, grad_k, grad_v = (to_numpy(g) for g in F.attention_backward(grad_b, q_b, k_b, v_b, mask))
    np.testing.assert_array_equal(grad_q, 0.0)
    np.testing.assert_array_equal(grad_k, 0.0)
    per_kv_head = grad_out.reshape(2, 2, 4 * 5, 4).sum(axis=2) / 5  # (batch, kv_heads, head_dim)
    np.testing.assert_allclose(grad_v, np.broadcast_to(per_kv_head[:, :, None, :], v.shape), rtol=1e-6, atol=1e-7)


def test_padded_keys_get_no_key_gradient(backend):
    q, k, v, grad_out = attention_inputs(4, 2, 3, 7)
    xp, (q_b, k_b, v_b, grad_b) = on(backend, q, k, v, grad_out)
    mask = make_mask(xp, "shorter_queries_padding")
    grad_k = to_numpy(F.attention_backward(grad_b, q_b, k_b, v_b, mask)[1])
    np.testing.assert_array_equal(grad_k[0, :, 0], 0.0)
    np.testing.assert_array_equal(grad_k[1, :, :5], 0.0)
    assert np.abs(grad_k[1, :, 5:]).min() > 0.0


def test_attention_backward_reuses_the_forward_probabilities(backend):
    q, k, v, grad_out = attention_inputs(8, 2, 5, 5, np.float32)
    xp, (q_b, k_b, v_b, grad_b) = on(backend, q, k, v, grad_out)
    mask = make_mask(xp, "causal_left_padding")
    probs = F.attention(q_b, k_b, v_b, mask)[1]
    recomputed = F.attention_backward(grad_b, q_b, k_b, v_b, mask)
    reused = F.attention_backward(grad_b, q_b, k_b, v_b, mask, probs=probs)
    for a, b in zip(recomputed, reused):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    uniform = F.attention_backward(grad_b, q_b, k_b, v_b, mask, probs=xp.ones_like(probs) / 5.0)
    assert not np.allclose(to_numpy(uniform[2]), to_numpy(reused[2]))  # the probs given are the ones used


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_attention_backward_keeps_the_dtype(backend, dtype):
    """float32 in, float32 out (no NumPy-2 widening to float64); float16 computes its softmax in float32."""
    if dtype == np.float16 and backend == "strict":
        pytest.skip("the strict Array API stand-in has no float16")
    q, k, v, grad_out = attention_inputs(4, 2, 3, 5, dtype)
    xp, (q_b, k_b, v_b, grad_b) = on(backend, q, k, v, grad_out)
    mask = F.attention_mask(3, 5, xp)
    grads = F.attention_backward(grad_b, q_b, k_b, v_b, mask)
    in_float64 = F.attention_backward(*(xp.asarray(a.astype(np.float64)) for a in (grad_out, q, k, v)), mask)
    for grad, reference in zip(grads, in_float64):
        assert grad.dtype == q_b.dtype
        np.testing.assert_allclose(to_numpy(grad).astype(np.float64), to_numpy(reference), rtol=2e-2, atol=2e-2)
