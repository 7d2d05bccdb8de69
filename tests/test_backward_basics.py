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


def torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


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


def silu_case():
    x = rng.standard_normal((3, 7)) * 4
    x[0, :3] = [-60.0, 0.0, 60.0]  # far into the flat tails the gradient is 0 and 1
    return x, rng.standard_normal((3, 7))


def test_silu_backward_matches_finite_differences(backend):
    x, grad_y = silu_case()
    numeric = finite_difference(lambda: float(np.sum(F.silu(x) * grad_y)), x)
    actual = to_numpy(F.silu_backward(*on(backend, grad_y, x)))
    assert_close(actual, numeric, 1e-7)
    np.testing.assert_allclose(actual[0, :3], [0.0, 0.5 * grad_y[0, 1], grad_y[0, 2]], atol=1e-12)


def test_silu_backward_matches_torch(backend):
    torch = pytest.importorskip("torch")
    x, grad_y = silu_case()
    (expected,) = torch_grads(torch.nn.functional.silu, grad_y, x)
    assert_close(to_numpy(F.silu_backward(*on(backend, grad_y, x))), expected, 1e-12)


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
    grad_x, grad_weight = (to_numpy(a) for a in F.rms_norm_backward(*on(backend, grad_y, x, weight), 1e-5))
    assert grad_x.dtype == np.float16 and grad_weight.dtype == weight_dtype
    assert np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_weight))
    exact = F.rms_norm_backward(*(a.astype(np.float64) for a in (grad_y, x, weight)), 1e-5)
    assert_close(grad_x, exact[0], 2e-3)
    assert_close(grad_weight, exact[1], 2e-3)
    if torch_installed():
        expected = torch_grads(torch_rms_norm, grad_y, x, weight)
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


# ---- loss --------------------------------------------------------------------------------------------------


def lm_case(dtype, batch=2, seq=5, vocab=7):
    logits = (rng.standard_normal((batch, seq, vocab)) * 3).astype(dtype)
    labels = rng.integers(0, vocab, size=(batch, seq))
    labels[0, 2] = labels[1, 4] = -100  # ignored; labels[:, 0] is never predicted anyway
    return logits, labels


def torch_causal_lm_loss(logits, labels):
    """The shifted loss written with torch.nn.functional.cross_entropy, as transformers' ForCausalLMLoss does."""
    import torch
    vocab = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), torch.tensor(labels[:, 1:]).reshape(-1),
                                             ignore_index=-100)


def test_cross_entropy_is_the_mean_negative_log_probability_of_the_counted_labels(backend):
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]))
    labels = np.array([0, 2, -100])
    loss = F.cross_entropy(*on(backend, logits, labels))
    assert loss.shape == ()  # a 0-d array on the backend, not a Python float
    np.testing.assert_allclose(float(loss), -(np.log(0.5) + np.log(0.8)) / 2, rtol=1e-14)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_causal_lm_loss_and_backward_match_torch(backend, dtype, rtol):
    torch = pytest.importorskip("torch")
    logits, labels = lm_case(dtype)
    logits_t = torch.tensor(logits, requires_grad=True)
    expected = torch_causal_lm_loss(logits_t, labels)
    expected.backward()
    logits_b, labels_b = on(backend, logits, labels)
    loss = F.causal_lm_loss(logits_b, labels_b)
    grad = to_numpy(F.causal_lm_loss_backward(logits_b, labels_b))
    assert to_numpy(loss).dtype == dtype and grad.dtype == dtype and grad.shape == logits.shape
    np.testing.assert_allclose(float(loss), expected.item(), rtol=rtol)
    assert_close(grad, logits_t.grad.numpy(), 10 * rtol)
    assert not grad[:, -1].any()  # the last position predicts nothing


def test_causal_lm_loss_equals_transformers_for_causal_lm_loss():
    torch = pytest.importorskip("torch")
    loss_utils = pytest.importorskip("transformers.loss.loss_utils")
    logits, labels = lm_case(np.float32)
    expected = loss_utils.ForCausalLMLoss(torch.tensor(logits), torch.tensor(labels), vocab_size=7)
    np.testing.assert_allclose(float(F.causal_lm_loss(logits, labels)), expected.item(), rtol=1e-6)


def test_causal_lm_loss_backward_matches_finite_differences():
    logits, labels = lm_case(np.float64)
    numeric = finite_difference(lambda: float(F.causal_lm_loss(logits, labels)), logits)
    assert_close(F.causal_lm_loss_backward(logits, labels), numeric, 1e-7)


def test_cross_entropy_backward_matches_finite_differences_with_leading_axes():
    logits = rng.standard_normal((2, 3, 4, 5))
    labels = rng.integers(0, 5, size=(2, 3, 4))
    labels[1, 1, :] = -7
    numeric = finite_difference(lambda: float(F.cross_entropy(logits, labels, ignore_index=-7)), logits)
    grad = F.cross_entropy_backward(logits, labels, ignore_index=-7)
    assert_close(grad, numeric, 1e-7)
    assert not grad[1, 1].any()


def test_loss_is_stable_for_huge_logits_and_keeps_half_precision_gradients():
    logits = np.zeros((1, 3, 4), dtype=np.float16)
    logits[0, :, 0] = 60000.0  # exp overflows even float32 without the maximum taken out
    labels = np.array([[0, 0, 1]])
    loss = F.causal_lm_loss(logits, labels)
    assert loss.dtype == np.float32  # computed in float32, as transformers upcasts
    np.testing.assert_allclose(float(loss), (0.0 + 60000.0) / 2, rtol=1e-6)
    grad = F.causal_lm_loss_backward(logits, labels)
    assert grad.dtype == np.float16 and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[0, 1], [0.5, -0.5, 0.0, 0.0], atol=1e-3)


def test_all_ignored_labels_give_nan_loss_and_zero_gradient_like_torch(backend):
    logits, labels = lm_case(np.float32)
    labels[:, 1:] = -100
    logits_b, labels_b = on(backend, logits, labels)
    assert np.isnan(float(F.causal_lm_loss(logits_b, labels_b)))
    grad = to_numpy(F.causal_lm_loss_backward(logits_b, labels_b))
    assert grad.dtype == np.float32 and not grad.any()
    one_token = on(backend, logits[:, :1], labels[:, :1])  # a single position predicts nothing either
    assert np.isnan(float(F.causal_lm_loss(*one_token)))


def test_a_label_outside_the_vocabulary_makes_nan_instead_of_a_wrong_number(backend):
    logits, labels = lm_case(np.float32)
    labels[0, 3] = 7  # vocab is 7
    labels[1, 2] = -1  # NumPy would read this as the last row
    logits_b, labels_b = on(backend, logits, labels)
    assert np.isnan(float(F.causal_lm_loss(logits_b, labels_b)))
    grad = to_numpy(F.causal_lm_loss_backward(logits_b, labels_b))
    assert np.all(np.isnan(grad[0, 2])) and np.all(np.isnan(grad[1, 1]))
    assert np.all(np.isfinite(grad[0, 3]))
