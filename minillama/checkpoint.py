"""Reading weights from disk: safetensors files and Hugging Face checkpoint folders.

A safetensors file is an 8-byte little-endian header length, a JSON header that
maps each tensor name to its dtype, shape and byte range, then the raw bytes.
minillama reads it directly: the data is memory-mapped, so a tensor costs no
memory until it is used, and nothing in the file is ever executed. Every
inconsistency (a header past the end of the file, bad JSON, byte ranges out of
bounds, an unknown dtype) is an error that names the file.

NumPy has no bfloat16. A bfloat16 number is the top 16 bits of a float32, so
it is widened exactly by shifting its bits left by 16 (see :func:`bfloat16_to_float32`).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

# safetensors dtype name -> NumPy dtype of the stored bytes (bfloat16 is kept as raw uint16 bits)
SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file or folder is missing, corrupt or inconsistent."""


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bits (uint16) to float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass
class StoredTensor:
    """One tensor in a file, not yet read: where it is and what it holds."""

    name: str
    dtype: str  # the safetensors dtype name: "F32", "F16", "BF16", ...
    shape: tuple
    path: str
    data: np.ndarray  # a memory-mapped view of its bytes, in the stored dtype

    def raw(self) -> np.ndarray:
        """The stored values as they are on disk (bfloat16 as its uint16 bits)."""
        return self.data

    def numpy(self, dtype=None) -> np.ndarray:
        """The tensor as a NumPy array in ``dtype`` (default: as stored; bfloat16 becomes float32).

        No copy is made when the stored dtype is already the one asked for.
        """
        return widen(self.raw(), self.dtype, dtype)


def release_pages(view: np.ndarray) -> None:
    """Tell the kernel this process no longer needs the file pages under ``view`` (a memory-mapped
    array that was copied): they leave the process's resident memory, the page cache keeps them.
    Best effort: does nothing for arrays that are not file mappings."""
    _advise(view, mmap.MADV_DONTNEED)


def prefetch_pages(view: np.ndarray) -> None:
    """Ask the kernel to read the file pages under ``view`` into the page cache now, in the background.

    For a memory-mapped table read a few rows at a time (the token embedding: one row per
    decoded token), where every row not yet read would otherwise stop generation for a disk
    read. The pages enter the page cache, not this process's resident memory. Best effort,
    as :func:`release_pages`."""
    _advise(view, getattr(mmap, "MADV_WILLNEED", None))


def _advise(view: np.ndarray, advice) -> None:
    """madvise the whole pages of the file mapping under ``view`` (nothing for other arrays)."""
    base = view  # walk to the memmap that owns the mapping (slices of a memmap are memmaps too)
    while isinstance(getattr(base, "base", None), np.ndarray):
        base = base.base
    mapping = getattr(base, "_mmap", None) if isinstance(base, np.memmap) else None
    if advice is None or mapping is None or not hasattr(mapping, "madvise") or not view.size:
        return
    page = mmap.PAGESIZE
    # Where the mapping starts in memory: the memmap's data address minus its offset into the mapping.
    map_start = base.__array_interface__["data"][0] - base.offset % mmap.ALLOCATIONGRANULARITY
    first = view.__array_interface__["data"][0] - map_start
    last = first + view.size * view.itemsize
    start, end = -(-first // page) * page, last // page * page  # whole pages inside the view only
    # In steps of 2 MiB: Linux reads ahead at most read_ahead_kb (often 128 KiB-8 MiB) per WILLNEED call.
    for at in range(start, end, 2 * 2**20):
        try:
            mapping.madvise(advice, at, min(2 * 2**20, end - at))
        except (OSError, ValueError):
            return


def widen(raw: np.ndarray, dtype_name: str, dtype=None) -> np.ndarray:
    """Stored values -> a NumPy array in ``dtype`` (bfloat16 bits are widened to float32 first)."""
    array = bfloat16_to_float32(raw) if dtype_name == "BF16" else raw
    if dtype is not None and array.dtype != np.dtype(dtype):
        array = array.astype(dtype)
    return array


@dataclass
class DerivedTensor:
    """A tensor made on demand from stored parts: shards joined along ``axis``, rows permuted.

    Meta's checkpoints split a tensor over model-parallel shards and keep q/k rows in
    the interleaved rotary layout; this presents the Hugging Face tensor without
    reading anything until it is used.
    """

    name: str
    dtype: str
    shape: tuple
    path: str
    parts: list  # StoredTensor
    axis: int | None = None  # None: one part (norms are replicated in every shard: take the first)
    rotary_heads: int | None = None  # permute rows from interleaved to rotate-half layout, for this many heads

    def raw(self) -> np.ndarray:
        if self.axis is None or len(self.parts) == 1:
            array = self.parts[0].raw()
        else:
            array = np.concatenate([p.raw() for p in self.parts], axis=self.axis)
        if self.rotary_heads:
            array = interleaved_to_rotate_half(array, self.rotary_heads)
        return array

    def numpy(self, dtype=None) -> np.ndarray:
        return widen(self.raw(), self.dtype, dtype)


def interleaved_to_rotate_half(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder the rows of a q/k projection from Meta's interleaved rotary pairs to HF's rotate-half.

    Within each head, rows (0, 1), (2, 3), ... are pairs; rotate-half wants pair i at
    rows i and i + head_dim/2. weight: (n_heads * head_dim, in_features).
    """
    rows, cols = weight.shape
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rotate_half_to_interleaved(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of :func:`interleaved_to_rotate_half`."""
    rows, cols = weight.shape
    half = rows // n_heads // 2
    return weight.reshape(n_heads, 2, half, cols).swapaxes(1, 2).reshape(rows, cols)


def read_safetensors(path: str | os.PathLike) -> dict[str, StoredTensor]:
    """Index a .safetensors file: name -> StoredTensor, each backed by one shared memory map."""
    path = os.fspath(path)
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: too short to be a safetensors file ({file_size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(file_size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(f"{path}: header length {header_len} runs past the end of the file ({file_size} bytes)")
            header_bytes = f.read(header_len)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")

    data_start = 8 + header_len
    data_size = file_size - data_start
    mapped = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_size,)) if data_size else None
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _stored_tensor(path, name, info, mapped, data_size)
    return tensors


def _stored_tensor(path, name, info, mapped, data_size) -> StoredTensor:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry: {info!r}")
    dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype_name not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype_name!r}")
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)):
        raise CheckpointError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    item = np.dtype(SAFETENSORS_DTYPES[dtype_name])
    if not 0 <= begin <= end <= data_size:
        raise CheckpointError(f"{path}: tensor {name!r} bytes [{begin}, {end}) lie outside the data ({data_size} bytes)")
    if end - begin != math.prod(shape) * item.itemsize:
        raise CheckpointError(f"{path}: tensor {name!r} has {end - begin} bytes, but shape {shape} of {dtype_name} needs "
                              f"{math.prod(shape) * item.itemsize}")
    if end == begin:
        data = np.zeros(shape, dtype=item)
    else:
        data = mapped[begin:end].view(item).reshape(shape)
    return StoredTensor(name, dtype_name, tuple(shape), path, data)


def read_hf_checkpoint(folder: str | os.PathLike) -> dict[str, StoredTensor]:
    """Index every tensor of a Hugging Face checkpoint folder.

    Reads ``model.safetensors``, or the shards listed in ``model.safetensors.index.json``.
    Nothing is loaded into memory: each tensor is a view of a memory-mapped file.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    index_path = os.path.join(folder, "model.safetensors.index.json")
    single_path = os.path.join(folder, "model.safetensors")
    if os.path.exists(index_path):
        return _read_sharded(folder, index_path)
    if os.path.exists(single_path):
        return read_safetensors(single_path)
    pickles = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json") if os.path.exists(os.path.join(folder, n))]
    if pickles:
        raise CheckpointError(f"{folder}: has only PyTorch pickle weights ({pickles[0]}); minillama reads safetensors, "
                              "which cannot run code when loaded. Re-save the model with safe_serialization=True.")
    raise CheckpointError(f"{folder}: no weights found (expected model.safetensors or model.safetensors.index.json)")


def _read_sharded(folder: str, index_path: str) -> dict[str, StoredTensor]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{index_path}: not a valid safetensors index ({error!r})") from None
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(folder, shard)
        if not os.path.exists(shard_path):
            raise CheckpointError(f"{index_path}: names shard {shard!r}, which is missing from {folder}")
        tensors.update(read_safetensors(shard_path))
    for name, shard in weight_map.items():
        if name not in tensors:
            raise CheckpointError(f"{index_path}: says tensor {name!r} is in {shard!r}, but it is not there")
    return tensors
