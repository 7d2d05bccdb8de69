"""The hand-written backwards of the simple components and the loss.

Each gradient is checked three ways: against central finite differences in float64,
against torch autograd where torch is installed, and on every backend (the strict
Array API stand-in included), keeping float32 in float32.
"""

from __future__ import annotations

import numpy as np
import pytest

from minillama import functional as F
from minillama.backend import get_namespace, index_add, to_numpy

rng = np.random.default_rng(0)


def on(backend, *arrays):
    xp = get_namespace(backend)
    return [None if a is None else xp.asarray(a) for a in arrays]


def finite_difference(loss, array, step=1e-6):
    """d loss / d array by central differences, one element at a time (``array`` is changed and restored)."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        kept = array[index]
        array[index] = kept + step
        up = loss()
        array[index] = kept - step
        down = loss()
        array[index] = kept
        grad[index] = (up - down) / (2 * step)
    return grad


def assert_close(actual, expected, rtol):
    """Relative error of the whole array, measured against its largest entry."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = max(np.max(np.abs(expected)), 1e-30)
    assert np.max(np.abs(actual - expected)) / scale <= rtol


def torch_grads(function, grad_y, *arrays):
    """torch autograd: the gradients of sum(function(*arrays) * grad_y) for every array not None."""
    torch = pytest.importorskip("torch")
    tensors = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    function(*tensors).backward(torch.tensor(grad_y))
    return [None if t is None else t.grad.numpy() for t in tensors]


# ---- embedding ---------------------------------------------------------------------------------------------


def test_embedding_backward_adds_up_repeated_tokens(backend):
    ids = np.array([[3, 1, 3], [0, 3, 1]])
    grad_out = rng.standard_normal((2, 3, 4)).astype(np.float32)
    expected = np.zeros((5, 4), dtype=np.float32)
    for b, s in np.ndindex(ids.shape):
        expected[ids[b, s]] += grad_out[b, s]
    g, i = on(backend, grad_out, ids)
    out = to_numpy(F.embedding_backward(g, i, 5))
    assert out.dtype == np.float32 and out.shape == (5, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    assert not out[2].any() and not out[4].any()  # tokens never seen get no gradient


def test_embedding_backward_matches_torch(backend):
    torch = pytest.importorskip("torch")
    ids = rng.integers(0, 7, size=(3, 5))
    table = rng.standard_normal((7, 6))
    grad_out = rng.standard_normal((3, 5, 6))
    (expected,) = torch_grads(lambda t: torch.nn.functional.embedding(torch.tensor(ids), t), grad_out, table)
    g, i = on(backend, grad_out, ids)
    assert_close(to_numpy(F.embedding_backward(g, i, 7)), expected, 1e-12)


def test_index_add_portable_path_works_in_blocks():
    """The strict backend takes the one-hot path; 1000 ids make blocks of 4194 rows, so 10000 rows need three."""
    xp = get_namespace("strict")
    ids = rng.integers(0, 10_000, size=1000)
    ids[:3] = [9_999, 0, 9_999]
    values = rng.standard_normal((1000, 2))
    expected = np.zeros((10_000, 2))
    np.add.at(expected, ids, values)
    out = to_numpy(index_add(xp, (10_000, 2), xp.asarray(ids), xp.asarray(values)))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


# ---- linear ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_backward_matches_finite_differences(with_bias):
    x = rng.standard_normal((2, 3, 4))
    weight = rng.standard_normal((5, 4))
    bias = rng.standard_normal(5) if with_bias else None
    grad_y = rng.standard_normal((2, 3, 5))
    grad_x, grad_weight, grad_bias = F.linear_backward(grad_y, x, weight, bias)
    loss = lambda: float(np.sum(F.linear(x, weight, bias) * grad_y))
    assert_close(grad_x, finite_difference(loss, x), 1e-7)
    assert_close(grad_weight, finite_difference(loss, weight), 1e-7)
    if with_bias:
        assert_close(grad_bias, finite_difference(loss, bias), 1e-7)
    else:
        assert grad_bias is None


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_linear_backward_matches_torch(backend, dtype, rtol):
    torch = pytest.importorskip("torch")
    x, weight, bias, grad_y = (rng.standard_normal(s).astype(dtype) for s in ((2, 3, 4), (5, 4), (5,), (2, 3, 5)))
    expected = torch_grads(torch.nn.functional.linear, grad_y, x, weight, bias)
    actual = F.linear_backward(*on(backend, grad_y, x, weight, bias))
    for a, e in zip(actual, expected):
        assert to_numpy(a).dtype == dtype
        assert_close(to_numpy(a), e, rtol)


# ---- silu --------------------------------------------------------------------------------------------------


def test_silu_backward_matches_finite_differences_and_torch(backend):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 7)) * 4
    x[0, :3] = [-60.0, 0.0, 60.0]  # far into the flat tails the gradient is 0 and 1
    grad_y = rng.standard_normal((3, 7))
    numeric = finite_difference(lambda: float(np.sum(F.silu(x) * grad_y)), x)
    (expected,) = torch_grads(torch.nn.functional.silu, grad_y, x)
    actual = to_numpy(F.silu_backward(*on(backend, grad_y, x)))
    assert_close(actual, numeric, 1e-7)
    assert_close(actual, expected, 1e-12)
    np.testing.assert_allclose(actual[0, :3], [0.0, 0.5 * grad_y[0, 1], grad_y[0, 2]], atol=1e-12)


def test_silu_backward_keeps_float32(backend):
    x, grad_y = rng.standard_normal((2, 5), dtype=np.float32), rng.standard_normal((2, 5), dtype=np.float32)
    out = to_numpy(F.silu_backward(*on(backend, grad_y, x)))
    assert out.dtype == np.float32
    sigmoid = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(out, grad_y * sigmoid * (1 + x * (1 - sigmoid)), rtol=1e-5, atol=1e-6)


# ---- rms_norm ----------------------------------------------------------------------------------------------


def torch_rms_norm(x, weight, eps=1e-5):
    """The reference's RMSNorm: half precision normalised in float32, cast back before the gain."""
    import torch
    wide = x if x.dtype == torch.float64 else x.to(torch.float32)
    normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def test_rms_norm_backward_matches_finite_differences():
    x, weight, grad_y = rng.standard_normal((2, 3, 6)), rng.standard_normal(6), rng.standard_normal((2, 3, 6))
    grad_x, grad_weight = F.rms_norm_backward(grad_y, x, weight, 1e-5)
    loss = lambda: float(np.sum(F.rms_norm(x, weight, 1e-5) * grad_y))
    assert_close(grad_x, finite_difference(loss, x), 1e-7)
    assert_close(grad_weight, finite_difference(loss, weight), 1e-7)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_rms_norm_backward_matches_torch(backend, dtype, rtol):
    x, weight, grad_y = (rng.standard_normal(s).astype(dtype) for s in ((2, 3, 8), (8,), (2, 3, 8)))
    expected = torch_grads(torch_rms_norm, grad_y, x, weight)
    actual = F.rms_norm_backward(*on(backend, grad_y, x, weight), 1e-5)
    for a, e in zip(actual, expected):
        assert to_numpy(a).dtype == dtype
        assert_close(to_numpy(a), e, rtol)


@pytest.mark.parametrize("weight_dtype", [np.float16, np.float32])
def test_rms_norm_backward_of_half_precision_goes_through_float32(backend, weight_dtype):
    if backend == "strict":
        pytest.skip("the Array API standard has no float16")
    x = np.full((2, 4), 300.0, dtype=np.float16)  # 300**2 overflows float16: only a float32 normalisation survives
    x[1] = rng.standard_normal(4) * 300
    weight = (1 + 0.1 * rng.standard_normal(4)).astype(weight_dtype)
    grad_y = rng.standard_normal((2, 4)).astype(np.result_type(np.float16, weight_dtype))
    expected = torch_grads(torch_rms_norm, grad_y, x, weight)
    grad_x, grad_weight = (to_numpy(a) for a in F.rms_norm_backward(*on(backend, grad_y, x, weight), 1e-5))
    assert grad_x.dtype == np.float16 and grad_weight.dtype == weight_dtype
    assert np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_weight))
    assert_close(grad_x, expected[0], 2e-3)
    assert_close(grad_weight, expected[1], 2e-3)


# ---- swiglu_mlp --------------------------------------------------------------------------------------------

MLP_NAMES = ("x", "gate_proj", "up_proj", "down_proj", "gate_bias", "up_bias", "down_bias")


def mlp_arrays(dtype, with_bias):
    shapes = ((2, 3, 4), (6, 4), (6, 4), (4, 6), (6,), (6,), (4,))
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return arrays if with_bias else arrays[:4] + [None, None, None]


@pytest.mark.parametrize("with_bias", [False, True])
def test_swiglu_mlp_backward_matches_finite_differences(with_bias):
    arrays = mlp_arrays(np.float64, with_bias)
    grad_y = rng.standard_normal((2, 3, 4))
    grads = F.swiglu_mlp_backward(grad_y, *arrays)
    expected_names = MLP_NAMES if with_bias else MLP_NAMES[:4]
    assert sorted(grads) == sorted(expected_names)
    loss = lambda: float(np.sum(F.swiglu_mlp(*arrays) * grad_y))
    for name, array in zip(MLP_NAMES, arrays):
        if array is not None:
            assert_close(grads[name], finite_difference(loss, array), 1e-7)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_swiglu_mlp_backward_matches_torch(backend, dtype, rtol):
    torch = pytest.importorskip("torch")
    linear = torch.nn.functional.linear
    arrays = mlp_arrays(dtype, with_bias=True)
    grad_y = rng.standard_normal((2, 3, 4)).astype(dtype)

    def reference(x, gate, up, down, gate_bias, up_bias, down_bias):
        return linear(torch.nn.functional.silu(linear(x, gate, gate_bias)) * linear(x, up, up_bias), down, down_bias)

    expected = torch_grads(reference, grad_y, *arrays)
    grads = F.swiglu_mlp_backward(*on(backend, grad_y, *arrays))
    for name, e in zip(MLP_NAMES, expected):
        assert to_numpy(grads[name]).dtype == dtype
        assert_close(to_numpy(grads[name]), e, rtol)
