"""Hostile and broken files are refused with one clear line, and good files still load.

Each test writes a file that breaks one rule (of safetensors, of a Hugging Face folder,
of config.json, of llama2.c's .bin, of convert's inputs, of "regular files only") and
checks three things: the exception class, that its message is one line, and that the
message names the file and the tensor or field at fault.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from minillama.errors import CheckpointError
from minillama.formats.safetensors import read_safetensors, write_safetensors
from minillama.formats.tensors import StoredTensor


def refused(error_class, call, *names):
    """Run ``call``, expecting ``error_class``; its message must be one line naming each of ``names``."""
    with pytest.raises(error_class) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, (name, message)
    return message


# ---- safetensors: the format's rules ---------------------------------------------------------

def raw_safetensors(path, header, data: bytes = b"", length=None):
    """A safetensors file made by hand: ``header`` (a dict, or bytes as they are) then ``data``."""
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)
    return path


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


GOOD = {"a": entry("F32", [2], 0, 8), "b": entry("F16", [2, 2], 8, 16), "__metadata__": {"format": "pt"}}

BROKEN_SAFETENSORS = {  # what is wrong -> (header, data, words the message must hold)
    "header over the limit": (b"{}", b"", "100000000", 2**40),
    "header past the end": (b"{}", b"", "runs past the end", 100),
    "not an object": (b"[1, 2]", b"", "not a JSON object", None),
    "not UTF-8": (b'{"\xff": 1}', b"", "not valid JSON", None),
    "Infinity": (b'{"a": Infinity}', b"", "Infinity", None),
    "duplicate name": (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                       b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8, "'a' appears twice", None),
    "metadata not text": ({**GOOD, "__metadata__": {"format": 1}}, b"\0" * 16, "__metadata__", None),
    "metadata a list": ({**GOOD, "__metadata__": ["x"]}, b"\0" * 16, "__metadata__", None),
    "entry not a dict": ({"a": [1, 2]}, b"", "'a' has a malformed header entry", None),
    "entry missing shape": ({"a": {"dtype": "F32", "data_offsets": [0, 4]}}, b"\0" * 4, "'a' has a malformed", None),
    "unknown dtype": ({"a": entry("F8_E4M3", [2], 0, 2)}, b"\0" * 2, "'a' has unknown dtype 'F8_E4M3'", None),
    "dtype not text": ({"a": entry(["F32"], [1], 0, 4)}, b"\0" * 4, "'a' has unknown dtype", None),
    "negative dim": ({"a": entry("F32", [-1, 2], 0, 0)}, b"", "'a' has an invalid shape [-1, 2]", None),
    "float dim": ({"a": entry("F32", [2.0], 0, 8)}, b"\0" * 8, "'a' has an invalid shape", None),
    "bool dim": ({"a": entry("F32", [True], 0, 4)}, b"\0" * 4, "'a' has an invalid shape", None),
    "shape not a list": ({"a": entry("F32", 4, 0, 16)}, b"\0" * 16, "'a' has an invalid shape", None),
    "offsets reversed": ({"a": entry("F32", [0], 8, 4)}, b"\0" * 8, "'a' has invalid data_offsets [8, 4]", None),
    "offsets negative": ({"a": entry("F32", [1], -4, 0)}, b"\0" * 4, "'a' has invalid data_offsets", None),
    "three offsets": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 8, "data_offsets", None),
    "size disagrees": ({"a": entry("F32", [3], 0, 8)}, b"\0" * 8, "'a' has 8 bytes, but shape [3] of F32 needs 12", None),
    "huge shape": ({"a": entry("F32", [2**62, 2**62], 0, 8)}, b"\0" * 8, "'a' has 8 bytes", None),
    "past the data": ({"a": entry("F32", [4], 0, 16)}, b"\0" * 8, "'a' bytes [0, 16) lie outside the data (8 bytes)", None),
    "overlap": ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, b"\0" * 12,
                "'b' bytes [4, 12) overlap those of tensor 'a'", None),
    "gap": ({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, b"\0" * 12,
            "'b' starts at byte 8 of the data, leaving a gap after byte 4", None),
    "gap at the start": ({"a": entry("F32", [1], 4, 8)}, b"\0" * 8, "'a' starts at byte 4", None),
    "trailing bytes": ({"a": entry("F32", [1], 0, 4)}, b"\0" * 7, "3 trailing bytes", None),
}


@pytest.mark.parametrize("case", sorted(BROKEN_SAFETENSORS))
def test_safetensors_breaking_a_rule_is_refused(tmp_path, case):
    header, data, words, length = BROKEN_SAFETENSORS[case]
    path = raw_safetensors(tmp_path / "bad.safetensors", header, data, length)
    refused(CheckpointError, lambda: read_safetensors(path), path, words)


def test_safetensors_good_files_still_read(tmp_path):
    values = np.arange(2, dtype=np.float32).tobytes() + np.arange(4, dtype=np.float16).tobytes()
    tensors = read_safetensors(raw_safetensors(tmp_path / "good.safetensors", GOOD, values))
    np.testing.assert_array_equal(tensors["a"].numpy(), [0.0, 1.0])
    np.testing.assert_array_equal(tensors["b"].numpy(), [[0, 1], [2, 3]])
    # entries listed out of order, zero-sized tensors anywhere, header padded with spaces, no metadata
    header = {"z": entry("F32", [0, 3], 4, 4), "b": entry("I32", [1], 4, 8), "a": entry("U8", [4], 0, 4),
              "e": entry("F32", [0], 0, 0)}
    encoded = json.dumps(header).encode() + b"   "
    tensors = read_safetensors(raw_safetensors(tmp_path / "order.safetensors", encoded, bytes(range(4)) + b"\7\0\0\0"))
    assert tensors["z"].shape == (0, 3) and tensors["b"].numpy().tolist() == [7] and tensors["a"].numpy().tolist() == [0, 1, 2, 3]
    empty = read_safetensors(raw_safetensors(tmp_path / "empty.safetensors", {"__metadata__": {}}))
    assert empty == {}


def test_safetensors_written_here_read_by_the_reference_library(tmp_path):
    load_file = pytest.importorskip("safetensors.numpy").load_file
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "v": np.arange(3, dtype=np.float16)}
    stored = {n: StoredTensor(n, {"float32": "F32", "float16": "F16"}[a.dtype.name], a.shape, "", a) for n, a in arrays.items()}
    write_safetensors(str(tmp_path / "x.safetensors"), ["w", "v"], stored)
    theirs, ours = load_file(tmp_path / "x.safetensors"), read_safetensors(tmp_path / "x.safetensors")
    for name, array in arrays.items():
        np.testing.assert_array_equal(theirs[name], array)
        np.testing.assert_array_equal(ours[name].numpy(), array)
