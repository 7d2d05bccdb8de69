"""Hostile and broken files are refused with one clear line, and good files still load.

Each test writes a file that breaks one rule (of safetensors, of a Hugging Face folder,
of config.json) and checks three things: the exception class, that its message is one
line, and that the message names the file and the tensor or field at fault. llama2.c
files, convert and "regular files only" are in test_hostile_files_io.py.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

import minillama
from minillama.config import LlamaConfig
from minillama.errors import CheckpointError, ConfigError
from minillama.formats.hf import read_hf_checkpoint
from minillama.formats.names import tensor_shapes
from minillama.formats.report import describe, memory_estimates
from minillama.formats.safetensors import read_safetensors, write_safetensors
from minillama.formats.synthetic import TINY_CONFIG, write_random_checkpoint
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


# ---- Hugging Face folders: shards named by an index ------------------------------------------

def sharded(folder, **overrides):
    """A random sharded checkpoint in ``folder``; returns (index path, its JSON)."""
    write_random_checkpoint(folder, dict(num_hidden_layers=2, **overrides), max_shard_bytes=120_000)
    index_path = folder / "model.safetensors.index.json"
    return index_path, json.loads(index_path.read_text())


def test_index_naming_a_file_outside_the_folder_is_refused(tmp_path):
    index_path, index = sharded(tmp_path / "ckpt")
    outside = tmp_path / "outside.safetensors"
    write_safetensors(str(outside), [], {})
    name = "model.norm.weight"
    for shard in ("../outside.safetensors", str(outside), "sub/../../outside.safetensors"):
        index["weight_map"][name] = shard
        index_path.write_text(json.dumps(index))
        refused(CheckpointError, lambda: read_hf_checkpoint(tmp_path / "ckpt"), index_path, repr(shard), "outside")


@pytest.mark.parametrize("weight_map,words", [([], "weight_map"), ({}, "weight_map"), ({"a": 3}, "weight_map['a']"),
                                              ({"a": ""}, "invalid file name")])
def test_index_that_is_not_a_weight_map_is_refused(tmp_path, weight_map, words):
    index_path, _ = sharded(tmp_path / "ckpt")
    index_path.write_text(json.dumps({"weight_map": weight_map}))
    refused(CheckpointError, lambda: read_hf_checkpoint(tmp_path / "ckpt"), index_path, words)


def test_hugging_face_cache_layout_with_links_into_blobs_loads(tmp_path):
    source = tmp_path / "source"
    sharded(source)
    repo = tmp_path / "hub" / "models--someone--tiny"
    snapshot, blobs = repo / "snapshots" / "0123abcd", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, name in enumerate(sorted(os.listdir(source))):  # every file of the snapshot is a link to ../../blobs/<hash>
        os.rename(source / name, blobs / f"blob{i:04d}")
        os.symlink(f"../../blobs/blob{i:04d}", snapshot / name)
    assert all(os.path.islink(snapshot / n) for n in os.listdir(snapshot)) and len(os.listdir(snapshot)) > 3
    tensors = read_hf_checkpoint(snapshot)
    assert set(tensors) == set(tensor_shapes(LlamaConfig.from_pretrained(snapshot)))
    model = minillama.load(snapshot)
    assert model(np.array([[1, 2, 3]])).logits.shape == (1, 3, 512)


def test_tensor_in_another_shard_than_the_index_says_is_refused(tmp_path):
    index_path, index = sharded(tmp_path / "ckpt")
    shards = sorted(set(index["weight_map"].values()))
    name = "model.layers.0.self_attn.k_proj.weight"  # in a shard that holds other tensors too, so it is still read
    held_in = index["weight_map"][name]
    assert list(index["weight_map"].values()).count(held_in) > 1
    index["weight_map"][name] = other = next(s for s in shards if s != held_in)
    index_path.write_text(json.dumps(index))
    refused(CheckpointError, lambda: read_hf_checkpoint(tmp_path / "ckpt"), held_in, repr(name), repr(other), "places")


def test_tensor_in_two_shards_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    index_path, index = sharded(folder)
    shards = sorted(set(index["weight_map"].values()))
    first, second = read_safetensors(folder / shards[0]), read_safetensors(folder / shards[1])
    name = next(iter(first))
    both = {**second, name: first[name]}
    (folder / shards[1]).unlink()
    write_safetensors(str(folder / shards[1]), list(both), both)
    refused(CheckpointError, lambda: read_hf_checkpoint(folder), repr(name), "also in")


def test_tensor_missing_from_the_index_is_refused(tmp_path):
    index_path, index = sharded(tmp_path / "ckpt")
    name = "model.layers.1.mlp.up_proj.weight"
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    refused(CheckpointError, lambda: read_hf_checkpoint(tmp_path / "ckpt"), repr(name), "not listed in", index_path)


def test_missing_shard_is_named(tmp_path):
    index_path, index = sharded(tmp_path / "ckpt")
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / "ckpt" / shard).unlink()
    refused(CheckpointError, lambda: read_hf_checkpoint(tmp_path / "ckpt"), index_path, repr(shard), "missing")


def test_pytorch_model_bin_folders_load_through_the_pth_reader(tmp_path):
    from pth_writer import write_pth
    safetensors_folder = tmp_path / "st"
    write_random_checkpoint(safetensors_folder, dict(num_hidden_layers=2))
    arrays = {n: t.numpy() for n, t in read_hf_checkpoint(safetensors_folder).items()}
    expected = minillama.load(safetensors_folder)(np.array([[1, 5, 9]])).logits
    single, shards = tmp_path / "bin", tmp_path / "bin-shards"
    for folder in (single, shards):
        folder.mkdir()
        (folder / "config.json").write_text((safetensors_folder / "config.json").read_text())
    write_pth(single / "pytorch_model.bin", arrays)
    names = list(arrays)
    halves = {"pytorch_model-00001-of-00002.bin": names[:10], "pytorch_model-00002-of-00002.bin": names[10:]}
    for file_name, part in halves.items():
        write_pth(shards / file_name, {n: arrays[n] for n in part})
    (shards / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}))
    for folder in (single, shards):
        tensors = read_hf_checkpoint(folder)
        assert set(tensors) == set(arrays)
        np.testing.assert_array_equal(tensors["model.norm.weight"].numpy(), arrays["model.norm.weight"])
        np.testing.assert_array_equal(minillama.load(folder)(np.array([[1, 5, 9]])).logits, expected)


# ---- config.json: every field of the right type, finite, in range ------------------------------

BAD_FIELDS = [  # (field as written in config.json, raw JSON value, the field the message names)
    ("num_hidden_layers", "true", "num_hidden_layers"), ("num_hidden_layers", "2.0", "num_hidden_layers"),
    ("hidden_size", '"64"', "hidden_size"), ("vocab_size", "1e999", "vocab_size"), ("intermediate_size", "-5", "intermediate_size"),
    ("num_attention_heads", "null", "num_attention_heads"), ("num_key_value_heads", "[4]", "num_key_value_heads"),
    ("max_position_embeddings", "0", "max_position_embeddings"), ("head_dim", "7", "head_dim"),
    ("head_dim", "false", "head_dim"), ("pretraining_tp", "1.5", "pretraining_tp"),
    ("rms_norm_eps", "1e999", "rms_norm_eps"), ("rms_norm_eps", "-1e999", "rms_norm_eps"), ("rms_norm_eps", "0", "rms_norm_eps"),
    ("rms_norm_eps", '"1e-5"', "rms_norm_eps"), ("rms_norm_eps", "true", "rms_norm_eps"),
    ("rope_theta", "1e999", "rope_theta"), ("rope_theta", "{}", "rope_theta"),
    ("rope_scaling", '{"rope_type": "linear", "factor": 1e999}', "rope_scaling['factor']"),
    ("rope_scaling", '{"rope_type": "dynamic", "factor": "2"}', "rope_scaling['factor']"),
    ("rope_scaling", '{"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 1e999, '
                     '"original_max_position_embeddings": 8192}', "rope_scaling['high_freq_factor']"),
    ("rope_scaling", '{"rope_type": ["linear"], "factor": 2}', "rope_scaling type"), ("rope_scaling", "[2]", "rope_scaling"),
    ("rope_parameters", '{"rope_theta": 1e999}', "rope_theta"), ("rope_parameters", "[1]", "rope_parameters"),
    ("attention_bias", '"yes"', "attention_bias"), ("tie_word_embeddings", "1", "tie_word_embeddings"),
    ("pad_token_id", "1.0", "pad_token_id"), ("bos_token_id", "-1", "bos_token_id"), ("bos_token_id", '"1"', "bos_token_id"),
    ("eos_token_id", '[2, "3"]', "eos_token_id"), ("eos_token_id", "true", "eos_token_id"),
    ("torch_dtype", "32", "torch_dtype"), ("architectures", '"LlamaForCausalLM"', "architectures"),
    ("id2label", "5", "id2label"), ("num_labels", "0", "num_labels"), ("hidden_act", "null", "hidden_act"),
]


@pytest.mark.parametrize("field,value,named", BAD_FIELDS)
def test_config_field_of_the_wrong_type_or_range_is_named(tmp_path, field, value, named):
    base = {k: v for k, v in TINY_CONFIG.items()}
    text = json.dumps(base)[:-1] + f', "{field}": {value}}}'
    (tmp_path / "config.json").write_text(text)
    refused(ConfigError, lambda: LlamaConfig.from_pretrained(tmp_path), tmp_path / "config.json", named)


@pytest.mark.parametrize("text,words", [("[1, 2]", "expected a JSON object"), ('{"rope_theta": Infinity}', "Infinity"),
                                        ('{"rms_norm_eps": NaN}', "NaN"), ("{" * 100_000, "not valid JSON"),
                                        ('{"a": 1', "not valid JSON"), ("\udcff", "not valid JSON")])
def test_config_that_is_not_a_json_object_is_refused(tmp_path, text, words):
    (tmp_path / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    refused(ConfigError, lambda: LlamaConfig.from_pretrained(tmp_path), tmp_path / "config.json", words)


def test_good_configs_still_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, "rms_norm_eps": 1, "eos_token_id": [2, 3],
                                                      "bos_token_id": None, "rope_scaling": {"type": "linear", "factor": 2},
                                                      "architectures": ["LlamaForCausalLM"], "dtype": "bfloat16"}))
    config = LlamaConfig.from_pretrained(tmp_path)
    assert config.rms_norm_eps == 1.0 and type(config.rms_norm_eps) is float and config.eos_token_id == [2, 3]
    assert config.rope_scaling == {"rope_type": "linear", "factor": 2.0} and config.torch_dtype == "bfloat16"
    assert LlamaConfig(num_hidden_layers=10**9).num_hidden_layers == 10**9  # huge but well-typed: accepted


def test_config_with_a_billion_layers_is_inspected_at_once_and_refused_at_load(tmp_path):
    import time
    write_random_checkpoint(tmp_path, dict(num_hidden_layers=2))
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(num_hidden_layers=10**9, max_position_embeddings=10**9, vocab_size=10**12)
    (tmp_path / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    report = describe(tmp_path)
    assert time.perf_counter() - start < 5
    assert "the config says 1000000000 layers, the files hold 2" in report
    assert f"KV cache for {10**9} positions" in report
    start = time.perf_counter()
    refused(CheckpointError, lambda: minillama.load(tmp_path), "num_hidden_layers=1000000000", "holds 2 layers")
    assert time.perf_counter() - start < 5


def test_inspect_sizes_the_kv_cache_to_the_models_context(tmp_path):
    write_random_checkpoint(tmp_path)  # 4 layers, 4 KV heads of 8, 256 positions
    kv_float32 = 2 * 4 * 4 * 8 * 256 * 4
    rows = memory_estimates(LlamaConfig.from_pretrained(tmp_path), read_hf_checkpoint(tmp_path))
    assert [r["kv_cache"] for r in rows if r["dtype"] == "float32"] == [kv_float32, kv_float32]
    assert "KV cache for 256 positions" in describe(tmp_path)
    assert "KV cache for 100 positions" in describe(tmp_path, 100)
    assert memory_estimates(LlamaConfig.from_pretrained(tmp_path), read_hf_checkpoint(tmp_path), 512)[0]["kv_cache"] == 2 * kv_float32


# ---- no value of any field, no byte of a header, gives anything but the documented errors ----------

HOSTILE_VALUES = [None, True, False, -1, 0, 1, 3, 1.5, float("inf"), float("nan"), 10**30, "8", "", [], [1], {}, {"a": 1}]


def test_no_value_of_any_config_field_gives_a_traceback():
    import dataclasses
    fields = [f.name for f in dataclasses.fields(LlamaConfig) if f.name != "source"]
    fields += ["rope_parameters", "id2label", "dtype"]
    for name in fields:
        for value in HOSTILE_VALUES:
            try:
                LlamaConfig.from_dict({**TINY_CONFIG, name: value}, source="fuzz.json")
            except ConfigError as error:
                assert "\n" not in str(error) and str(error).startswith("fuzz.json: "), (name, value, error)


def test_no_byte_of_a_safetensors_header_gives_a_traceback(tmp_path):
    values = np.arange(2, dtype=np.float32).tobytes() + np.arange(4, dtype=np.float16).tobytes()
    good = raw_safetensors(tmp_path / "good.safetensors", GOOD, values).read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "fuzz.safetensors"
    outcomes = set()
    for trial in range(400):
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, 8 + len(json.dumps(GOOD))))  # the length prefix and the header
            data[at] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            read_safetensors(path)
            outcomes.add("read")
        except CheckpointError as error:
            assert "\n" not in str(error) and str(path) in str(error), error
            outcomes.add("refused")
    assert outcomes == {"read", "refused"}
