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

import minillama
from minillama.config import LlamaConfig
from minillama.errors import CheckpointError, ConfigError
from minillama.formats.convert import convert
from minillama.formats.hf import read_hf_checkpoint
from minillama.formats.llama2c import read_llama2c_checkpoint, read_llama2c_tokenizer
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


# ---- llama2.c .bin: a header that matches the file exactly ----------------------------------------

def llama2c_floats(dim=8, hidden=16, layers=2, heads=2, kv_heads=1, vocab=10, seq_len=4, shared=True) -> int:
    """How many float32 values a legacy llama2.c file of these dimensions holds after its header."""
    head = dim // heads
    per_layer = 2 * dim + dim * dim * 2 + 2 * kv_heads * head * dim + 3 * hidden * dim
    return vocab * dim + layers * per_layer + dim + 2 * seq_len * head // 2 + (0 if shared else vocab * dim)


def write_llama2c(path, header=(8, 16, 2, 2, 1, 10, 4), floats=None, extra: bytes = b""):
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = header
    if floats is None:
        floats = llama2c_floats(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len, shared=vocab > 0)
    values = np.random.default_rng(0).standard_normal(floats).astype(np.float32)
    path.write_bytes(struct.pack("<7i", *header) + values.tobytes() + extra)
    return path


def test_llama2c_good_files_still_load(tmp_path):
    for vocab in (10, -10):  # shared classifier, and one stored separately at the end
        config, tensors = read_llama2c_checkpoint(str(write_llama2c(tmp_path / "m.bin", (8, 16, 2, 2, 1, vocab, 4))))
        assert config.tie_word_embeddings == (vocab > 0) and ("lm_head.weight" in tensors) == (vocab < 0)
        assert config.num_key_value_heads == 1 and len(tensors) == 2 + 9 * 2 + (vocab < 0)
        assert minillama.load(tmp_path / "m.bin")(np.array([[1, 2, 3]])).logits.shape == (1, 3, 10)


@pytest.mark.parametrize("header,words", [
    ((8, 16, 2, 2, 1, 0, 4), "vocab_size=0"), ((8, -16, 2, 2, 1, 10, 4), "hidden_dim=-16"),
    ((0, 16, 2, 2, 1, 10, 4), "dim=0"), ((8, 16, 2, 3, 1, 10, 4), "n_heads=3"), ((8, 16, 2, 8, 1, 10, 4), "even head size"),
    ((8, 16, 2, 2, 3, 10, 4), "n_kv_heads=3"), ((8, 16, 2, 2, 1, 10, -4), "seq_len=-4"),
])
def test_llama2c_header_out_of_range_is_refused(tmp_path, header, words):
    path = write_llama2c(tmp_path / "bad.bin", header, floats=64)
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(path)), path, words)


def test_llama2c_header_of_overflowing_dims_is_refused(tmp_path):
    big = 2**31 - 1 - 1  # even, so every consistency rule holds: only the size can tell
    path = write_llama2c(tmp_path / "huge.bin", (2**30, big, big, 2**29, 2**29, -(2**31 - 1), big), floats=16)
    message = refused(CheckpointError, lambda: read_llama2c_checkpoint(str(path)), path, "truncated", "the file has 92")
    assert "header describes" in message


def test_llama2c_file_longer_than_its_header_says_is_refused(tmp_path):
    good = llama2c_floats()
    path = write_llama2c(tmp_path / "long.bin", floats=good, extra=b"\0" * 12)
    expected = 28 + 4 * good
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(path)), path, "12 bytes past",
            f"{expected} bytes expected", f"the file has {expected + 12}")
    # a file of two layers whose header claims one
    path = write_llama2c(tmp_path / "layers.bin", (8, 16, 1, 2, 1, 10, 4), floats=llama2c_floats(layers=2))
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(path)), path, "bytes past", "fewer layers")


def test_llama2c_truncated_and_odd_versions_are_refused(tmp_path):
    path = write_llama2c(tmp_path / "short.bin", floats=llama2c_floats() - 1)
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(path)), path, "truncated")
    (tmp_path / "tiny.bin").write_bytes(b"\0" * 10)
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(tmp_path / "tiny.bin")), "tiny.bin", "too short")
    (tmp_path / "v2.bin").write_bytes(struct.pack("<Ii7i", 0x616B3432, 2, 8, 16, 2, 2, 1, 10, 4).ljust(256, b"\0"))
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(tmp_path / "v2.bin")), "v2.bin", "version 2")


def test_llama2c_tokenizer_with_a_bad_length_is_refused(tmp_path):
    path = tmp_path / "tokenizer.bin"
    good = struct.pack("<i", 8) + b"".join(struct.pack("<fi", 0.0, len(p)) + p for p in (b"<unk>", b"<s>", b"a"))
    path.write_bytes(good)
    assert read_llama2c_tokenizer(str(path), 3) is not None
    for length in (-5, 1000):
        path.write_bytes(good + struct.pack("<fi", 0.0, length) + b"xyz")
        refused(CheckpointError, lambda: read_llama2c_tokenizer(str(path), 4), path, "token 3 claims")


# ---- convert: held to the config, atomic, carrying the tokenizer ----------------------------------

def source_with(folder, change):
    """A random HF folder whose tensors went through ``change(dict of arrays) -> dict of arrays``."""
    write_random_checkpoint(folder, dict(num_hidden_layers=2))
    arrays = change({n: t.numpy() for n, t in read_hf_checkpoint(folder).items()})
    (folder / "model.safetensors").unlink()
    codes = {"float32": "F32", "float16": "F16", "int64": "I64", "float64": "F64"}
    stored = {n: StoredTensor(n, codes[a.dtype.name], a.shape, "", a) for n, a in arrays.items()}
    write_safetensors(str(folder / "model.safetensors"), list(stored), stored)
    return arrays


def nothing_written(tmp_path):
    return not any(name.startswith("out") for name in os.listdir(tmp_path))


@pytest.mark.parametrize("change,words", [
    (lambda a: {**a, "model.norm.weight": a["model.norm.weight"][:10]}, "'model.norm.weight' has shape (10,), but the config needs (64,)"),
    (lambda a: {n: v for n, v in a.items() if n != "model.layers.1.mlp.up_proj.weight"}, "'model.layers.1.mlp.up_proj.weight' is missing"),
    (lambda a: {**a, "model.layers.2.mlp.up_proj.weight": a["model.norm.weight"]}, "num_hidden_layers=2, but the checkpoint holds 3"),
    (lambda a: {**a, "model.extra.weight": a["model.norm.weight"]}, "'model.extra.weight' is not part of a Llama"),
    (lambda a: {**a, "model.norm.weight": a["model.norm.weight"].astype(np.int64)}, "'model.norm.weight' has dtype I64"),
])
def test_convert_refuses_tensors_that_disagree_with_the_config_before_writing(tmp_path, change, words):
    source_with(tmp_path / "src", change)
    refused(CheckpointError, lambda: convert(str(tmp_path / "src"), str(tmp_path / "out")), tmp_path / "src", words)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("bad", [0, -1, 1.5, float("inf"), float("nan"), True, "5", None])
def test_convert_refuses_a_bad_max_shard_bytes(tmp_path, bad):
    write_random_checkpoint(tmp_path / "src")
    refused(ValueError, lambda: convert(str(tmp_path / "src"), str(tmp_path / "out"), bad), "max_shard_bytes", repr(bad))
    assert nothing_written(tmp_path)


def test_convert_widens_mixed_dtypes_exactly(tmp_path):
    arrays = source_with(tmp_path / "src", lambda a: {n: v if n.endswith("norm.weight") else v.astype(np.float16)
                                                      for n, v in a.items()})
    assert {a.dtype.name for a in arrays.values()} == {"float32", "float16"}
    convert(str(tmp_path / "src"), str(tmp_path / "out"), 100_000)
    converted = read_hf_checkpoint(tmp_path / "out")
    assert set(converted) == set(arrays) and {t.dtype for t in converted.values()} == {"F32"}
    for name, array in arrays.items():
        np.testing.assert_array_equal(converted[name].numpy(), array.astype(np.float32))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "float32"
    one = source_with(tmp_path / "f16", lambda a: {n: v.astype(np.float16) for n, v in a.items()})
    convert(str(tmp_path / "f16"), str(tmp_path / "out16"))  # one dtype: kept as it is
    assert {t.dtype for t in read_hf_checkpoint(tmp_path / "out16").values()} == {"F16"} and len(one) == 21


def test_convert_carries_every_tokenizer_file_unchanged(tmp_path):
    src = tmp_path / "src"
    write_random_checkpoint(src, tokenizer=True)
    files = {"tokenizer_config.json": json.dumps({"tokenizer_class": "LlamaTokenizer", "pad_token": "<unk>",
                                                  "model_max_length": 1234, "add_bos_token": True}),
             "tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}',
             "special_tokens_map.json": '{"bos_token": "<s>", "pad_token": "<unk>"}',
             "added_tokens.json": '{"<extra>": 512}', "generation_config.json": '{"do_sample": true, "temperature": 0.6}'}
    for name, text in files.items():
        (src / name).write_text(text)
    convert(str(src), str(tmp_path / "out"))
    for name in (*files, "tokenizer.model"):
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes(), name
    write_random_checkpoint(tmp_path / "bare", tokenizer=True)  # only tokenizer.model: a default tokenizer_config.json
    (tmp_path / "bare" / "tokenizer_config.json").unlink()
    convert(str(tmp_path / "bare"), str(tmp_path / "out2"))
    assert json.loads((tmp_path / "out2" / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"


def test_convert_restores_the_signal_handlers_it_replaced(tmp_path):
    import signal
    write_random_checkpoint(tmp_path / "src")
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    seen = []
    convert(str(tmp_path / "src"), str(tmp_path / "out"), progress=lambda name: seen.append(signal.getsignal(signal.SIGTERM)))
    assert seen and all(h is not before[signal.SIGTERM] for h in seen)  # replaced while writing
    assert {s: signal.getsignal(s) for s in before} == before


CONVERT_AND_WAIT = """
import sys, time
from minillama.formats.convert import convert
def progress(name):
    print("writing", flush=True)
    time.sleep(60)
convert(sys.argv[1], sys.argv[2], 60_000, progress)
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_convert_stopped_by_a_signal_leaves_no_partial_folder(tmp_path, signame):
    import selectors
    import signal
    import subprocess
    import sys
    write_random_checkpoint(tmp_path / "src", max_shard_bytes=100_000)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    child = subprocess.Popen([sys.executable, "-c", CONVERT_AND_WAIT, str(tmp_path / "src"), str(tmp_path / "out")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        selector = selectors.DefaultSelector()
        selector.register(child.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=60), "convert did not start writing"
        assert child.stdout.readline() == b"writing\n"
        assert any(n.startswith("out.partial-") for n in os.listdir(tmp_path))  # the work folder exists now
        child.send_signal(getattr(signal, signame))
        child.wait(timeout=60)
    finally:
        child.kill()
        child.wait()
    signum = getattr(signal, signame)
    # SIGINT: KeyboardInterrupt, which Python ends with the signal itself; the others: exit status 128 + signal
    assert child.returncode == (-signum if signame == "SIGINT" else 128 + signum), child.stderr.read()
    assert nothing_written(tmp_path), os.listdir(tmp_path)


# ---- regular files only: a FIFO or a device never blocks a read; JSON within limits ----------------

def returns_within(seconds, call):
    """Run ``call`` in a daemon thread; it must finish (return or raise) within ``seconds``. Returns its exception."""
    import threading
    outcome = []

    def run():
        try:
            call()
            outcome.append(None)
        except BaseException as error:  # noqa: B902 - handed to the test
            outcome.append(error)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s (blocked on a FIFO?)"
    return outcome[0]


def release(fifo):
    """Unblock a reader that did open the FIFO (so a failing test leaves no thread stuck)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def fifo_in_place_of(path):
    if os.path.lexists(path):
        os.unlink(path)
    os.mkfifo(path)
    return path


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


@needs_fifo
@pytest.mark.parametrize("name,error", [("config.json", ConfigError), ("model.safetensors", CheckpointError),
                                        ("model.safetensors.index.json", CheckpointError),
                                        ("model-00002-of-00006.safetensors", CheckpointError),
                                        ("pytorch_model.bin", CheckpointError)])
def test_fifo_in_place_of_a_checkpoint_file_is_refused_at_once(tmp_path, name, error):
    folder = tmp_path / "ckpt"
    if name.startswith("model-") or name.endswith("index.json"):
        sharded(folder)
    else:
        write_random_checkpoint(folder)
        if name == "pytorch_model.bin":
            (folder / "model.safetensors").unlink()
    fifo = fifo_in_place_of(folder / name)
    try:
        caught = returns_within(10, lambda: minillama.load(folder))
    finally:
        release(fifo)
    assert isinstance(caught, error), repr(caught)
    assert "\n" not in str(caught) and str(fifo) in str(caught) and "not a regular file" in str(caught)


@needs_fifo
def test_fifo_given_as_the_checkpoint_or_tokenizer_is_refused_at_once(tmp_path):
    for call, path in [(lambda p: minillama.load(p), tmp_path / "model.bin"),
                       (lambda p: read_llama2c_checkpoint(str(p)), tmp_path / "direct.bin"),
                       (lambda p: read_llama2c_tokenizer(str(p), 10), tmp_path / "tokenizer.bin"),
                       (lambda p: read_safetensors(p), tmp_path / "x.safetensors"),
                       (lambda p: LlamaConfig.from_json_file(p), tmp_path / "config.json")]:
        fifo = fifo_in_place_of(path)
        try:
            caught = returns_within(10, lambda: call(fifo))
        finally:
            release(fifo)
        assert isinstance(caught, (CheckpointError, ConfigError)) and str(fifo) in str(caught), repr(caught)


@needs_fifo
@pytest.mark.parametrize("name", ["tokenizer.model", "tokenizer_config.json", "generation_config.json"])
def test_convert_refuses_a_fifo_among_the_tokenizer_files_before_writing(tmp_path, name):
    write_random_checkpoint(tmp_path / "src", tokenizer=True)
    fifo = fifo_in_place_of(tmp_path / "src" / name)
    try:
        caught = returns_within(10, lambda: convert(str(tmp_path / "src"), str(tmp_path / "out")))
    finally:
        release(fifo)
    assert isinstance(caught, CheckpointError) and str(fifo) in str(caught), repr(caught)
    assert nothing_written(tmp_path)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_link_to_a_device_is_refused(tmp_path):
    write_random_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    os.symlink("/dev/zero", tmp_path / "model.safetensors")
    refused(CheckpointError, lambda: minillama.load(tmp_path), tmp_path / "model.safetensors", "not a regular file")


def test_oversized_json_files_are_refused_before_reading(tmp_path):
    from minillama.files import JSON_LIMIT
    index_path, _ = sharded(tmp_path / "ckpt")
    with open(index_path, "r+b") as f:
        f.truncate(JSON_LIMIT + 1)  # sparse: no disk used, but too large for an index
    refused(CheckpointError, lambda: read_hf_checkpoint(tmp_path / "ckpt"), index_path, f"{JSON_LIMIT + 1} bytes is too large")
    with open(tmp_path / "ckpt" / "config.json", "r+b") as f:
        f.truncate(JSON_LIMIT + 1)
    refused(ConfigError, lambda: minillama.load(tmp_path / "ckpt"), tmp_path / "ckpt" / "config.json", "too large")


def test_the_package_never_imports_the_safetensors_library(tmp_path):
    import subprocess
    import sys
    write_random_checkpoint(tmp_path / "src")
    script = ("import sys; sys.modules['safetensors'] = None\n"  # any import of it would now fail
              "import minillama\nfrom minillama.formats.convert import convert\n"
              f"convert({str(tmp_path / 'src')!r}, {str(tmp_path / 'out')!r})\n"
              f"print(minillama.load({str(tmp_path / 'out')!r})([[1, 2]]).logits.shape)")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "(1, 2, 512)", run.stderr


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
