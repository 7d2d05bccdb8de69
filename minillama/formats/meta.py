"""Meta's original Llama release: ``params.json``, ``consolidated.NN.pth`` shards and ``tokenizer.model``.

Read without torch (see ``pth.py``). Meta trained with model parallelism and saved
one shard per GPU (7B: 1, 13B: 2, 70B: 8). Each tensor was split the way its layer
was parallelised:

* along the output dimension (rows): wq, wk, wv, w1, w3 and the output head,
* along the input dimension (columns): wo, w2 and the token embedding,
* not at all: the norms, replicated in every shard.

Meta's q/k rows are in the interleaved rotary layout; they are permuted to
Hugging Face's rotate-half layout (what ``convert_llama_weights_to_hf.py`` does),
so the model code is the same for every format.

Everything is checked before it is used: each ``params.json`` field has its type and
range (a ConfigError names the field), and the shards must agree with one another and
with ``params.json``: the same tensor names and dtypes in every shard (bfloat16 bits
are never joined to float16 bits), shapes that join along the split axis, and joined
shapes equal to those the config implies (a CheckpointError names the shard and tensor).
"""

from __future__ import annotations

import glob
import math
import os
import re

from ..config import LlamaConfig
from ..errors import CheckpointError, ConfigError
from ..files import read_json_object
from .names import tensor_shapes
from .pth import read_pth
from .tensors import DerivedTensor

# Meta name (inside layers.{i}.) -> (HF name, axis the shards were split along; None = replicated)
LAYER_NAMES = {
    "attention_norm.weight": ("input_layernorm.weight", None),
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
}
TOP_NAMES = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", 1),
    "norm.weight": ("model.norm.weight", None),
    "output.weight": ("lm_head.weight", 0),
}


def meta_intermediate_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The feed-forward width, computed as Meta's ``FeedForward`` does: 2/3 of 4*dim, scaled, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


INT_FIELDS = {"dim": True, "n_layers": True, "n_heads": True, "n_kv_heads": False, "vocab_size": False,
              "multiple_of": False, "max_seq_len": False}  # field -> required
NUMBER_FIELDS = {"norm_eps": False, "rope_theta": False, "ffn_dim_multiplier": True}  # field -> may be null
FLOAT_DTYPES = ("F32", "F16", "BF16")


def is_meta_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "params.json"))


def read_params(folder: str) -> dict:
    """``params.json``, every field Meta writes checked for type and range (ConfigError naming the field)."""
    path = os.path.join(folder, "params.json")
    params = read_json_object(path, ConfigError)
    for key, required in INT_FIELDS.items():
        value = params.get(key)
        if value is None and not required:
            continue
        if key == "vocab_size" and value == -1 and type(value) is int:
            continue  # -1: read the vocabulary size off the embedding table
        if type(value) is not int or value < 1:  # type(True) is bool: true is not a size
            raise ConfigError(f"{path}: {key!r} must be a positive integer, got {short(value)}")
    for key, nullable in NUMBER_FIELDS.items():
        value = params.get(key)
        if value is None and (nullable or key not in params):
            continue
        if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{path}: {key!r} must be a positive finite number{' or null' * nullable}, "
                              f"got {short(value)}")
    if type(params.get("use_scaled_rope", False)) is not bool:
        raise ConfigError(f"{path}: 'use_scaled_rope' must be true or false, got {short(params['use_scaled_rope'])}")
    return params


def short(value) -> str:
    """The repr of a value read from a file, cut to one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def shard_paths_of(folder: str) -> list[str]:
    """consolidated.00.pth, consolidated.01.pth, ...: every shard, numbered from 0 without gaps."""
    paths = sorted(glob.glob(os.path.join(folder, "consolidated.*.pth")))
    if not paths:
        raise CheckpointError(f"{folder}: no consolidated.*.pth shards")
    numbers = [re.fullmatch(r"consolidated\.(\d+)\.pth", os.path.basename(p)) for p in paths]
    if [int(m.group(1)) if m else None for m in numbers] != list(range(len(paths))):
        names = ", ".join(os.path.basename(p) for p in paths)
        raise CheckpointError(f"{folder}: the shards must be consolidated.00.pth to consolidated.{len(paths) - 1:02d}"
                              f".pth without gaps; found {names}")
    return paths


def check_same_names(shard_paths: list[str], shards: list[dict]) -> None:
    """Every shard holds the same tensor names (model parallelism splits tensors, not the model)."""
    for path, shard in zip(shard_paths[1:], shards[1:]):
        extra, missing = set(shard) - set(shards[0]), set(shards[0]) - set(shard)
        if extra or missing:
            name, how = (min(missing), "is missing") if missing else (min(extra), "is not in the first shard")
            raise CheckpointError(f"{path}: tensor {name!r} {how} (shards must hold the same tensors; "
                                  f"{shard_paths[0]} has {len(shards[0])}, this one {len(shard)})")


def joined_shape(meta_name: str, parts: list, paths: list[str], axis: int | None) -> tuple:
    """The shape of ``parts`` joined along ``axis`` (None: replicated, all equal), checking dtypes and shapes."""
    first = parts[0]
    for part, path in zip(parts, paths):
        where = f"{path}: tensor {meta_name!r}"
        if part.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{where} is {part.dtype}; weights must be F32, F16 or BF16")
        if part.dtype != first.dtype:
            raise CheckpointError(f"{where} is {part.dtype} but {first.dtype} in {paths[0]}; shards of "
                                  "different dtypes are not joined")
        if len(part.shape) != (1 if axis is None else 2):
            kind = "a vector" if axis is None else "a matrix"
            raise CheckpointError(f"{where} has shape {part.shape}; expected {kind}")
        same = part.shape if axis is None else part.shape[:axis] + part.shape[axis + 1:]
        if same != (first.shape if axis is None else first.shape[:axis] + first.shape[axis + 1:]):
            raise CheckpointError(f"{where} has shape {part.shape} but {first.shape} in {paths[0]}; "
                                  f"cannot join them{'' if axis is None else f' along axis {axis}'}")
    shape = list(first.shape)
    if axis is not None:
        shape[axis] = sum(p.shape[axis] for p in parts)
    return tuple(shape)


def read_meta_checkpoint(folder: str) -> tuple[LlamaConfig, dict]:
    """Config and Hugging Face-named tensors of a Meta folder; shards merged lazily."""
    folder = os.fspath(folder)
    params = read_params(folder)
    shard_paths = shard_paths_of(folder)
    shards = [read_pth(p) for p in shard_paths]
    check_same_names(shard_paths, shards)

    dim, n_heads, n_layers = params["dim"], params["n_heads"], params["n_layers"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    tensors, origin = {}, {}

    def add(meta_name, hf_name, axis, rotary_heads=None):
        if meta_name not in shards[0]:
            raise CheckpointError(f"{shard_paths[0]}: tensor {meta_name!r} is missing")
        parts = [s[meta_name] for s in shards]
        shape = joined_shape(meta_name, parts, shard_paths, axis)
        tensors[hf_name] = DerivedTensor(hf_name, parts[0].dtype, shape, parts[0].path, parts, axis, rotary_heads)
        origin[hf_name] = meta_name

    for meta_name, (hf_name, axis) in TOP_NAMES.items():
        if meta_name == "tok_embeddings.weight" and len(shards) > 1:
            first = shards[0].get(meta_name)
            # Llama 2 split the embedding along its width; Llama 3 along the vocabulary.
            axis = 0 if first is not None and len(first.shape) == 2 and first.shape[1] == dim else 1
        add(meta_name, hf_name, axis)
    for i in range(n_layers):
        for meta_name, (hf_name, axis) in LAYER_NAMES.items():
            heads = n_heads if "wq" in meta_name else n_kv_heads if "wk" in meta_name else None
            add(f"layers.{i}.{meta_name}", f"model.layers.{i}.{hf_name}", axis, heads)

    config = meta_config(folder, params, tensors["model.embed_tokens.weight"])
    check_shapes(config, tensors, origin, shard_paths)
    return config, tensors


def meta_config(folder: str, params: dict, embed) -> LlamaConfig:
    """The LlamaConfig ``params.json`` describes (the vocabulary read off the embedding when it says -1)."""
    vocab = params.get("vocab_size", -1)
    if vocab is None or vocab < 0:  # -1 in params.json: read it off the embedding table
        vocab = embed.shape[0]
    scaling = None
    if params.get("use_scaled_rope"):  # Llama 3.1's frequency scaling, with Meta's constants
        scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
    dim, n_heads = params["dim"], params["n_heads"]
    hidden = meta_intermediate_size(dim, params.get("multiple_of") or 256, params.get("ffn_dim_multiplier"))
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=dim, num_hidden_layers=params["n_layers"], num_attention_heads=n_heads,
        num_key_value_heads=params.get("n_kv_heads") or n_heads, rms_norm_eps=params.get("norm_eps", 1e-5),
        rope_theta=float(params.get("rope_theta", 10000.0)), rope_scaling=scaling,
        intermediate_size=hidden,
        max_position_embeddings=params.get("max_seq_len") or 4096, tie_word_embeddings=False,
        torch_dtype={"F16": "float16", "BF16": "bfloat16", "F32": "float32"}.get(embed.dtype),
        architectures=["LlamaForCausalLM"], source=os.path.join(folder, "params.json"))
    config.validate()
    return config


def check_shapes(config: LlamaConfig, tensors: dict, origin: dict, shard_paths: list[str]) -> None:
    """Each joined tensor has the shape the config gives it."""
    for hf_name, expected in tensor_shapes(config).items():
        got = tensors[hf_name].shape
        if tuple(got) != tuple(expected):
            where = shard_paths[0] if len(shard_paths) == 1 else f"{shard_paths[0]} (and the other shards)"
            raise CheckpointError(f"{where}: tensor {origin[hf_name]!r} has shape {got} joined, but params.json "
                                  f"implies {expected}")
