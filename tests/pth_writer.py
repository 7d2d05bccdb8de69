"""Writing ``torch.save`` zip files without torch, pickle opcode by opcode (for the tests).

``write_pth`` makes the same archive ``torch.save(state_dict)`` makes: ``archive/data.pkl`` (a
protocol-2 pickle of an OrderedDict whose values rebuild tensors from persistent storage ids),
``archive/data/<key>`` (each storage's raw bytes, stored uncompressed), ``archive/version`` and
``archive/byteorder``. The opcode helpers are public so that tests can craft hostile pickles.
"""

from __future__ import annotations

import struct
import zipfile

import numpy as np

# NumPy dtype name (or "bfloat16" for uint16 bits) -> torch's legacy storage class
STORAGE_CLASSES = {"float32": "FloatStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage",
                   "float64": "DoubleStorage", "int64": "LongStorage", "int32": "IntStorage",
                   "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage"}

PROTO, STOP, MARK, TUPLE, EMPTY_TUPLE, REDUCE, BUILD = b"\x80\x02", b".", b"(", b"t", b")", b"R", b"b"
BINPERSID, SETITEMS, EMPTY_DICT, NEWFALSE, NEWTRUE, NONE = b"Q", b"u", b"}", b"\x89", b"\x88", b"N"


def op_str(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def op_int(n: int) -> bytes:
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)  # BININT
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1


def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_tuple(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def op_ints(values) -> bytes:
    return op_tuple(*[op_int(v) for v in values])


def op_storage(storage_class: str, key: str, numel: int) -> bytes:
    """The persistent id torch writes for a storage: ('storage', torch.<Class>, key, 'cpu', numel)."""
    return op_tuple(op_str("storage"), op_global("torch", storage_class), op_str(key), op_str("cpu"),
                    op_int(numel)) + BINPERSID


def op_tensor(storage: bytes, offset: int, size, stride) -> bytes:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    hooks = op_global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    return op_global("torch._utils", "_rebuild_tensor_v2") + op_tuple(
        storage, op_int(offset), op_ints(size), op_ints(stride), NEWFALSE, hooks) + REDUCE


def op_state_dict(items: list[tuple[str, bytes]]) -> bytes:
    """A complete pickle of an OrderedDict of (name, value opcodes)."""
    body = b"".join(op_str(name) + value for name, value in items)
    return PROTO + op_global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + MARK + body + SETITEMS + STOP


def contiguous_strides(shape) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    return strides


def write_archive(path, pickle_bytes: bytes, storages: dict[str, bytes], prefix: str = "archive") -> None:
    """A torch.save-style zip: the pickle, the storages (stored, uncompressed), version and byte order."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pickle_bytes)
        z.writestr(f"{prefix}/byteorder", "little")
        for key, data in storages.items():
            z.writestr(f"{prefix}/data/{key}", data)
        z.writestr(f"{prefix}/version", "3\n")


def write_pth(path, tensors: dict, prefix: str = "archive") -> None:
    """Save ``name -> array`` as torch.save would. An array of uint16 given as ("bfloat16", bits) is bfloat16."""
    items, storages = [], {}
    for i, (name, value) in enumerate(tensors.items()):
        kind, array = value if isinstance(value, tuple) else (np.asarray(value).dtype.name, np.asarray(value))
        array = np.ascontiguousarray(array)
        key = str(i)
        storages[key] = array.tobytes()
        storage = op_storage(STORAGE_CLASSES[kind], key, array.size)
        items.append((name, op_tensor(storage, 0, array.shape, contiguous_strides(array.shape))))
    write_archive(path, op_state_dict(items), storages, prefix)
