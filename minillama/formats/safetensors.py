"""The safetensors format: read (memory-mapped, never executing anything) and written tensor by tensor.

A safetensors file is an 8-byte little-endian header length, a JSON header that
maps each tensor name to its dtype, shape and byte range, then the raw bytes.
minillama reads it directly: the data is memory-mapped, so a tensor costs no
memory until it is used. Every inconsistency (a header past the end of the file,
bad JSON, byte ranges out of bounds, an unknown dtype) is an error that names the file.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from ..errors import CheckpointError
from .tensors import STORED_DTYPES, StoredTensor

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit


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
    if dtype_name not in STORED_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype_name!r}")
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)):
        raise CheckpointError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    item = np.dtype(STORED_DTYPES[dtype_name])
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
