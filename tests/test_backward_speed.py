"""The speed-minded backward bodies: the NumPy scatter-add, and in-place work that must never touch the inputs."""

from __future__ import annotations

import numpy as np
import pytest

from minillama import functional as F
from minillama.backend import get_namespace, index_add, to_numpy

rng = np.random.default_rng(7)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_numpy_index_add_equals_add_at_with_repeats_and_negative_ids(dtype):
    xp = get_namespace("numpy")
    ids = rng.integers(-50, 50, size=400)
    ids[:4] = [-1, 49, 49, -1]  # -1 and 49 are one row of 50
    values = rng.standard_normal((400, 3, 2)).astype(dtype)
    expected = np.zeros((50, 3, 2), dtype=dtype)
    np.add.at(expected, ids, values)
    out = index_add(xp, (50, 3, 2), ids, values)
    assert out.dtype == dtype and out.shape == (50, 3, 2)
    tol = 2e-2 if dtype == np.float16 else 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    assert not out[np.setdiff1d(np.arange(50), ids % 50)].any()  # rows never named stay zero


def test_numpy_index_add_of_no_ids_is_zero_and_a_bad_id_raises():
    xp = get_namespace("numpy")
    out = index_add(xp, (3, 2), np.zeros((0,), dtype=np.int64), np.ones((0, 2), dtype=np.float32))
    assert out.dtype == np.float32 and not out.any() and out.shape == (3, 2)
    with pytest.raises(IndexError):
        index_add(xp, (3, 2), np.array([3]), np.ones((1, 2), dtype=np.float32))


def inputs_unchanged(backend, function, *arrays):
    """Call function on backend copies of arrays; assert none of them was modified, return the result."""
    xp = get_namespace(backend)
    on_backend = [xp.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in arrays]  # may share memory
    result = function(*on_backend)
    for before, after in zip(arrays, on_backend):
        if isinstance(before, np.ndarray):
            np.testing.assert_array_equal(to_numpy(after), before)
    return result


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_backwards_leave_their_inputs_alone(backend, dtype):
    if backend == "strict" and dtype == np.float16:
        pytest.skip("array_api_strict has no float16")
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    grad_y = rng.standard_normal((2, 3, 4)).astype(dtype)
    gate, up, down = (rng.standard_normal(s).astype(dtype) for s in ((6, 4), (6, 4), (4, 6)))
    inputs_unchanged(backend, F.swiglu_mlp_backward, grad_y, x, gate, up, down)
    inputs_unchanged(backend, F.silu_backward, grad_y, x)
    logits = rng.standard_normal((2, 3, 5)).astype(dtype)
    labels = rng.integers(0, 5, size=(2, 3))
    grad = to_numpy(inputs_unchanged(backend, F.causal_lm_loss_backward, logits, labels))
    assert grad.dtype == dtype and not grad[:, -1].any()  # the last position predicts nothing
    q = rng.standard_normal((2, 4, 3, 2)).astype(dtype)
    k, v = (rng.standard_normal((2, 2, 3, 2)).astype(dtype) for _ in range(2))
    grad_out = rng.standard_normal((2, 4, 3, 2)).astype(dtype)
    xp = get_namespace(backend)
    mask = F.attention_mask(3, 3, xp)
    probs = to_numpy(F.attention(xp.asarray(q), xp.asarray(k), xp.asarray(v), mask)[1])
    for given in (None, probs):
        inputs_unchanged(backend, lambda *a: F.attention_backward(*a[:4], mask, a[4]), grad_out, q, k, v, given)


def test_attention_backward_is_the_same_with_a_mask_that_hides_nothing_extra(backend):
    """Without padding the masked gradient is skipped (masked probabilities are exactly 0):
    the result must equal the one through a padding mask of all ones, which applies it."""
    xp = get_namespace(backend)
    q = xp.asarray(rng.standard_normal((2, 4, 5, 3)))
    k, v = (xp.asarray(rng.standard_normal((2, 2, 5, 3))) for _ in range(2))
    grad_out = xp.asarray(rng.standard_normal((2, 4, 5, 3)))
    causal = F.attention_mask(5, 5, xp)
    padded = F.attention_mask(5, 5, xp, xp.asarray(np.array([[1] * 5, [0, 0, 1, 1, 1]])))
    plain = F.attention_backward(grad_out, q, k, v, causal)
    masked = F.attention_backward(grad_out, q, k, v, padded)
    for a, b in zip(plain, masked):  # the first row is unpadded: the same numbers either way
        np.testing.assert_allclose(to_numpy(a)[0], to_numpy(b)[0], rtol=1e-12, atol=1e-15)
    grad_q = to_numpy(masked[0])
    assert not grad_q[1, :, :2].any()  # padding queries see no key: no gradient to their q
