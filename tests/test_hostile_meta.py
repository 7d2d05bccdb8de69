"""Meta folders whose params.json or shards are broken or disagree are refused naming the file, the
field or the tensor; good ones load. The shards are written with tests/pth_writer.py, without torch."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import minillama
from minillama.errors import CheckpointError, ConfigError
from minillama.formats.meta import read_meta_checkpoint
from pth_writer import write_pth

PARAMS = {"dim": 16, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "vocab_size": 32, "multiple_of": 16,
          "ffn_dim_multiplier": None, "norm_eps": 1e-5, "rope_theta": 10000.0, "max_seq_len": 64}
HIDDEN = 48  # int(2 * 4 * 16 / 3) = 42, rounded up to a multiple of 16
SHAPES = {"tok_embeddings.weight": ((32, 16), 1), "norm.weight": ((16,), None), "output.weight": ((32, 16), 0),
          "layers.0.attention_norm.weight": ((16,), None), "layers.0.ffn_norm.weight": ((16,), None),
          "layers.0.attention.wq.weight": ((16, 16), 0), "layers.0.attention.wk.weight": ((8, 16), 0),
          "layers.0.attention.wv.weight": ((8, 16), 0), "layers.0.attention.wo.weight": ((16, 16), 1),
          "layers.0.feed_forward.w1.weight": ((HIDDEN, 16), 0), "layers.0.feed_forward.w3.weight": ((HIDDEN, 16), 0),
          "layers.0.feed_forward.w2.weight": ((16, HIDDEN), 1)}


def meta_tensors(seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, (shape, _) in SHAPES.items()}


def write_folder(folder, params=None, shards=2, change=None, dtype="float16"):
    """A Meta folder of ``shards`` model-parallel shards; ``change(shard_index, tensors)`` tampers with one."""
    folder.mkdir(exist_ok=True)
    (folder / "params.json").write_text(json.dumps({**PARAMS, **(params or {})}))
    full = meta_tensors()
    for s in range(shards):
        part = {}
        for name, w in full.items():
            axis = SHAPES[name][1]
            part[name] = (np.split(w, shards, axis=axis)[s] if axis is not None else w).astype(dtype)
        if change:
            change(s, part)
        write_pth(folder / f"consolidated.{s:02d}.pth", part)
    return full


def test_a_good_folder_loads_with_the_shards_joined(tmp_path):
    full = write_folder(tmp_path / "m")
    config, tensors = read_meta_checkpoint(tmp_path / "m")
    assert (config.vocab_size, config.intermediate_size, config.num_key_value_heads) == (32, HIDDEN, 1)
    np.testing.assert_array_equal(tensors["model.layers.0.mlp.down_proj.weight"].numpy(),
                                  full["layers.0.feed_forward.w2.weight"].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(tensors["model.embed_tokens.weight"].numpy(),
                                  full["tok_embeddings.weight"].astype(np.float16).astype(np.float32))
    assert minillama.load(tmp_path / "m")(np.array([[1, 2, 3]])).logits.shape == (1, 3, 32)


@pytest.mark.parametrize("field,value", [
    ("dim", True), ("dim", 16.0), ("dim", "16"), ("n_layers", 0), ("n_heads", -2), ("n_kv_heads", False),
    ("vocab_size", -2), ("multiple_of", 0), ("max_seq_len", 1.5),
    ("norm_eps", 0), ("norm_eps", -1e-5), ("norm_eps", "1e-5"), ("norm_eps", True),
    ("rope_theta", 0.0), ("rope_theta", None), ("ffn_dim_multiplier", 0), ("ffn_dim_multiplier", -1.3),
    ("use_scaled_rope", 1),
])
def test_bad_params_fields_are_refused_naming_the_field(tmp_path, field, value):
    write_folder(tmp_path / "m", {field: value}, shards=1)
    with pytest.raises(ConfigError, match=rf"params\.json: '{field}' must be"):
        read_meta_checkpoint(tmp_path / "m")


@pytest.mark.parametrize("text", ['{"dim": NaN, "n_layers": 1, "n_heads": 2}', '{"dim": Infinity}', "[1, 2]", "{"])
def test_params_that_are_not_a_json_object_are_refused(tmp_path, text):
    write_folder(tmp_path / "m", shards=1)
    (tmp_path / "m" / "params.json").write_text(text)
    with pytest.raises(ConfigError, match=r"params\.json: (not valid JSON|expected a JSON object)"):
        read_meta_checkpoint(tmp_path / "m")


def test_an_overflowing_number_is_not_infinity(tmp_path):
    write_folder(tmp_path / "m", shards=1)
    text = (tmp_path / "m" / "params.json").read_text().replace('"rope_theta": 10000.0', '"rope_theta": 1e999')
    (tmp_path / "m" / "params.json").write_text(text)  # json reads 1e999 as inf
    with pytest.raises(ConfigError, match=r"params\.json: 'rope_theta' must be a positive finite number, got inf"):
        read_meta_checkpoint(tmp_path / "m")


def test_params_that_disagree_with_the_heads_are_refused(tmp_path):
    write_folder(tmp_path / "m", {"n_heads": 3}, shards=1)  # 16 is not divisible by 3
    with pytest.raises(ConfigError, match=r"params\.json: hidden_size \(16\) is not divisible"):
        read_meta_checkpoint(tmp_path / "m")


def drop(index, name):
    return lambda s, part: part.pop(name) if s == index else None


def in_shard(index, name, make):
    def change(s, part):
        if s == index:
            part[name] = make(part[name])
    return change


@pytest.mark.parametrize("change,shard,words", [
    (drop(1, "norm.weight"), 1, ["tensor 'norm.weight' is missing"]),
    (lambda s, part: part.update(extra=np.zeros(2, np.float16)) if s == 1 else None, 1, ["'extra' is not in the first"]),
    (in_shard(1, "layers.0.attention.wq.weight", lambda w: ("bfloat16", w.astype(np.float32).view(np.uint32)
                                                            .astype(np.uint16))), 1,
     ["tensor 'layers.0.attention.wq.weight' is BF16 but F16 in", "not joined"]),
    (in_shard(0, "layers.0.attention.wk.weight", lambda w: w[:, :8]), 1,
     ["tensor 'layers.0.attention.wk.weight' has shape \\(4, 16\\) but \\(4, 8\\)", "along axis 0"]),
    (in_shard(1, "norm.weight", lambda w: w[:8]), 1, ["tensor 'norm.weight' has shape \\(8,\\) but \\(16,\\)"]),
    (in_shard(0, "layers.0.attention.wo.weight", lambda w: w.reshape(-1)), 0, ["has shape \\(128,\\); expected a matrix"]),
    (in_shard(0, "layers.0.ffn_norm.weight", lambda w: w.astype(np.int32)), 0, ["is I32; weights must be"]),
])
def test_shards_that_disagree_are_refused_naming_the_shard_and_tensor(tmp_path, change, shard, words):
    write_folder(tmp_path / "m", change=change)
    with pytest.raises(CheckpointError) as caught:
        read_meta_checkpoint(tmp_path / "m")
    message = str(caught.value)
    assert "\n" not in message and f"consolidated.{shard:02d}.pth" in message, message
    for word in words:
        assert re.search(word, message), (word, message)


def test_joined_shapes_must_be_what_params_implies(tmp_path):
    def wider(s, part):  # both shards' w1 gain rows: 2 x 32 = 64 joined where params.json implies 48
        part["layers.0.feed_forward.w1.weight"] = np.zeros((32, 16), np.float16)
    write_folder(tmp_path / "m", change=wider)
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth \(and the other shards\): tensor "
                                              r"'layers\.0\.feed_forward\.w1\.weight' has shape \(64, 16\) joined, "
                                              r"but params\.json implies \(48, 16\)"):
        read_meta_checkpoint(tmp_path / "m")
    write_folder(tmp_path / "v", {"vocab_size": 40}, shards=1)
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth: tensor 'tok_embeddings\.weight' .* \(40, 16\)"):
        read_meta_checkpoint(tmp_path / "v")


def test_shards_must_be_numbered_without_gaps(tmp_path):
    write_folder(tmp_path / "m")
    (tmp_path / "m" / "consolidated.01.pth").rename(tmp_path / "m" / "consolidated.02.pth")
    with pytest.raises(CheckpointError, match="consolidated.00.pth to consolidated.01.pth without gaps"):
        read_meta_checkpoint(tmp_path / "m")
