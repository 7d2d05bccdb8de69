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
    """read_pth(path) raises a short one-line CheckpointError naming the file and every one of ``words``."""
    with pytest.raises(CheckpointError) as caught:
        read_pth(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 500 and str(path) in message, message
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


def test_zip64_local_headers_are_read(tmp_path):
    """Files over 4 GiB keep their sizes in a zip64 extra field; Python's zipfile can write one for a small file."""
    import zipfile
    pickle_bytes, storages = small_state()
    with zipfile.ZipFile(tmp_path / "zip64.pth", "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            f.write(storages["0"])
    np.testing.assert_array_equal(read_pth(tmp_path / "zip64.pth")["w"].numpy().ravel(), np.arange(6))


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


def test_mutated_pickles_are_read_or_refused_never_crash(tmp_path):
    """Random opcode and byte changes to a good pickle: each file loads or raises CheckpointError, nothing else."""
    good, storages = small_state()
    rng, loaded = np.random.default_rng(0), 0
    for _ in range(300):
        data = bytearray(good)
        for at in rng.integers(0, len(data), size=rng.integers(1, 4)):
            data[at] = rng.choice(list(b"(tR}])\x85\x86hqQKJX\x89Nbsu.")) if rng.random() < 0.5 else rng.integers(256)
        write_archive(tmp_path / "m.pth", bytes(data), storages)
        try:
            loaded += sum(t.numpy().size >= 0 for t in read_pth(tmp_path / "m.pth").values())
        except CheckpointError as error:
            assert "\n" not in str(error) and len(str(error)) < 500
    assert loaded > 0  # some mutations (a changed value) still make a valid file


def test_long_programs_and_long_names_are_refused_in_one_short_line(tmp_path, monkeypatch):
    from minillama.formats import pickle_reader
    monkeypatch.setattr(pickle_reader, "OPCODE_LIMIT", 1000)
    refused(write_pickle(tmp_path, PROTO + MARK * 1001 + STOP), "more than 1000 opcodes")
    huge = op_str("os" * 500_000) + op_str("system") + b"\x93"  # STACK_GLOBAL of a 1 MB module name
    assert len(refused(write_pickle(tmp_path, PROTO + huge + STOP), "refusing to load")) < 400
    name = "w" * 2000
    assert len(refused(write_pickle(tmp_path, op_state_dict([(name, tensor())])), "a str of 2000 characters")) < 400


def test_an_unknown_storage_dtype_is_named(tmp_path):
    storage = op_storage("Float8_e4m3fnStorage", "0", 6)
    refused(write_tensor(tmp_path, tensor(storage)), r"storage type torch\.Float8_e4m3fnStorage")


# ---- tensor records --------------------------------------------------------------------------------

STORAGE = op_storage("FloatStorage", "0", 6)  # the storage write_pickle provides: arange(6) as float32


def tensor(storage=STORAGE, offset=0, size=(2, 3), stride=(3, 1), requires_grad=False, hooks=None, extra=()):
    """A _rebuild_tensor_v2 call with each argument given as a value (turned into opcodes) or as raw opcodes."""
    args = [storage, offset, size, stride, requires_grad]
    return op_rebuild(*[a if isinstance(a, bytes) else op_value(a) for a in args], hooks or op_hooks(), *extra)


def write_tensor(tmp_path, value_ops: bytes, name="bad.pth"):
    return write_pickle(tmp_path, op_state_dict([("w", value_ops)]), name)


@pytest.mark.parametrize("value,words", [
    (op_value(("tensor", 0, 0, (2, 3), (3, 1))), ["is a tuple, not a tensor"]),
    (op_tuple(op_str("tensor"), STORAGE, op_int(0), op_value((2, 3)), op_value((3, 1))), ["is a tuple"]),
    (b"]", ["is a list, not a tensor"]),
    (tensor(storage=7), ["storage is a int"]),
    (tensor(storage="0"), ["storage is a str"]),
    (tensor(size=("2", "3")), ["size must be a tuple of non-negative ints", "str"]),
    (tensor(size=(True, 3), stride=(3, 1)), ["size", "bool"]),
    (tensor(offset=True), ["offset must be a non-negative int", "True"]),
    (tensor(size=b"]" + op_int(2) + b"a" + op_int(3) + b"a"), ["size must be a tuple", "got a list"]),
    (tensor(offset=-1), ["offset must be a non-negative int", "-1"]),
    (tensor(stride=(3, -1)), ["stride must be a tuple of non-negative ints", r"got \(3, -1\)"]),  # mixed
    (tensor(size=(6,), stride=(-1,), offset=5), ["stride must be"]),  # a reversed view
    (tensor(offset=2**100), ["offset", "an int of 101 bits", "past the end of its storage"]),
    (tensor(size=(2**100,), stride=(1,)), ["reaches past the end of its storage of 6 elements"]),
    (tensor(size=(2, 2**100), stride=(2**100, 1)), ["reaches past the end"]),
    (tensor(size=(2, 2**2000), stride=(2**2000, 1)), ["shape a tuple of int, int", "reaches past the end"]),
    (tensor(size=(0, 2**100), stride=(2**100, 1)), [r"an empty tensor of shape \(0, 1267650600228229401496703205376\)"]),
    (tensor(size=(2, 4), stride=(4, 1)), [r"shape \(2, 4\)", "reaches past the end"]),  # 8 elements of 6
    (tensor(size=(1, 3), stride=(3, 1), offset=4), ["offset 4 reaches past the end"]),  # the last element only
    (tensor(size=(2, 3), stride=(0, 1)), ["overlap", "stride-0"]),
    (tensor(size=(3, 3), stride=(1, 1)), ["overlap"]),
    (tensor(stride=(3, 1, 1)), ["2 sizes but 3 strides"]),
    (tensor(size=(1,) * 17, stride=(1,) * 17), ["17 dimensions"]),
    (tensor(requires_grad=0), ["requires_grad must be a bool, got 0"]),
    (tensor(hooks=op_hooks() + op_str("h") + op_int(1) + b"s"), ["backward hooks must be an empty OrderedDict"]),
    (tensor(extra=(op_int(3),)), ["metadata must be a dict"]),
    (op_rebuild(STORAGE, op_int(0), op_value((6,))), ["takes 6 or 7 arguments, the pickle gives 3"]),
    (tensor(storage=op_storage("FloatStorage", "9", 6)), ["storage 9", "missing from the archive"]),
    (tensor(storage=op_storage("FloatStorage", "0", 5)), ["storage 0", "24 bytes, not the 5 x 4"]),
    (tensor(storage=op_storage("DoubleStorage", "0", 6)), ["storage 0", "24 bytes, not the 6 x 8"]),
])
def test_bad_tensor_records_are_refused_naming_the_tensor(tmp_path, value, words):
    refused(write_tensor(tmp_path, value), "tensor 'w'", *words)


def test_a_storage_declared_with_two_dtypes_is_refused(tmp_path):
    items = [("a", tensor(size=(6,), stride=(1,))),
             ("b", tensor(storage=op_storage("IntStorage", "0", 6), size=(6,), stride=(1,)))]
    refused(write_pickle(tmp_path, op_state_dict(items)), "tensor 'b'", "IntStorage of 6 here but as FloatStorage")


def test_a_big_endian_archive_is_refused(tmp_path):
    def big(members):
        members[1].data = b"big"
    refused(write_members(tmp_path, big), "big-endian")


def test_views_sharing_a_storage_may_not_declare_more_than_four_times_the_file(tmp_path):
    """A 48 KiB file declaring 7B parameters through views of one storage is refused, whatever the layout."""
    storage, numel = op_storage("HalfStorage", "0", 4096), 4096
    expanded = [(f"layers.{i}.w", tensor(storage, size=(65536, 4096), stride=(0, 1))) for i in range(27)]
    path = tmp_path / "expanded.pth"
    write_archive(path, op_state_dict(expanded), {"0": bytes(2 * numel)})
    assert os.path.getsize(path) < 48 * 2**10
    refused(path, "tensor 'layers.0.w'", "stride-0")
    # Distinct-element views of one storage, each fine alone, many together.
    views = [(f"v{i}", tensor(storage, size=(numel,), stride=(1,))) for i in range(40)]
    write_archive(path, op_state_dict(views), {"0": bytes(2 * numel)})
    refused(path, "declare 327680 bytes, more than 4 times the file's")
    write_archive(path, op_state_dict(views[:2]), {"0": bytes(2 * numel)})  # tied weights: twice is fine
    assert set(read_pth(path)) == {"v0", "v1"}


# ---- good files --------------------------------------------------------------------------------------

VALUES = np.arange(6, dtype=np.float32)


@pytest.mark.parametrize("offset,size,stride,expected", [
    (0, (2, 3), (3, 1), VALUES.reshape(2, 3)),
    (0, (3, 2), (1, 3), VALUES.reshape(2, 3).T),  # a transposed tensor, as torch.save keeps it
    (3, (2,), (1,), VALUES[3:5]),  # a slice of a bigger storage
    (1, (2, 2), (3, 1), VALUES.reshape(2, 3)[:, 1:]),  # a column slice: rows 3 apart
    (0, (3,), (2,), VALUES[::2]),
    (2, (1, 3), (99, 1), VALUES[2:5].reshape(1, 3)),  # a size-1 dimension's stride does not matter
    (6, (0, 4), (4, 1), np.zeros((0, 4), np.float32)),  # empty, at the very end
    (0, (), (), VALUES[0]),  # a scalar
])
def test_views_with_distinct_elements_are_read(tmp_path, offset, size, stride, expected):
    read = read_pth(write_tensor(tmp_path, tensor(offset=offset, size=size, stride=stride), "view.pth"))["w"]
    assert read.shape == expected.shape and read.dtype == "F32"
    np.testing.assert_array_equal(read.numpy(), expected)
    assert not read.data.flags.writeable


def test_plain_values_are_skipped_and_parameters_unwrapped(tmp_path):
    parameter = op_global("torch._utils", "_rebuild_parameter") + op_tuple(
        tensor(size=(6,), stride=(1,)), NEWFALSE, op_hooks()) + REDUCE
    items = [("epoch", op_int(3)), ("lr", op_value("x")), ("none", op_value(None)), ("p", parameter)]
    read = read_pth(write_pickle(tmp_path, op_state_dict(items), "plain.pth"))
    assert list(read) == ["p"]
    np.testing.assert_array_equal(read["p"].numpy(), VALUES)


def test_write_pth_round_trips_every_dtype_and_tied_weights_share_a_map(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"f32": rng.standard_normal((3, 4)).astype(np.float32), "f16": rng.standard_normal(5).astype(np.float16),
              "i64": np.arange(-3, 4), "u8": np.arange(7, dtype=np.uint8), "b": np.array([True, False])}
    bits = rng.integers(0, 2**16, size=(2, 2), dtype=np.uint16)
    write_pth(tmp_path / "all.pth", {**arrays, "bf16": ("bfloat16", bits)})
    read = read_pth(tmp_path / "all.pth")
    for name, array in arrays.items():
        np.testing.assert_array_equal(read[name].raw(), array)
    assert read["bf16"].dtype == "BF16" and np.array_equal(read["bf16"].raw(), bits)
    tied = [("a", tensor(size=(6,), stride=(1,))), ("b", tensor(size=(2, 3), stride=(3, 1)))]
    both = read_pth(write_pickle(tmp_path, op_state_dict(tied), "tied.pth"))
    assert np.shares_memory(both["a"].data, both["b"].data)


def test_torch_reads_what_read_pth_reads(tmp_path):
    """A file torch.save wrote (module state dict with _metadata, bfloat16, tied, transposed, Parameter)
    reads as torch.load(weights_only=True) reads it; and torch reads pth_writer's files."""
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(4, 3)
    state = module.state_dict()
    state.update(tied=state["weight"], bf16=torch.randn(5).to(torch.bfloat16), half=torch.randn(2, 2).half(),
                 t=torch.arange(12.0).reshape(3, 4).t(), row=torch.arange(12.0).reshape(3, 4)[1],
                 empty=torch.zeros(0, 3), param=torch.nn.Parameter(torch.ones(2)))
    torch.save(state, tmp_path / "torch.pth")
    expected = torch.load(tmp_path / "torch.pth", weights_only=True)
    read = read_pth(tmp_path / "torch.pth")
    assert list(read) == list(expected)
    for name, value in expected.items():
        assert read[name].shape == tuple(value.shape), name
        np.testing.assert_array_equal(read[name].numpy(), value.detach().float().numpy())
    write_pth(tmp_path / "ours.pth", {"x": VALUES.reshape(2, 3), "y": ("bfloat16", np.array([0x3F80], np.uint16))})
    ours = torch.load(tmp_path / "ours.pth", weights_only=True)
    assert ours["y"].dtype == torch.bfloat16 and ours["y"].item() == 1.0
    np.testing.assert_array_equal(ours["x"].numpy(), VALUES.reshape(2, 3))
