"""Reading PyTorch ``.pth`` files without torch, and without running any code from them.

A ``torch.save`` file is a zip archive: ``<name>/data.pkl`` is a pickle that
describes each tensor (its storage, offset, shape and strides), and
``<name>/data/<key>`` holds each storage's raw bytes, uncompressed.

Unpickling normally imports and calls whatever functions the pickle names, so a
malicious file can run ``os.system``. :class:`RestrictedUnpickler` instead
accepts exactly the names needed to rebuild tensors (``_rebuild_tensor_v2``,
the typed storage classes, ``OrderedDict``) and refuses everything else before
anything is called. Storages become memory-mapped NumPy arrays.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile

import numpy as np

from ..errors import CheckpointError
from .tensors import StoredTensor

# torch storage class -> (safetensors-style dtype name, NumPy dtype of the stored bytes)
STORAGE_DTYPES = {
    "FloatStorage": ("F32", np.float32), "HalfStorage": ("F16", np.float16), "BFloat16Storage": ("BF16", np.uint16),
    "DoubleStorage": ("F64", np.float64), "LongStorage": ("I64", np.int64), "IntStorage": ("I32", np.int32),
    "ShortStorage": ("I16", np.int16), "CharStorage": ("I8", np.int8), "ByteStorage": ("U8", np.uint8),
    "BoolStorage": ("BOOL", np.bool_),
}


class _StorageType:
    def __init__(self, name):
        self.name = name


class _Storage:
    """A storage named by the pickle: its dtype and where its bytes are in the archive."""

    def __init__(self, kind: _StorageType, key: str, numel: int):
        self.dtype_name, self.np_dtype = STORAGE_DTYPES[kind.name]
        self.key, self.numel = key, numel


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return ("tensor", storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that knows only how to describe tensors; any other global is refused."""

    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(f"{self.path}: refusing to load: the pickle names {module}.{name}, which is not "
                              "needed to rebuild tensors (a .pth file can run code; this one might try)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.path}: unexpected persistent id {pid!r}")
        _, kind, key, _location, numel = pid
        return _Storage(kind, str(key), int(numel))


def _member_offset(path: str, info: zipfile.ZipInfo) -> int:
    """Where a stored (uncompressed) zip member's bytes begin in the file."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: corrupt zip entry for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def read_pth(path: str | os.PathLike) -> dict[str, StoredTensor]:
    """Read a ``torch.save`` state dict: name -> StoredTensor backed by a memory map of the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"weights file not found: {path}")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint ({error}); old non-zip .pth files are not supported") from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        pickles = [n for n in members if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as f:
            try:
                state = RestrictedUnpickler(f, path).load()
            except CheckpointError:
                raise
            except Exception as error:
                raise CheckpointError(f"{path}: cannot read the pickle ({error!r})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")

    file_size = os.path.getsize(path)
    maps = {}
    tensors = {}
    for name, value in state.items():
        if not (isinstance(value, tuple) and len(value) == 5 and value[0] == "tensor"):
            continue  # not a tensor (e.g. a number); Meta checkpoints hold only tensors
        _, storage, offset, size, stride = value
        if storage.key not in maps:
            info = members.get(f"{prefix}data/{storage.key}")
            if info is None or info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path}: storage {storage.key} of tensor {name!r} is missing or compressed")
            start = _member_offset(path, info)
            itemsize = np.dtype(storage.np_dtype).itemsize
            if info.file_size != storage.numel * itemsize or start + info.file_size > file_size:
                raise CheckpointError(f"{path}: storage {storage.key} of tensor {name!r} is truncated")
            maps[storage.key] = np.memmap(path, dtype=storage.np_dtype, mode="r", offset=start, shape=(storage.numel,)) \
                if storage.numel else np.zeros(0, dtype=storage.np_dtype)
        flat = maps[storage.key]
        needed = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else offset
        if needed > flat.shape[0]:
            raise CheckpointError(f"{path}: tensor {name!r} reaches past the end of its storage")
        data = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                               strides=[s * flat.itemsize for s in stride], writeable=False)
        tensors[name] = StoredTensor(name, storage.dtype_name, tuple(size), path, data)
    return tensors
