"""minillama.quantize against its definitions (llama.cpp's Q8_0 and Q4_0), on hand-computable cases."""

from __future__ import annotations

import numpy as np
import pytest

import minillama
from minillama import quantize as Q
from minillama.backend import get_namespace, to_numpy
from minillama.formats.synthetic import write_random_checkpoint

rng = np.random.default_rng(0)
STEP = 2.0 ** -7  # a scale float16 holds exactly, so every backend gives the same codes


def on(backend, array):
    return get_namespace(backend).asarray(array)


def per_weight(scales, group_size):
    """(out, groups) scales -> (out, in): each weight's own scale."""
    return np.repeat(to_numpy(scales).astype(np.float32), group_size, axis=1)


def test_int8_row_with_known_max_gives_known_scale_and_codes(backend):
    # max |w| = 127 steps -> scale = one step; 1.5 and 2.5 steps round away from zero (roundf), not to even
    row = np.array([[127, -64, 32, 1.5, -1.5, 2.5]], dtype=np.float32) * STEP
    qw = Q.quantize_int8(on(backend, row))
    assert qw.kind == "int8" and qw.group_size == 6 and qw.shape == (1, 6)
    assert to_numpy(qw.scales).tolist() == [[STEP]]
    assert to_numpy(qw.q).tolist() == [[127, -64, 32, 2, -2, 3]]
    assert to_numpy(qw.q).dtype == np.int8


def test_int4_group_with_known_extreme_gives_known_scale_and_codes(backend):
    # m = -1 (the largest magnitude, negative) -> d = m / -8 = 0.125; codes floor(w / d + 8.5) clipped to 0..15
    group = np.zeros((1, 32), dtype=np.float32)
    group[0, :5] = [-1.0, 0.9, 0.0625, -0.0625, 0.3]  # -8 steps, 7.2 (clipped), +0.5, -0.5 (halves up), 2.4
    qw = Q.quantize_int4(on(backend, group), group_size=32)
    assert to_numpy(qw.scales).tolist() == [[0.125]]
    codes = to_numpy(qw.codes())
    assert codes[0, :5].tolist() == [0, 15, 9, 8, 10] and (codes[0, 5:] == 8).all()
    # two codes a byte: code j in the low nibble, code j + 16 in the high one
    packed = to_numpy(qw.q)
    assert packed.shape == (1, 16) and packed.dtype == np.uint8
    assert packed[0, :2].tolist() == [0 | 8 << 4, 15 | 8 << 4]
    assert to_numpy(qw.dequantize())[0, :5].tolist() == [-1.0, 0.875, 0.125, 0.0, 0.25]


def test_int4_positive_extreme_gets_code_zero_and_a_negative_scale(backend):
    group = np.zeros((1, 32), dtype=np.float32)
    group[0, :2] = [1.0, -0.5]
    qw = Q.quantize_int4(on(backend, group), group_size=32)
    assert to_numpy(qw.scales).tolist() == [[-0.125]]
    assert to_numpy(qw.codes())[0, :2].tolist() == [0, 12]
    assert to_numpy(qw.dequantize())[0, :2].tolist() == [1.0, -0.5]


@pytest.mark.parametrize("group_size", [None, 32, 64])
def test_int8_round_trip_error_is_at_most_half_a_scale(backend, group_size):
    w = rng.standard_normal((8, 128)).astype(np.float32) * 0.02
    qw = Q.quantize_int8(on(backend, w), group_size)
    error = np.abs(to_numpy(qw.dequantize()) - w)
    assert (error <= per_weight(qw.scales, qw.group_size) / 2 * (1 + 1e-5)).all()
    assert to_numpy(qw.q).min() >= -127


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_codes_and_round_trip_error(backend, group_size):
    w = rng.standard_normal((8, 128)).astype(np.float32) * 0.02
    qw = Q.quantize_int4(on(backend, w), group_size)
    codes = to_numpy(qw.codes())
    assert codes.shape == (8, 128) and codes.dtype == np.uint8 and 0 <= codes.min() and codes.max() <= 15
    assert to_numpy(qw.scales).shape == (8, 128 // group_size) and to_numpy(qw.q).shape == (8, 64)
    step = np.abs(per_weight(qw.scales, group_size))
    error = np.abs(to_numpy(qw.dequantize()) - w)
    clipped = codes == 15  # +8 steps does not exist: those weights may be off by up to a whole step
    assert (error[~clipped] <= step[~clipped] / 2 * (1 + 1e-5)).all()
    assert (error <= step * (1 + 1e-5)).all()
    assert (codes.reshape(8, -1, group_size).min(axis=-1) == 0).all()  # each group's extreme is code 0


def test_nbytes_counts_codes_and_float16_scales():
    w = rng.standard_normal((64, 256)).astype(np.float32)
    assert Q.quantize_int8(w).nbytes == 64 * 256 + 64 * 2  # one scale per row
    assert Q.quantize_int8(w, 32).nbytes == 64 * 256 * 34 // 32  # Q8_0: 34 bytes per 32 weights
    assert Q.quantize_int4(w, 32).nbytes == 64 * 256 * 18 // 32  # Q4_0: 18 bytes per 32 weights
    assert Q.quantize_int4(w, 64).nbytes == 64 * 256 // 2 + 64 * 4 * 2
    assert Q.quantize_int4(w).scales.dtype == np.float16


def test_sizes_that_do_not_divide_are_refused_naming_them():
    w = np.zeros((4, 48), dtype=np.float32)
    with pytest.raises(ValueError, match="in_features 48 is not a multiple of group_size 32"):
        Q.quantize_int4(w, 32)
    with pytest.raises(ValueError, match="group_size 64"):
        Q.quantize(w, "int8", 64)
    with pytest.raises(ValueError, match="even group_size"):
        Q.quantize_int4(np.zeros((4, 45), dtype=np.float32), 3)
    with pytest.raises(ValueError, match="kind must be one of"):
        Q.quantize(w, "int3")
    with pytest.raises(ValueError, match="2-D floating"):
        Q.quantize(np.zeros(32, dtype=np.float32))


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dequantize_keeps_the_dtype_and_an_all_zero_group_stays_zero(kind, dtype):
    w = (rng.standard_normal((4, 64)) * 0.05).astype(dtype)
    w[1] = 0
    qw = Q.quantize(w, kind, 32)
    restored = qw.dequantize()
    assert restored.dtype == np.dtype(dtype) and restored.shape == w.shape
    assert (restored[1] == 0).all()


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_linear_is_x_times_the_dequantized_matrix(backend, kind):
    w = rng.standard_normal((24, 64)).astype(np.float32)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    qw = Q.quantize(on(backend, w), kind, 32)
    xp = get_namespace(backend)
    y = Q.quantized_linear(on(backend, x), qw)
    assert y.shape == (2, 3, 24) and y.dtype == xp.float32
    np.testing.assert_allclose(to_numpy(y), x @ to_numpy(qw.dequantize()).T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expects 64"):
        Q.quantized_linear(on(backend, x[..., :32]), qw)


def test_quantized_linear_in_float16_stays_float16():
    w = rng.standard_normal((8, 32)).astype(np.float32)
    y = Q.quantized_linear(rng.standard_normal((3, 32)).astype(np.float16), Q.quantize_int4(w))
    assert y.dtype == np.float16


def test_quantize_model_refuses_read_only_weights_before_changing_anything(tiny):
    model = minillama.load(tiny)  # float32 stored, float32 computed: the weights are the file's read-only map
    with pytest.raises(ValueError, match="read-only memory map"):
        Q.quantize_model(model, "int8")
    with pytest.raises(ValueError, match="lazy tensor"):
        Q.quantize_model(minillama.load(tiny, lazy=True), "int8")


def test_quantize_model_refuses_a_group_size_before_changing_anything(tmp_path):
    write_random_checkpoint(tmp_path, dtype="float16")  # intermediate_size 172: down_proj rows split into no 32s
    model = minillama.load(tmp_path)
    before = {name: np.array(array) for name, array in model.state_dict().items()}
    with pytest.raises(ValueError, match="in_features 172 is not a multiple of group_size 32"):
        Q.quantize_model(model, "int4", 32)
    for name, array in model.state_dict().items():
        np.testing.assert_array_equal(array, before[name])


def test_quantize_model_writes_dequantized_projections_and_reports_bytes(tmp_path):
    write_random_checkpoint(tmp_path, dict(intermediate_size=192), dtype="float16")  # upcast to float32 at load: writable copies
    model = minillama.load(tmp_path)  # the cpu assembly: q/k/v are views into one fused matrix
    before = {name: np.array(array) for name, array in model.state_dict().items()}
    ids = np.arange(12)[None, :] % model.config.vocab_size
    logits_before = np.array(model(ids).logits)
    same, report = Q.quantize_model(model, "int4", 32)
    assert same is model
    after = model.state_dict()
    for name, original in before.items():
        if name.split(".")[-2] in Q.PROJECTIONS:
            np.testing.assert_array_equal(after[name], Q.quantize_int4(original, 32).dequantize())
        else:  # embedding, norms and the LM head are left alone
            np.testing.assert_array_equal(after[name], original)
    c = model.config
    per_layer = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim * c.hidden_size \
        + c.hidden_size * c.num_attention_heads * c.head_dim + 3 * c.hidden_size * c.intermediate_size
    assert len(report.quantized) == 7 * c.num_hidden_layers
    assert report.quantized_params == c.num_hidden_layers * per_layer
    assert report.quantized_bytes == report.quantized_params * 18 // 32 and report.bits_per_weight == 4.5
    assert report.quantized_params + report.other_params == model.num_parameters()
    assert report.float_bytes(4) == 4 * model.num_parameters()
    assert 0 < report.max_abs_error
    logits_after = np.array(model(ids).logits)
    assert not np.array_equal(logits_after, logits_before) and np.isfinite(logits_after).all()
