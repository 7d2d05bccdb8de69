"""Writing ``torch.save`` zip files without torch, pickle opcode by opcode (for the tests).

``write_pth`` makes the same archive ``torch.save(state_dict)`` makes: ``archive/data.pkl`` (a
protocol-2 pickle of an OrderedDict whose values rebuild tensors from persistent storage ids),
``archive/data/<key>`` (each storage's raw bytes, stored uncompressed), ``archive/version`` and
``archive/byteorder``. The opcode helpers are public so that tests can craft hostile pickles,
and ``write_raw_zip`` writes a zip byte by byte (headers that lie, encrypted flags, odd
compression, deflate bombs) so that tests can craft hostile archives.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass

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


def op_value(value) -> bytes:
    """Opcodes pushing a plain value: None, a bool, an int, a str, or a tuple of those."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return NEWTRUE if value else NEWFALSE
    if isinstance(value, int):
        return op_int(value)
    if isinstance(value, str):
        return op_str(value)
    return op_tuple(*[op_value(v) for v in value])


def op_hooks() -> bytes:
    """collections.OrderedDict(): the empty backward hooks torch writes for every tensor."""
    return op_global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE


def op_rebuild(*args: bytes) -> bytes:
    """torch._utils._rebuild_tensor_v2(*args), each argument given as opcodes (for crafting bad records)."""
    return op_global("torch._utils", "_rebuild_tensor_v2") + op_tuple(*args) + REDUCE


def op_tensor(storage: bytes, offset: int, size, stride) -> bytes:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    return op_rebuild(storage, op_int(offset), op_ints(size), op_ints(stride), NEWFALSE, op_hooks())


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


# ---- zip archives written byte by byte -----------------------------------------------------------

@dataclass
class RawMember:
    """One zip member as written: ``data`` is its content; the other fields can be made to lie."""

    name: str
    data: bytes
    method: int = 0  # 0 stored, 8 deflate, anything else to test refusals
    flags: int = 0  # general-purpose bits: 0x1 encrypted, 0x8 sizes in a data descriptor
    size: int | None = None  # the declared uncompressed size (default: len(data))
    payload: bytes | None = None  # the bytes written (default: data, deflated when method is 8)
    local_name: str | None = None  # what the local header says, when it should disagree
    local_method: int | None = None
    local_size: int | None = None


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def write_raw_zip(path, members: list[RawMember]) -> None:
    """A zip file: local header + bytes for each member, then the central directory and its end record."""
    body, directory = bytearray(), bytearray()
    for m in members:
        payload = m.payload if m.payload is not None else deflate(m.data) if m.method == 8 else m.data
        size = len(m.data) if m.size is None else m.size
        crc = zlib.crc32(m.data)
        name, local_name = m.name.encode(), (m.name if m.local_name is None else m.local_name).encode()
        local_method = m.method if m.local_method is None else m.local_method
        local_size = size if m.local_size is None else m.local_size
        offset = len(body)
        body += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, m.flags, local_method, 0, 0x21, crc,
                            len(payload), local_size, len(local_name), 0) + local_name + payload
        directory += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, m.flags, m.method, 0, 0x21, crc,
                                 len(payload), size, len(name), 0, 0, 0, 0, 0, offset) + name
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(body), 0)
    with open(path, "wb") as f:
        f.write(bytes(body) + bytes(directory) + end)


def archive_members(pickle_bytes: bytes, storages: dict[str, bytes], prefix: str = "archive") -> list[RawMember]:
    """The members of a torch.save-style archive, for ``write_raw_zip`` (change one to make it hostile)."""
    members = [RawMember(f"{prefix}/data.pkl", pickle_bytes), RawMember(f"{prefix}/byteorder", b"little")]
    members += [RawMember(f"{prefix}/data/{key}", data) for key, data in storages.items()]
    return members + [RawMember(f"{prefix}/version", b"3\n")]


def small_state() -> tuple[bytes, dict[str, bytes]]:
    """A valid one-tensor state dict, "w" = arange(6) as a (2, 3) float32: its pickle and storages."""
    storage = op_storage("FloatStorage", "0", 6)
    values = np.arange(6, dtype=np.float32)
    return op_state_dict([("w", op_tensor(storage, 0, (2, 3), (3, 1)))]), {"0": values.tobytes()}

