"""Reading the pickle of a ``torch.save`` state dict with an opcode loop of our own.

A pickle is a small program for a stack machine: opcodes push values, build tuples and
dicts, and (``GLOBAL`` + ``REDUCE``) import and call any function by name, which is how
a hostile ``.pth`` file runs ``os.system``. Python's :mod:`pickle` runs such programs;
this module interprets only the opcodes ``torch.save`` writes for a state dict (the same
idea as torch's own ``weights_only`` unpickler) and refuses every other one.

Nothing named by the file is ever imported or called. The few globals a state dict
needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, the typed
storage classes such as ``torch.BFloat16Storage``) become markers, and "calling" one
makes a plain record: an empty OrderedDict, a :class:`TensorRecord` holding the
arguments exactly as written (``pth.py`` checks them, knowing the tensor's name), or,
through the persistent id of a storage, a :class:`StorageRecord`.
"""

from __future__ import annotations

import pickletools
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError

# torch storage class -> (safetensors-style dtype name, NumPy dtype of the stored bytes)
STORAGE_DTYPES = {
    "FloatStorage": ("F32", np.float32), "HalfStorage": ("F16", np.float16), "BFloat16Storage": ("BF16", np.uint16),
    "DoubleStorage": ("F64", np.float64), "LongStorage": ("I64", np.int64), "IntStorage": ("I32", np.int32),
    "ShortStorage": ("I16", np.int16), "CharStorage": ("I8", np.int8), "ByteStorage": ("U8", np.uint8),
    "BoolStorage": ("BOOL", np.bool_),
}
OPCODE_LIMIT = 2**21  # opcodes a pickle may run: a state dict runs about 40 per tensor (50,000 tensors)
STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


@dataclass(frozen=True)
class Global:
    """A global the pickle may name: a marker standing for it, never the real function."""

    module: str
    name: str


ORDERED_DICT = Global("collections", "OrderedDict")
REBUILD_TENSOR = Global("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAMETER = Global("torch._utils", "_rebuild_parameter")
ALLOWED = {(g.module, g.name): g for g in (ORDERED_DICT, REBUILD_TENSOR, REBUILD_PARAMETER)}
ALLOWED.update({("torch", name): Global("torch", name) for name in STORAGE_DTYPES})


@dataclass(frozen=True)
class StorageRecord:
    """A storage named by a persistent id: its bytes are the archive member ``data/<key>``."""

    kind: str  # the torch storage class, a key of STORAGE_DTYPES
    key: str
    numel: int

    @property
    def dtype_name(self) -> str:
        return STORAGE_DTYPES[self.kind][0]

    @property
    def np_dtype(self):
        return STORAGE_DTYPES[self.kind][1]


@dataclass(frozen=True, eq=False)
class TensorRecord:
    """A call of ``_rebuild_tensor_v2``, its arguments unchecked:
    (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])."""

    args: tuple


def load_pickle(data: bytes, source: str):
    """The value a state-dict pickle describes, made of dicts, lists, tuples, scalars and the records above.

    source: how to name the pickle in error messages (the .pth file).
    """
    return Unpickler(data, source).load()


class Unpickler:
    """The stack machine, with one method per supported opcode (see ``OPCODES`` below)."""

    def __init__(self, data: bytes, source: str):
        self.data, self.source, self.at = memoryview(data), source, 0
        self.stack, self.marks, self.memo, self.steps = [], [], {}, 0

    def fail(self, message: str):
        raise CheckpointError(f"{self.source}: {message}")

    def load(self):
        while True:
            start, code = self.at, self.read(1)[0]
            self.steps += 1  # every opcode may keep a value (on the stack, the memo or a mark): bound them all
            if self.steps > OPCODE_LIMIT:
                self.fail(f"the pickle runs more than {OPCODE_LIMIT} opcodes; not a state dict")
            if code == STOP:
                if len(self.stack) != 1 or self.marks:
                    self.fail("malformed pickle (values left over at STOP)")
                return self.stack[0]
            method = OPCODES.get(code)
            if method is None:
                op = pickletools.code2op.get(chr(code))
                self.fail(f"refusing to load: the pickle uses opcode {op.name if op else hex(code)} at byte "
                          f"{start}, which torch.save does not write for a state dict")
            try:
                method(self)
            except IndexError:
                self.fail(f"malformed pickle (stack underflow at byte {start})")

    # ---- reading the program ----

    def read(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            self.fail("the pickle is truncated (it ends inside an opcode)")
        chunk = bytes(self.data[self.at:self.at + n])
        self.at += n
        return chunk

    def read_line(self) -> str:
        end = bytes(self.data[self.at:self.at + 256]).find(b"\n")
        if end < 0:
            self.fail("malformed pickle (a GLOBAL name is unterminated or too long)")
        return self.read(end + 1)[:-1].decode("utf-8", "replace")

    def read_text(self, length: int) -> str:
        raw = self.read(length)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("malformed pickle (a string is not UTF-8)")

    def push(self, value) -> None:
        self.stack.append(value)

    def pop_mark(self) -> list:
        items, self.stack = self.stack, self.marks.pop()
        return items

    # ---- opcodes: constants and memo ----

    def op_proto(self):
        if not 2 <= self.read(1)[0] <= 5:
            self.fail("unsupported pickle protocol")

    def op_frame(self):
        self.read(8)  # protocol 4 framing: the whole pickle is in memory already

    def op_int(self, size: int, fmt: str):
        self.push(struct.unpack(fmt, self.read(size))[0])

    def op_long1(self):
        self.push(int.from_bytes(self.read(self.read(1)[0]), "little", signed=True))

    def op_float(self):
        self.push(struct.unpack(">d", self.read(8))[0])

    def op_put(self, index: int):
        self.memo[index] = self.stack[-1]

    def op_get(self, index: int):
        if index not in self.memo:
            self.fail(f"malformed pickle (memo entry {index} is read before it is written)")
        self.push(self.memo[index])

    # ---- opcodes: containers ----

    def op_tuple(self, n: int):
        if n < 0:
            self.push(tuple(self.pop_mark()))
        elif n == 0:
            self.push(())
        else:
            if len(self.stack) < n:
                raise IndexError
            items = tuple(self.stack[-n:])
            del self.stack[-n:]
            self.push(items)

    def op_mark(self):
        self.marks.append(self.stack)
        self.stack = []

    def op_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self.op_setitems([key, value])

    def op_setitems(self, items: list):
        target = self.stack[-1]
        if type(target) not in (dict, OrderedDict) or len(items) % 2:
            self.fail(f"malformed pickle (SETITEM on a {type(target).__name__})")
        for key, value in zip(items[::2], items[1::2]):
            if type(key) not in (str, int):
                self.fail(f"refusing a dict key of type {type(key).__name__}")
            target[key] = value

    def op_appends(self, items: list):
        if type(self.stack[-1]) is not list:
            self.fail(f"malformed pickle (APPEND on a {type(self.stack[-1]).__name__})")
        self.stack[-1].extend(items)

    # ---- opcodes: globals, calls and storages ----

    def op_global(self, module: str, name: str):
        if type(module) is not str or type(name) is not str:
            self.fail("malformed pickle (STACK_GLOBAL without two strings)")
        marker = ALLOWED.get((module, name))
        if marker is None:
            module, name = module[:100], name[:100]  # a name from the file: keep the message one short line
            if module == "torch" and name.endswith("Storage"):
                self.fail(f"the pickle uses the storage type torch.{name}, a dtype minillama does not read")
            self.fail(f"refusing to load: the pickle names {module}.{name}, which is not needed to rebuild "
                      "tensors (a .pth file can run code; this one might try)")
        self.push(marker)

    def op_stack_global(self):
        name, module = self.stack.pop(), self.stack.pop()
        self.op_global(module, name)

    def op_reduce(self):
        args, function = self.stack.pop(), self.stack.pop()
        if type(args) is not tuple:
            self.fail("malformed pickle (REDUCE without an argument tuple)")
        if function is ORDERED_DICT and args == ():
            self.push(OrderedDict())
        elif function is REBUILD_TENSOR:
            self.push(TensorRecord(args))
        elif function is REBUILD_PARAMETER and 1 <= len(args) <= 3 and type(args[0]) is TensorRecord:
            self.push(args[0])  # a Parameter is its tensor
        else:
            what = f"{function.module}.{function.name}" if isinstance(function, Global) else type(function).__name__
            self.fail(f"refusing to load: the pickle calls {what} with {len(args)} arguments; only OrderedDict() "
                      "and torch._utils._rebuild_tensor_v2 are rebuilt")

    def op_build(self):
        state = self.stack.pop()
        if type(self.stack[-1]) is not OrderedDict or type(state) not in (dict, type(None)):
            self.fail(f"refusing to load: the pickle sets the state of a {type(self.stack[-1]).__name__}; "
                      "only an OrderedDict's plain attributes (a state dict's _metadata) are accepted")
        # the state (torch's per-module _metadata) is not needed: dropped, never applied

    def op_persistent(self):
        pid = self.stack.pop()
        ok = (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], Global)
              and pid[1].module == "torch" and pid[1].name in STORAGE_DTYPES and type(pid[2]) is str
              and STORAGE_KEY.fullmatch(pid[2]) and type(pid[3]) is str and type(pid[4]) is int and pid[4] >= 0)
        if not ok:
            self.fail("refusing a persistent id that is not ('storage', torch.<Type>Storage, key, location, numel)")
        self.push(StorageRecord(pid[1].name, pid[2], pid[4]))


STOP = ord(".")
U = Unpickler
OPCODES = {  # opcode byte -> what it does (pickletools.code2op names them all)
    0x80: U.op_proto, 0x95: U.op_frame, ord("("): U.op_mark,
    ord("}"): lambda self: self.push({}), ord("]"): lambda self: self.push([]), ord(")"): lambda self: self.op_tuple(0),
    ord("N"): lambda self: self.push(None), 0x88: lambda self: self.push(True), 0x89: lambda self: self.push(False),
    ord("K"): lambda self: self.op_int(1, "<B"), ord("M"): lambda self: self.op_int(2, "<H"),
    ord("J"): lambda self: self.op_int(4, "<i"), 0x8A: U.op_long1, ord("G"): U.op_float,
    ord("X"): lambda self: self.push(self.read_text(struct.unpack("<I", self.read(4))[0])),  # BINUNICODE
    0x8C: lambda self: self.push(self.read_text(self.read(1)[0])),  # SHORT_BINUNICODE
    ord("q"): lambda self: self.op_put(self.read(1)[0]),  # BINPUT
    ord("r"): lambda self: self.op_put(struct.unpack("<I", self.read(4))[0]),  # LONG_BINPUT
    0x94: lambda self: self.op_put(len(self.memo)),  # MEMOIZE
    ord("h"): lambda self: self.op_get(self.read(1)[0]),  # BINGET
    ord("j"): lambda self: self.op_get(struct.unpack("<I", self.read(4))[0]),  # LONG_BINGET
    0x85: lambda self: self.op_tuple(1), 0x86: lambda self: self.op_tuple(2), 0x87: lambda self: self.op_tuple(3),
    ord("t"): lambda self: self.op_tuple(-1),
    ord("s"): U.op_setitem, ord("u"): lambda self: self.op_setitems(self.pop_mark()),
    ord("a"): lambda self: self.op_appends([self.stack.pop()]), ord("e"): lambda self: self.op_appends(self.pop_mark()),
    ord("c"): lambda self: self.op_global(self.read_line(), self.read_line()),  # GLOBAL
    0x93: U.op_stack_global, ord("R"): U.op_reduce, ord("b"): U.op_build, ord("Q"): U.op_persistent,  # BINPERSID
}
