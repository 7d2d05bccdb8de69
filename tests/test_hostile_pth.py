"""Hostile ``.pth`` files are refused with one-line CheckpointErrors naming the file (and tensor);
good ones load exactly as torch.load(weights_only=True) reads them.

The bad files are written byte by byte with tests/pth_writer.py: zips whose headers lie,
pickles that name other functions or use other opcodes, tensor records of the wrong
types or reaching outside their storage. None of this needs torch.
"""

from __future__ import annotations

import os
import pickle
import re
import zlib

import numpy as np
import pytest

from minillama.errors import CheckpointError
from minillama.formats.pth import read_pth
from pth_writer import (EMPTY_DICT, NEWFALSE, PROTO, REDUCE, SETITEMS, STOP, MARK, RawMember, archive_members,
                        deflate, op_global, op_hooks, op_int, op_rebuild, op_state_dict, op_storage, op_str,
                        op_tensor, op_tuple, op_value, small_state, write_archive, write_pth, write_raw_zip)


def refused(path, *words):
    """read_pth(path) raises a one-line CheckpointError naming the file and every one of ``words``."""
    with pytest.raises(CheckpointError) as caught:
        read_pth(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert re.search(word, message), (word, message)
    return message


def write_members(tmp_path, change=None, name="bad.pth"):
    """A valid one-tensor archive, with ``change(members)`` applied before writing."""
    members = archive_members(*small_state())
    if change:
        change(members)
    path = tmp_path / name
    write_raw_zip(path, members)
    return path


def test_the_raw_writer_makes_a_good_file(tmp_path):
    path = write_members(tmp_path, name="good.pth")
    np.testing.assert_array_equal(read_pth(path)["w"].numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))


# ---- the zip layer ---------------------------------------------------------------------------------

def set_field(index, **fields):
    def change(members):
        for key, value in fields.items():
            setattr(members[index], key, value)
    return change


@pytest.mark.parametrize("index,fields,words", [
    (0, dict(flags=0x1), ["data.pkl", "encrypted"]),
    (2, dict(flags=0x1), ["data/0", "encrypted"]),
    (0, dict(method=12), ["data.pkl", "compression method 12"]),  # bzip2
    (0, dict(method=14, local_method=14), ["compression method 14"]),  # lzma
    (0, dict(local_name="archive/data.pkX"), ["data.pkl", "local header names it"]),
    (2, dict(local_method=8), ["data/0", "local header says compression 8"]),
    (2, dict(local_size=4), ["data/0", "sizes"]),
    (2, dict(flags=0x8, local_size=4), ["data/0", "sizes"]),  # deferred sizes may be 0, not wrong
    (2, dict(name="archive/../data/0", local_name="archive/../data/0"), [r"\.\."]),
    (2, dict(name="/etc/passwd", local_name="/etc/passwd"), ["absolute"]),
    (2, dict(size=999), ["data/0", "sizes differ"]),  # a stored member whose sizes disagree
])
def test_zip_tricks_are_refused(tmp_path, index, fields, words):
    refused(write_members(tmp_path, set_field(index, **fields)), *words)


def test_a_data_descriptor_with_zero_local_sizes_is_read(tmp_path):
    """torch (miniz) sets the data-descriptor bit and writes zero sizes in local headers: that is fine."""
    def change(members):
        for m in members:
            m.flags, m.local_size = 0x8, 0
    read = read_pth(write_members(tmp_path, change))
    assert read["w"].numpy()[1, 2] == 5.0


def test_a_duplicate_member_is_refused(tmp_path):
    refused(write_members(tmp_path, lambda m: m.append(RawMember("archive/data/0", b"\0" * 24))), "appears twice")


def test_a_truncated_archive_is_refused(tmp_path):
    path = write_members(tmp_path)
    data = path.read_bytes()
    end = data.index(b"PK\x01\x02")  # drop the last 10 bytes of member data, keep the directory
    path.write_bytes(data[:end - 20] + data[end:])
    refused(path)


def test_a_compressed_storage_is_refused(tmp_path):
    refused(write_members(tmp_path, set_field(2, method=8)), "data/0", "compressed")


def test_a_deflated_pickle_is_read_and_its_crc_checked(tmp_path):
    assert read_pth(write_members(tmp_path, set_field(0, method=8), "deflated.pth"))["w"].shape == (2, 3)

    def corrupt(members):
        members[0].method, members[0].payload = 8, deflate(members[0].data[:-1] + b"!")
    refused(write_members(tmp_path, corrupt), "data.pkl", "CRC")


def bomb(size: int) -> bytes:
    """Raw deflate of ``size`` zero bytes, made a MiB at a time."""
    packer, out, chunk = zlib.compressobj(9, zlib.DEFLATED, -15), [], bytes(2**20)
    for _ in range(size // len(chunk)):
        out.append(packer.compress(chunk))
    return b"".join(out) + packer.flush()


def test_a_deflate_bomb_is_refused_without_inflating_it(tmp_path):
    payload = bomb(256 * 2**20)  # 256 MiB of zeros in about 255 KiB
    assert len(payload) < 260 * 2**10

    def declared(size):
        return lambda members: setattr(members[0], "payload", payload) or setattr(members[0], "size", size) \
            or setattr(members[0], "method", 8)
    path = write_members(tmp_path, declared(256 * 2**20), "bomb.pth")
    assert os.path.getsize(path) < 260 * 2**10
    refused(path, "data.pkl", "more than the 67108864 allowed")
    # Declared small: inflating stops one byte past the declared size.
    refused(write_members(tmp_path, declared(1000), "liar.pth"), "data.pkl", "inflates to more than the 1000")


def test_not_a_zip_and_not_a_regular_file(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"\x80\x02}q\x00.")
    refused(tmp_path / "bad.pth", "not a PyTorch zip checkpoint")
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    refused(fifo, "not a regular file")  # refused at once, not a hang


# ---- the pickle layer ------------------------------------------------------------------------------

def write_pickle(tmp_path, pickle_bytes: bytes, name="bad.pth"):
    path = tmp_path / name
    write_archive(path, pickle_bytes, {"0": np.arange(6, dtype=np.float32).tobytes()})
    return path


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_os_system_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": Exploit(marker)}, protocol=protocol)  # GLOBAL, or STACK_GLOBAL from protocol 4
    refused(write_pickle(tmp_path, payload), r"refusing to load: the pickle names (posix|os)\.system")
    assert not marker.exists()


def test_a_handwritten_os_system_call_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    call = op_global("os", "system") + op_tuple(op_str(f"touch {marker}")) + REDUCE
    refused(write_pickle(tmp_path, op_state_dict([("w", call)])), r"os\.system")
    assert not marker.exists()


EVIL = {  # opcodes (after PROTO 2) that torch.save never writes for a state dict
    "INST": b"iposix\nsystem\n(X\x02\x00\x00\x00lst.",
    "OBJ": MARK + op_global("collections", "OrderedDict") + b"o.",
    "NEWOBJ": op_global("collections", "OrderedDict") + b")\x81.",
    "EXT1": b"\x82\x01.",
    "BINBYTES": b"B\x01\x00\x00\x00x.",
    "EMPTY_SET": b"\x8f.",
    "PERSID": b"P0\n.",
}


@pytest.mark.parametrize("name", EVIL)
def test_other_opcodes_are_refused_by_name(tmp_path, name):
    refused(write_pickle(tmp_path, PROTO + EVIL[name]), f"opcode {name}")


@pytest.mark.parametrize("body,words", [
    (op_global("builtins", "eval"), [r"builtins\.eval"]),
    (op_global("torch", "load"), [r"torch\.load"]),
    (op_global("torch._utils", "_rebuild_device_tensor_from_numpy"), ["_rebuild_device_tensor_from_numpy"]),
    (op_global("torch", "FloatStorage") + op_tuple() + REDUCE, [r"calls torch\.FloatStorage"]),
    (op_global("collections", "OrderedDict") + op_tuple(op_str("x")) + REDUCE, [r"calls collections\.OrderedDict"]),
    (EMPTY_DICT + EMPTY_DICT + b"b", ["sets the state of a dict"]),
    (op_tuple(op_str("storage"), op_str("FloatStorage"), op_str("0"), op_str("cpu"), op_int(6)) + b"Q",
     ["persistent id"]),
    (op_tuple(op_str("storage"), op_global("torch", "FloatStorage"), op_str("../x"), op_str("cpu"), op_int(6)) + b"Q",
     ["persistent id"]),
    (b"]" + op_str("k") + op_int(1) + b"s", ["SETITEM on a list"]),
    (EMPTY_DICT + MARK + b"]" + op_int(1) + SETITEMS, ["dict key of type list"]),
    (b"h\x05", ["memo entry 5"]),
    (b"t", ["stack underflow"]),
    (op_int(1) + op_int(2), ["left over"]),
    (b"X\xff\xff\xff\x7fabc", ["truncated"]),
])
def test_bad_pickle_programs_are_refused(tmp_path, body, words):
    refused(write_pickle(tmp_path, PROTO + body + STOP), *words)


def test_a_pickle_without_stop_is_refused(tmp_path):
    refused(write_pickle(tmp_path, PROTO + EMPTY_DICT), "truncated")
