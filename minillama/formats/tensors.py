"""Tensors in files, not yet read: what every checkpoint reader returns.

A reader (safetensors, ``.pth``, llama2.c) indexes a file into :class:`StoredTensor` records,
each a memory-mapped view of its bytes in the stored dtype, so a tensor costs no memory until
it is used. :class:`DerivedTensor` presents a tensor made from stored parts (Meta's shards
joined, q/k rows permuted) just as lazily.

NumPy has no bfloat16. A bfloat16 number is the top 16 bits of a float32, so
it is widened exactly by shifting its bits left by 16 (see :func:`bfloat16_to_float32`).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError  # noqa: F401  (re-exported: the error every reader raises)

# dtype name (safetensors' spelling) -> NumPy dtype of the stored bytes (bfloat16 is kept as raw uint16 bits)
STORED_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


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


@dataclass
class CastTensor:
    """A tensor presented in another float dtype, converted when read (``convert`` widens a
    checkpoint of mixed dtypes to one: float16 and bfloat16 widen to float32 exactly)."""

    name: str
    dtype: str  # the dtype name it is presented in: "F32" or "F64"
    shape: tuple
    path: str
    source: object  # the stored or derived tensor, with .numpy(dtype)

    def raw(self) -> np.ndarray:
        return self.source.numpy(STORED_DTYPES[self.dtype])

    def numpy(self, dtype=None) -> np.ndarray:
        return widen(self.raw(), self.dtype, dtype)
