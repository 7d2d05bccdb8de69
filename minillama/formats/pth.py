"""Reading PyTorch ``.pth`` files without torch, and without running any code from them.

A ``torch.save`` file is a zip archive: ``<name>/data.pkl`` is a pickle that
describes each tensor (its storage, offset, shape and strides), and
``<name>/data/<key>`` holds each storage's raw bytes, uncompressed.

Unpickling normally imports and calls whatever functions the pickle names, so a
malicious file can run ``os.system``. Here the archive is read by ``zip_reader.py``
(which refuses encrypted, oddly compressed, inconsistent or bomb-like members) and the
pickle by ``pickle_reader.py`` (its own opcode loop, which knows only what a state dict
needs and calls nothing). What it describes is then checked, tensor by tensor, before
any array is made:

* each value is a tensor record: a storage, an offset, a shape and strides, all
  non-negative Python ints (a bool is not an int here), whatever the pickle claims;
* the tensor lies inside its storage, and its elements do not overlap: contiguous,
  transposed and sliced tensors are read, stride-0 ("expanded") views are refused;
* all tensors together declare at most ``DECLARED_LIMIT`` times the file's size, so a
  small file cannot declare a 7B model through views that share one storage.

Storages become memory-mapped NumPy arrays; tensors sharing a storage (tied weights)
share its map.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from ..errors import CheckpointError
from .pickle_reader import STORAGE_DTYPES, StorageRecord, TensorRecord, load_pickle  # noqa: F401 (re-exported)
from .tensors import StoredTensor
from .zip_reader import PICKLE_LIMIT, ZipReader

DECLARED_LIMIT = 4  # all tensors' bytes together, in multiples of the file size (tied weights count twice)
MAX_DIMS = 16
NAME_LIMIT = 1024  # characters in a tensor name (Llama's longest: 40)


def read_pth(path: str | os.PathLike) -> dict[str, StoredTensor]:
    """Read a ``torch.save`` state dict: name -> StoredTensor backed by a memory map of the file.

    Entries that are plain numbers, strings or None are skipped; anything else that is not a
    tensor is refused with a CheckpointError naming the file and the entry.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"weights file not found: {path}")
    with ZipReader(path) as archive:
        prefix, state = read_state(archive)
        maps, tensors, declared = {}, {}, 0
        for name, value in state.items():
            if type(name) is not str or len(name) > NAME_LIMIT:
                raise CheckpointError(f"{path}: a state-dict key is {describe(name)}, not a tensor name")
            if value is None or type(value) in (int, float, bool, str):
                continue  # not a tensor; Meta checkpoints hold only tensors
            if type(value) is not TensorRecord:
                raise CheckpointError(f"{path}: tensor {name!r} is a {type(value).__name__}, not a tensor")
            storage, offset, size, stride = check_record(path, name, value)
            flat = storage_map(archive, maps, storage, name, prefix)
            data = tensor_view(path, name, flat, offset, size, stride)
            declared += data.size * data.itemsize
            tensors[name] = StoredTensor(name, storage.dtype_name, size, path, data)
        file_size = archive.size
    if declared > DECLARED_LIMIT * max(file_size, 1):
        raise CheckpointError(f"{path}: its tensors declare {declared} bytes, more than {DECLARED_LIMIT} times the "
                              f"file's {file_size} bytes (many views of the same storage); refused")
    return tensors


def read_state(archive: ZipReader) -> tuple[str, dict]:
    """The archive's folder prefix and the unpickled state dict of its ``data.pkl``."""
    path = archive.path
    pickles = [n for n in archive.members if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = archive.members.get(f"{prefix}byteorder")
    if byteorder is not None and archive.read(byteorder.name, 16) != b"little":
        raise CheckpointError(f"{path}: the tensors are stored big-endian; only little-endian files are read")
    state = load_pickle(archive.read(pickles[0], PICKLE_LIMIT), path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return prefix, state


def check_record(path: str, name: str, record: TensorRecord) -> tuple[StorageRecord, int, tuple, tuple]:
    """(storage, offset, size, stride) of a ``_rebuild_tensor_v2`` call, each of the type torch writes."""
    where = f"{path}: tensor {name!r}"
    args = record.args
    if len(args) not in (6, 7):
        raise CheckpointError(f"{where}: _rebuild_tensor_v2 takes 6 or 7 arguments, the pickle gives {len(args)}")
    storage, offset, size, stride, requires_grad, hooks = args[:6]
    if type(storage) is not StorageRecord:
        raise CheckpointError(f"{where}: its storage is a {type(storage).__name__}, not a storage")
    if not is_count(offset):
        raise CheckpointError(f"{where}: its storage offset must be a non-negative int, got {describe(offset)}")
    for field, value in (("size", size), ("stride", stride)):
        if type(value) is not tuple or not all(is_count(n) for n in value):
            raise CheckpointError(f"{where}: its {field} must be a tuple of non-negative ints, got {describe(value)}")
    if len(size) != len(stride):
        raise CheckpointError(f"{where}: {len(size)} sizes but {len(stride)} strides")
    if len(size) > MAX_DIMS:
        raise CheckpointError(f"{where}: {len(size)} dimensions (at most {MAX_DIMS} are read)")
    if type(requires_grad) is not bool:
        raise CheckpointError(f"{where}: requires_grad must be a bool, got {describe(requires_grad)}")
    if type(hooks) is not OrderedDict or hooks:
        raise CheckpointError(f"{where}: backward hooks must be an empty OrderedDict, got {describe(hooks)}")
    if len(args) == 7 and type(args[6]) not in (dict, OrderedDict, type(None)):
        raise CheckpointError(f"{where}: its metadata must be a dict, got {describe(args[6])}")
    return storage, offset, size, stride


def is_count(value) -> bool:
    return type(value) is int and value >= 0  # type(True) is bool: booleans are not sizes


def describe(value) -> str:
    """A short description of a value from the file (never the repr of a whole nested structure)."""
    if type(value) in (int, bool):
        return repr(value) if abs(value) < 10**12 else f"an int of {value.bit_length()} bits"
    if type(value) is tuple and all(type(v) is int for v in value) and len(str(value)) < 100:
        return repr(value)
    if type(value) is str:
        return repr(value) if len(value) <= 60 else f"a str of {len(value)} characters"
    if type(value) is tuple:
        return f"a tuple of {', '.join(type(v).__name__ for v in value[:MAX_DIMS + 1])}"
    return f"a {type(value).__name__}"


def storage_map(archive: ZipReader, maps: dict, storage: StorageRecord, name: str, prefix: str) -> np.ndarray:
    """The memory map of a storage's values, made once per storage and shared by every tensor using it."""
    where = f"{archive.path}: storage {storage.key} of tensor {name!r}"
    if storage.key in maps:
        first, flat = maps[storage.key]
        if (first.kind, first.numel) != (storage.kind, storage.numel):
            raise CheckpointError(f"{where} is declared as {storage.kind} of {storage.numel} here but as "
                                  f"{first.kind} of {first.numel} elsewhere")
        return flat
    member = f"{prefix}data/{storage.key}"
    if member not in archive.members:
        raise CheckpointError(f"{where} is missing from the archive")
    flat = archive.memmap(member, storage.np_dtype, storage.numel, where)
    maps[storage.key] = (storage, flat)
    return flat


def tensor_view(path: str, name: str, flat: np.ndarray, offset: int, size: tuple, stride: tuple) -> np.ndarray:
    """A read-only view of ``flat`` with this offset, shape and strides, checked to lie inside it without overlap."""
    where = f"{path}: tensor {name!r}"
    if offset > flat.shape[0]:
        raise CheckpointError(f"{where}: its offset ({describe(offset)}) is past the end of its storage "
                              f"of {flat.shape[0]} elements")
    if 0 in size:  # an empty tensor: no elements to read
        if max(size) >= 2**48:
            raise CheckpointError(f"{where}: an empty tensor of shape {describe(size)} is refused")
        empty = np.empty(size, dtype=flat.dtype)
        empty.flags.writeable = False
        return empty
    reach = 0  # the furthest element reached by the dimensions taken so far, smallest stride first
    for step, count in sorted((s, n) for n, s in zip(size, stride) if n > 1):
        if step <= reach:
            raise CheckpointError(f"{where}: its strides {describe(stride)} make elements overlap (a stride-0 or expanded "
                                  f"view); only tensors whose elements are distinct are read")
        reach += (count - 1) * step
    if offset + reach + 1 > flat.shape[0]:
        raise CheckpointError(f"{where}: shape {describe(size)} with strides {describe(stride)} from offset "
                              f"{describe(offset)} reaches past "
                              f"the end of its storage of {flat.shape[0]} elements")
    strides = [s * flat.itemsize if n > 1 else 0 for n, s in zip(size, stride)]
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=strides, writeable=False)
