"""The safetensors format: read (memory-mapped, never executing anything) and written tensor by tensor.

A safetensors file is an 8-byte little-endian header length, a JSON header that
maps each tensor name to its dtype, shape and byte range, then the raw bytes.
minillama reads it directly: the data is memory-mapped, so a tensor costs no
memory until it is used.

The reader holds a file to the format's rules and refuses anything else with a
one-line :class:`CheckpointError` naming the file (and the tensor): a header length
past the end of the file or over 100 MB, a header that is not one JSON object, a
name given twice, ``__metadata__`` that is not text to text, an unknown dtype, a
shape that is not a list of non-negative integers, byte ranges that disagree with
the shape, overlap, leave gaps or do not cover the data exactly (no trailing bytes).
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from ..errors import CheckpointError
from ..files import check_regular_file, open_regular_file
from .tensors import STORED_DTYPES, StoredTensor

MAX_HEADER_BYTES = 100_000_000  # the format's own limit (safetensors' MAX_HEADER_SIZE)
ENTRY_KEYS = ("dtype", "shape", "data_offsets")


def read_safetensors(path: str | os.PathLike) -> dict[str, StoredTensor]:
    """Index a .safetensors file: name -> StoredTensor, each backed by one shared memory map."""
    path = os.fspath(path)
    try:
        check_regular_file(path, CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    with open_regular_file(path, CheckpointError) as f:  # the map is made from this handle: no second open
        header, data_start, file_size = _read_header(path, f)
        entries = {name: _checked_entry(path, name, info) for name, info in header.items() if name != "__metadata__"}
        _check_metadata(path, header.get("__metadata__"))
        data_size = file_size - data_start
        _check_layout(path, entries, data_size)
        mapped = np.memmap(f, dtype=np.uint8, mode="r", offset=data_start, shape=(data_size,)) if data_size else None
    tensors = {}
    for name, (dtype_name, shape, (begin, end)) in entries.items():
        item = np.dtype(STORED_DTYPES[dtype_name])
        data = np.zeros(shape, dtype=item) if end == begin else mapped[begin:end].view(item).reshape(shape)
        tensors[name] = StoredTensor(name, dtype_name, tuple(shape), path, data)
    return tensors


def _read_header(path: str, f) -> tuple[dict, int, int]:
    """(header object, where the data starts, file size), the header read within the format's limits."""
    file_size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    if len(prefix) < 8:
        raise CheckpointError(f"{path}: too short to be a safetensors file ({file_size} bytes)")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: header length {header_len} is over the format's limit of {MAX_HEADER_BYTES} bytes")
    if header_len > file_size - 8:
        raise CheckpointError(f"{path}: header length {header_len} runs past the end of the file ({file_size} bytes)")
    header_bytes = f.read(header_len)
    if len(header_bytes) < header_len:
        raise CheckpointError(f"{path}: the file shrank while its header was read")
    try:
        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: header is not valid JSON ({_one_line(error)})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: header is not valid JSON (nested too deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    return header, 8 + header_len, file_size


def _unique_keys(pairs: list) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the name {key!r} appears twice")
        seen[key] = value
    return seen


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _one_line(error) -> str:
    return " ".join(str(error).split())


def _check_metadata(path: str, metadata) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must map text to text, got {_short(metadata)}")


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _checked_entry(path: str, name: str, info) -> tuple[str, list, tuple]:
    """(dtype name, shape, (begin, end)) of one header entry, each field checked."""
    if not isinstance(info, dict) or any(key not in info for key in ENTRY_KEYS):
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry (needs dtype, shape and "
                              f"data_offsets): {_short(info)}")
    dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in STORED_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {_short(dtype_name)} "
                              f"(minillama reads {', '.join(STORED_DTYPES)})")
    if not (isinstance(shape, list) and all(_is_count(n) for n in shape)):
        raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {_short(shape)} "
                              "(expected a list of non-negative integers)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)
            and offsets[0] <= offsets[1]):
        raise CheckpointError(f"{path}: tensor {name!r} has invalid data_offsets {_short(offsets)} "
                              "(expected [begin, end] with 0 <= begin <= end)")
    needed = math.prod(shape) * np.dtype(STORED_DTYPES[dtype_name]).itemsize
    if offsets[1] - offsets[0] != needed:
        raise CheckpointError(f"{path}: tensor {name!r} has {offsets[1] - offsets[0]} bytes, but shape {shape} "
                              f"of {dtype_name} needs {needed}")
    return dtype_name, shape, tuple(offsets)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(path: str, entries: dict, data_size: int) -> None:
    """The byte ranges, in order, must follow one another and cover the data section exactly."""
    at, previous = 0, None
    for name, (_, _, (begin, end)) in sorted(entries.items(), key=lambda item: item[1][2]):
        if end > data_size:
            raise CheckpointError(f"{path}: tensor {name!r} bytes [{begin}, {end}) lie outside the data ({data_size} bytes)")
        if begin < at:
            raise CheckpointError(f"{path}: tensor {name!r} bytes [{begin}, {end}) overlap those of tensor {previous!r}")
        if begin > at:
            raise CheckpointError(f"{path}: tensor {name!r} starts at byte {begin} of the data, leaving a gap "
                                  f"after byte {at}")
        at, previous = end, name
    if at != data_size:
        raise CheckpointError(f"{path}: {data_size - at} trailing bytes after the last tensor "
                              f"(the tensors cover {at} of {data_size} data bytes)")


def write_safetensors(path: str, names: list[str], tensors: dict, progress=None) -> None:
    """Write ``names`` from ``tensors`` (lazy, with .raw()) to one safetensors file, tensor by tensor."""
    header, offset = {}, 0
    for name in names:
        t = tensors[name]
        size = nbytes(t)
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # align the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name in names:
            array = np.ascontiguousarray(tensors[name].raw())
            if list(array.shape) != header[name]["shape"]:
                raise ValueError(f"tensor {name!r} produced shape {array.shape}, expected {header[name]['shape']}")
            f.write(memoryview(array).cast("B"))
            if progress is not None:
                progress(name)


def nbytes(tensor) -> int:
    """Bytes a stored tensor (anything with ``.shape`` and a dtype name ``.dtype``) takes."""
    return math.prod(tensor.shape) * np.dtype(STORED_DTYPES[tensor.dtype]).itemsize
