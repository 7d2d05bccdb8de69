"""Bad input gets a clear error that names the problem (file, tensor, field or parameter)."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

import minillama
from minillama import CheckpointError, ConfigError, LlamaConfig
from minillama.formats.safetensors import read_safetensors, write_safetensors
from minillama.formats.synthetic import write_random_checkpoint


def copy_of(tiny, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny, target)
    return target


# ---- config --------------------------------------------------------------------------------

def test_heads_not_divisible_by_kv_heads():
    with pytest.raises(ConfigError, match=r"num_attention_heads \(6\) must be divisible by num_key_value_heads \(4\)"):
        LlamaConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=4)


def test_unknown_rope_scaling_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"rope_scaling": {"type": "su", "factor": 2.0}}))
    with pytest.raises(ConfigError, match=r"config.json: unknown rope_scaling type 'su'"):
        LlamaConfig.from_pretrained(tmp_path)


def test_rope_scaling_missing_key():
    with pytest.raises(ConfigError, match=r"rope_scaling\['low_freq_factor'\]"):
        LlamaConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0})


@pytest.mark.parametrize("field,value", [("hidden_size", 0), ("num_hidden_layers", "2"), ("rms_norm_eps", -1.0),
                                         ("vocab_size", 1.5), ("hidden_act", "gelu"), ("pad_token_id", 99999)])
def test_bad_field_is_named(field, value):
    with pytest.raises(ConfigError, match=field):
        LlamaConfig(**{field: value})


def test_both_rope_config_styles_read_the_same(tmp_path):
    old = {"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    new = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}}
    a, b = LlamaConfig.from_dict(old), LlamaConfig.from_dict(new)
    assert a.rope_theta == b.rope_theta == 5e5
    assert a.rope_scaling == b.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert LlamaConfig.from_dict({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}).rope_scaling is None


def test_config_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        LlamaConfig.from_pretrained(tmp_path)


# ---- checkpoint folders ----------------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        minillama.load(tmp_path / "nowhere")


def test_missing_config(tiny, tmp_path):
    folder = copy_of(tiny, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        minillama.load(folder)


def test_missing_weights(tiny, tmp_path):
    folder = copy_of(tiny, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        minillama.load(folder)


def test_pytorch_weights_that_are_not_a_zip_are_named(tiny, tmp_path):
    folder = copy_of(tiny, tmp_path)  # pytorch_model.bin is read (without running code) when it is all there is
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: not a PyTorch zip checkpoint"):
        minillama.load(folder)


def test_missing_tensor_is_named(tiny, tmp_path):
    folder = copy_of(tiny, tmp_path)
    tensors = read_safetensors(folder / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    (folder / "model.safetensors").unlink()  # the tensors are views of the old file, which stays mapped
    write_safetensors(str(folder / "model.safetensors"), list(tensors), tensors)
    with pytest.raises(CheckpointError, match=r"'model.layers.1.self_attn.k_proj.weight' is missing"):
        minillama.load(folder)


def test_wrong_shape_is_named(tiny, tmp_path):
    folder = copy_of(tiny, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 100
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(172, 64\), but the config needs \(100, 64\)"):
        minillama.load(folder)


def test_missing_shard(tmp_path):
    write_random_checkpoint(tmp_path, max_shard_bytes=200_000)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(CheckpointError, match=f"names shard '{shards[-1].name}', which is missing"):
        minillama.load(tmp_path)


# ---- corrupt safetensors files --------------------------------------------------------------

def write_raw(path, header: bytes, data: bytes = b"", length=None):
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


def test_header_length_past_end(tmp_path):
    path = write_raw(tmp_path / "bad.safetensors", b"{}", length=10**6)
    with pytest.raises(CheckpointError, match="bad.safetensors: header length 1000000 runs past the end"):
        read_safetensors(path)


def test_header_not_json(tmp_path):
    path = write_raw(tmp_path / "bad.safetensors", b"{oops")
    with pytest.raises(CheckpointError, match="bad.safetensors: header is not valid JSON"):
        read_safetensors(path)


def test_offsets_out_of_range(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path = write_raw(tmp_path / "bad.safetensors", header, b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"bad.safetensors: tensor 'w' bytes \[0, 16\) lie outside the data"):
        read_safetensors(path)


def test_unknown_dtype(tmp_path):
    header = json.dumps({"w": {"dtype": "F8_E9", "shape": [2], "data_offsets": [0, 2]}}).encode()
    path = write_raw(tmp_path / "bad.safetensors", header, b"\0" * 2)
    with pytest.raises(CheckpointError, match="bad.safetensors: tensor 'w' has unknown dtype 'F8_E9'"):
        read_safetensors(path)


def test_size_disagrees_with_shape(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    path = write_raw(tmp_path / "bad.safetensors", header, b"\0" * 8)
    with pytest.raises(CheckpointError, match="tensor 'w' has 8 bytes, but shape"):
        read_safetensors(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="short.safetensors: too short"):
        read_safetensors(path)


def test_bfloat16_is_widened_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3, 65504.0, -1e30], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncate to bfloat16
    header = json.dumps({"w": {"dtype": "BF16", "shape": [6], "data_offsets": [0, 12]}}).encode()
    path = write_raw(tmp_path / "bf16.safetensors", header, bits.tobytes())
    widened = read_safetensors(path)["w"].numpy()
    assert widened.dtype == np.float32
    np.testing.assert_array_equal(widened.view(np.uint32), bits.astype(np.uint32) << 16)


# ---- forward inputs -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tiny):
    return minillama.load(tiny)


@pytest.mark.parametrize("bad", [512, -1, 10**6])
def test_token_id_outside_vocabulary(model, bad):
    with pytest.raises(ValueError, match=rf"token id {bad}, outside the vocabulary \[0, 512\)"):
        model(np.array([[1, bad, 2]]))


def test_mask_shape_mismatch(model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 2\), but \(1, 3\) is needed for input_ids of shape \(1, 3\)"):
        model(np.array([[1, 2, 3]]), attention_mask=np.array([[1, 1]]))


def test_empty_and_float_input(model):
    with pytest.raises(ValueError, match="seq >= 1"):
        model(np.zeros((1, 0), dtype=np.int64))
    with pytest.raises(ValueError, match="input_ids must hold integers"):
        model(np.array([[1.5, 2.0]]))


def test_bad_backend_and_dtype(tiny):
    with pytest.raises(ValueError, match="backend must be one of"):
        minillama.load(tiny, backend="jax")
    with pytest.raises(ValueError, match="dtype must be one of"):
        minillama.load(tiny, dtype="int8")
    with pytest.raises(ValueError, match="'float16' is not available on the 'strict' backend"):
        minillama.load(tiny, backend="strict", dtype="float16")


def test_resize_token_embeddings(tiny):
    model = minillama.load(tiny)
    ids = np.array([[1, 2, 3]])
    before = model(ids).logits
    model.resize_token_embeddings(516)
    after = model(np.array([[1, 2, 3]])).logits
    assert after.shape == (1, 3, 516) and model.config.vocab_size == 516
    np.testing.assert_array_equal(after[..., :512], before)
    mean = model.weights.embed_tokens[:512].mean(axis=0)  # new rows: the old rows' mean (tests/test_hf_methods.py)
    np.testing.assert_allclose(model.weights.embed_tokens[512:], np.tile(mean, (4, 1)), atol=1e-3)
    assert model(np.array([[515, 1]])).logits.shape == (1, 2, 516)  # the new ids are valid input
    with pytest.raises(ValueError, match="new_num_tokens"):
        model.resize_token_embeddings(0)
