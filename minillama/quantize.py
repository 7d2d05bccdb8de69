"""Weight-only quantization, as llama.cpp does it: fewer bits per weight, one float scale per group.

A Llama's matrices hold small numbers spread roughly like a bell curve around zero. Instead of
16 or 32 bits per weight we store a small integer code ``q`` per weight and one float ``scale``
per *group* of weights, and rebuild ``w ≈ q * scale`` when the weight is needed. Every scale is
chosen so the group's largest weight (by magnitude) lands on the largest code, and every other
weight is rounded to the nearest code: *round to nearest* (RTN), no calibration data needed.

The two schemes here are llama.cpp's simplest (ggml-quants.c, ``quantize_row_q8_0_ref`` and
``quantize_row_q4_0_ref``); groups run along the input dimension (a row of an (out, in) matrix):

* **int8** (Q8_0 with groups of 32; with ``group_size=None`` one scale per output row,
  "per-channel"): ``scale = max|w| / 127``, ``q = round(w / scale)`` in -127 .. 127 (int8),
  rounding halves away from zero (C's ``roundf``). Dequantized: ``q * scale``.
  A Q8_0 block is a float16 scale and 32 int8 codes: 34 bytes per 32 weights, 8.5 bits each.
* **int4** (Q4_0, groups of 32 or 64): ``m`` is the group's weight of largest magnitude, *with
  its sign*; ``d = m / -8``, so that ``m`` itself gets the code 0 (-8 after the shift) and
  nothing is wasted on the side it is not; ``q = clip(floor(w / d + 8.5), 0, 15)`` (round half
  up, then shift by 8). Dequantized: ``(q - 8) * d``. The other side reaches only +7 steps, so a
  weight near ``-m`` is clipped to 7 and can be off by up to one step ``|d|`` instead of half.
  Two codes share a byte (the group's first half in the low nibbles, its second half in the high
  ones, as Q4_0 does): a Q4_0 block is a float16 scale and 16 bytes, 18 bytes per 32 weights,
  4.5 bits each.

Two small differences from llama.cpp, both to keep the lesson exact: the scale is rounded to
float16 *before* dividing by it (llama.cpp divides by the float32 scale and stores its float16
rounding), so the codes fit the scale that is stored and ``|w - dequantized w| <= |scale| / 2``
holds exactly (``|d|`` for int4's clipped weights); and when a group's largest and smallest
weights are equal and opposite, int4 takes the positive one as ``m`` (llama.cpp: whichever
comes first). On a backend without float16 (``array_api_strict``) the scales stay float32.

:func:`quantized_linear` multiplies by a quantized matrix, and :func:`quantize_model` replaces
a model's projection matrices by their quantized-then-dequantized values, reporting the bytes
the quantized form takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backend import namespace_of
from .formats.tensors import StoredTensor

KINDS = ("int8", "int4")
INT8_MAX = 127  # int8 codes are -127 .. 127 (symmetric: -128 is never used)
INT4_OFFSET = 8  # int4 codes 0 .. 15 stand for -8 .. 7 steps
INT4_MAX = 15
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized (out_features, in_features) matrix: codes, one scale per group, and how to read them."""

    q: object  # int8: (out, in) int8 codes; int4: (out, in // 2) uint8, two 4-bit codes per byte
    scales: object  # (out, in // group_size) float16 (float32 on a backend without float16)
    shape: tuple  # (out_features, in_features) of the original matrix
    kind: str  # "int8" or "int4"
    group_size: int  # weights per scale along a row (in_features: one scale per row)
    dtype: object  # the original matrix's dtype, which dequantize() gives back

    @property
    def nbytes(self) -> int:
        """Bytes as stored: the codes (int4: half a byte each, packed) plus the scales."""
        return _nbytes(self.q) + _nbytes(self.scales)

    def codes(self):
        """The integer codes, one per weight: (out, in); int8 in -127 .. 127, int4 uint8 in 0 .. 15."""
        if self.kind == "int8":
            return self.q
        return unpack_nibbles(self.q, self.group_size)

    def dequantize(self):
        """The matrix the codes stand for, (out, in), in the original dtype (computed in float32)."""
        xp = namespace_of(self.q)
        out, in_features = self.shape
        codes = xp.astype(self.codes(), xp.float32)  # (out, in)
        if self.kind == "int4":
            codes = codes - INT4_OFFSET  # 0 .. 15 -> -8 .. 7
        groups = xp.reshape(codes, (out, in_features // self.group_size, self.group_size))
        scales = xp.astype(self.scales, xp.float32)[:, :, None]  # (out, groups, 1)
        return xp.astype(xp.reshape(groups * scales, (out, in_features)), self.dtype)


# ---- quantizing one matrix -----------------------------------------------------------------------


def quantize(weight, kind: str = "int8", group_size: int | None = None) -> QuantizedWeight:
    """Quantize an (out, in) matrix: ``kind`` "int8" (per row when group_size is None) or "int4" (default groups of 32)."""
    if kind == "int8":
        return quantize_int8(weight, group_size)
    if kind == "int4":
        return quantize_int4(weight, 32 if group_size is None else group_size)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def quantize_int8(weight, group_size: int | None = None) -> QuantizedWeight:
    """int8 codes with ``scale = max|group| / 127``: per output row (group_size None) or Q8_0 groups.

    weight: (out, in) floating -> QuantizedWeight with q (out, in) int8, scales (out, groups).
    """
    xp = namespace_of(weight)
    groups, group_size = _groups(weight, group_size, "int8")  # (out, n_groups, group_size) float32
    largest = xp.max(xp.abs(groups), axis=-1, keepdims=True)  # (out, n_groups, 1)
    scale, stored = _stored_scale(largest / INT8_MAX)
    codes = xp.clip(_round_half_away(groups / _nonzero(scale)), -INT8_MAX, INT8_MAX)
    q = xp.reshape(xp.astype(codes, xp.int8), weight.shape)  # (out, in)
    return QuantizedWeight(q, stored, tuple(weight.shape), "int8", group_size, weight.dtype)


def quantize_int4(weight, group_size: int = 32) -> QuantizedWeight:
    """Q4_0: ``d = m / -8`` (m the group's largest-magnitude weight), codes ``clip(floor(w/d + 8.5), 0, 15)``.

    weight: (out, in) floating -> QuantizedWeight with q (out, in // 2) uint8 (two codes a byte),
    scales (out, in // group_size).
    """
    xp = namespace_of(weight)
    groups, group_size = _groups(weight, group_size, "int4")  # (out, n_groups, group_size) float32
    top = xp.max(groups, axis=-1, keepdims=True)  # (out, n_groups, 1)
    bottom = xp.min(groups, axis=-1, keepdims=True)
    signed_largest = xp.where(top >= -bottom, top, bottom)  # the weight of largest magnitude, with its sign
    scale, stored = _stored_scale(signed_largest / -INT4_OFFSET)
    steps = xp.floor(groups / _nonzero(scale) + (INT4_OFFSET + 0.5))  # round half up, shifted by 8
    codes = xp.astype(xp.clip(steps, 0, INT4_MAX), xp.uint8)  # (out, n_groups, group_size)
    q = xp.reshape(pack_nibbles(codes), (weight.shape[0], weight.shape[1] // 2))  # (out, in // 2)
    return QuantizedWeight(q, stored, tuple(weight.shape), "int4", group_size, weight.dtype)


def pack_nibbles(codes):
    """Two 4-bit codes per byte, as Q4_0: in each group, code j in the low nibble, code j + half in the high one.

    codes: (..., group_size) uint8 in 0 .. 15 -> (..., group_size // 2) uint8
    """
    xp = namespace_of(codes)
    half = codes.shape[-1] // 2
    return xp.bitwise_or(codes[..., :half], xp.bitwise_left_shift(codes[..., half:], 4))


def unpack_nibbles(packed, group_size: int):
    """The inverse of :func:`pack_nibbles` over a whole matrix: (out, in // 2) uint8 -> (out, in) codes 0 .. 15."""
    xp = namespace_of(packed)
    out, half_row = packed.shape
    bytes_ = xp.reshape(packed, (out, 2 * half_row // group_size, group_size // 2))  # (out, n_groups, half)
    low, high = xp.bitwise_and(bytes_, 15), xp.bitwise_right_shift(bytes_, 4)
    return xp.reshape(xp.concat([low, high], axis=-1), (out, 2 * half_row))  # (out, in)


def _groups(weight, group_size: int | None, kind: str) -> tuple:
    """The (out, in) matrix as (out, in // group_size, group_size) float32 groups, and the group size used."""
    xp = namespace_of(weight)
    group_size = _checked_group_size(weight, group_size, kind)
    out, in_features = weight.shape
    return xp.reshape(xp.astype(weight, xp.float32), (out, in_features // group_size, group_size)), group_size


def _checked_group_size(weight, group_size: int | None, kind: str) -> int:
    """The group size to use for ``weight`` (None: the whole row), or a ValueError naming what does not fit."""
    xp = namespace_of(weight)
    if weight.ndim != 2 or not xp.isdtype(weight.dtype, "real floating"):
        raise ValueError(f"quantize a 2-D floating matrix (out_features, in_features), got shape "
                         f"{tuple(weight.shape)} of {weight.dtype}")
    in_features = weight.shape[1]
    group_size = in_features if group_size is None else group_size
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if kind == "int4" and group_size % 2:
        raise ValueError(f"int4 needs an even group_size (two codes share a byte), got {group_size}")
    if in_features % group_size:
        raise ValueError(f"{kind}: in_features {in_features} is not a multiple of group_size {group_size} "
                         f"(the matrix has shape {tuple(weight.shape)})")
    return group_size


def _stored_scale(scale) -> tuple:
    """(the scale as float32 after rounding to its stored dtype, the stored scales (out, n_groups)).

    Stored as float16, as llama.cpp does, where the backend has float16; float32 otherwise.
    """
    xp = namespace_of(scale)
    stored = xp.astype(scale[:, :, 0], getattr(xp, "float16", xp.float32))  # (out, n_groups)
    return xp.astype(stored, xp.float32)[:, :, None], stored


def _nonzero(scale):
    """The scale with 1 where it is 0 (an all-zero group: its weights divide to 0 and get the zero code)."""
    xp = namespace_of(scale)
    return xp.where(scale == 0, xp.ones_like(scale), scale)


def _round_half_away(values):
    """Round to the nearest integer, halves away from zero (C's roundf; xp.round rounds halves to even)."""
    xp = namespace_of(values)
    whole = xp.trunc(values)
    halves = xp.abs(values - whole) == 0.5
    return xp.where(halves, whole + xp.sign(values), xp.round(values))


def _nbytes(array) -> int:
    """Bytes an array's elements take (the Array API has no .nbytes)."""
    xp = namespace_of(array)
    info = xp.finfo(array.dtype) if xp.isdtype(array.dtype, "real floating") else xp.iinfo(array.dtype)
    count = 1
    for n in array.shape:
        count *= n
    return count * info.bits // 8


# ---- using quantized weights ---------------------------------------------------------------------


def quantized_linear(x, qweight: QuantizedWeight):
    """``x @ W.T`` for a quantized W: dequantize the whole matrix to x's dtype, then one matmul.

    The simplest "dequantizing matmul": the result is exactly ``x @ dequantize(W).T``. llama.cpp
    instead never rebuilds W: it also quantizes x (to Q8_0), multiplies integer codes block by
    block and applies the two scales to each block's sum, which streams 4.5 bits per weight from
    memory instead of 32; that speed is the point of quantized inference, the numbers differ by
    x's rounding only. x: (..., in) -> (..., out)
    """
    xp = namespace_of(x)
    if x.shape[-1] != qweight.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features, the quantized matrix {qweight.shape} expects {qweight.shape[1]}")
    weight = xp.astype(qweight.dequantize(), x.dtype)  # (out, in)
    return x @ xp.matrix_transpose(weight)


# ---- a whole model -------------------------------------------------------------------------------


@dataclass
class QuantizationReport:
    """What :func:`quantize_model` did, and the bytes before and after."""

    kind: str
    group_size: int | None  # None: one scale per row
    quantized: list  # Hugging Face names of the quantized matrices
    quantized_params: int  # weights in those matrices
    quantized_bytes: int  # their bytes as stored quantized (codes + float16 scales)
    other_params: int  # weights left as they were: embedding, norms, (lm_head unless quantized)
    max_abs_error: float  # the largest |w - dequantized w| over every quantized weight

    def model_bytes(self, other_bytes_per_param: int = 2) -> int:
        """Bytes of the whole quantized model, the weights left unquantized at ``other_bytes_per_param`` (float16: 2)."""
        return self.quantized_bytes + self.other_params * other_bytes_per_param

    def float_bytes(self, bytes_per_param: int) -> int:
        """Bytes of the whole model unquantized, ``bytes_per_param`` per weight (float32: 4, float16: 2)."""
        return (self.quantized_params + self.other_params) * bytes_per_param

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per quantized weight (8.5 for Q8_0, 4.5 for Q4_0 with groups of 32)."""
        return 8 * self.quantized_bytes / self.quantized_params


def quantize_model(model, kind: str = "int8", group_size: int | None = None, lm_head: bool = False):
    """Quantize a model's projection matrices and write their dequantized values back: (model, report).

    The seven projections of every layer (q/k/v/o, gate/up/down) are quantized; the embedding and
    the norms are not (a lookup table and a few vectors: quantizing them saves little). The LM
    head is left as it is unless ``lm_head=True``: its errors go straight into the logits, and
    llama.cpp's quantize tool gives it a more precise type than the rest for its low-bit formats.
    The model is changed **in place** (the same object is returned; load a second copy to compare)
    and then runs the reference forward unchanged, on weights that carry exactly the quantization
    error. The report counts the bytes of the quantized form. group_size: None gives int8 one scale
    per row and int4 groups of 32. Needs an eager model whose arrays are writable (not ``lazy``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "int4" and group_size is None:
        group_size = 32
    params = model.state_dict()
    names = [name for name in params if _is_quantized(name, lm_head)]
    for name in names:  # every check before the first weight changes: never a half-quantized model
        _check_writable(name, params[name])
        _checked_group_size(params[name], group_size, kind)
    report = QuantizationReport(kind, group_size, names, 0, 0, 0, 0.0)
    for name, array in params.items():
        if name not in names:
            report.other_params += _count(array)
            continue
        qweight = quantize(array, kind, group_size)
        restored = qweight.dequantize()  # (out, in), the model's dtype
        xp = namespace_of(array)
        report.max_abs_error = max(report.max_abs_error, float(xp.max(xp.abs(restored - array))))
        model.load_state_dict({name: restored}, strict=False)
        report.quantized_params += _count(array)
        report.quantized_bytes += qweight.nbytes
    return model, report


def _is_quantized(name: str, lm_head: bool) -> bool:
    """Whether the parameter called ``name`` (a Hugging Face name) is one quantize_model quantizes."""
    parts = name.split(".")
    return (len(parts) >= 2 and parts[-2] in PROJECTIONS) or (lm_head and name == "lm_head.weight")


def _check_writable(name: str, array) -> None:
    """Refuse, before anything changes, a weight that cannot be overwritten in place."""
    if isinstance(array, StoredTensor):
        raise ValueError(f"quantize_model needs an eager model: {name} is a lazy tensor (load with lazy=False)")
    if not getattr(getattr(array, "flags", None), "writeable", True):
        raise ValueError(f"quantize_model: {name} is a read-only memory map of the checkpoint file (a float32 "
                         "checkpoint loaded in float32); copy the weights first, or load a float16 checkpoint")


def _count(array) -> int:
    count = 1
    for n in array.shape:
        count *= n
    return count
