"""Random checkpoints in Hugging Face's layout, made with NumPy alone.

Real weights cannot be downloaded everywhere (CI, a classroom machine), yet every
path from a checkpoint folder to logits should run. :func:`write_random_checkpoint`
writes a ``config.json`` and safetensors shards (with an index when there is more
than one) holding random values of a useful size: the tensor names, shapes and
dtypes are those of a real checkpoint of the same config.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from safetensors.numpy import save_file

from .config import LlamaConfig

TINY_CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=172, num_hidden_layers=4,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5)


def tensor_shapes(config: LlamaConfig) -> dict[str, tuple]:
    """Every tensor of a LlamaForCausalLM checkpoint with this config, in file order."""
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (c.hidden_size,),
            p + "self_attn.q_proj.weight": (q, c.hidden_size),
            p + "self_attn.k_proj.weight": (kv, c.hidden_size),
            p + "self_attn.v_proj.weight": (kv, c.hidden_size),
            p + "self_attn.o_proj.weight": (c.hidden_size, q),
            p + "post_attention_layernorm.weight": (c.hidden_size,),
            p + "mlp.gate_proj.weight": (c.intermediate_size, c.hidden_size),
            p + "mlp.up_proj.weight": (c.intermediate_size, c.hidden_size),
            p + "mlp.down_proj.weight": (c.hidden_size, c.intermediate_size),
        })
        if c.attention_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,), p + "self_attn.o_proj.bias": (c.hidden_size,)})
        if c.mlp_bias:
            shapes.update({p + "mlp.gate_proj.bias": (c.intermediate_size,), p + "mlp.up_proj.bias": (c.intermediate_size,),
                           p + "mlp.down_proj.bias": (c.hidden_size,)})
    shapes["model.norm.weight"] = (c.hidden_size,)
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    return shapes


def random_tensor(name: str, shape: tuple, rng: np.random.Generator, dtype) -> np.ndarray:
    """Norm gains near 1, biases small, matrices scaled by 1/sqrt(fan_in) so activations stay O(1)."""
    if name.endswith("norm.weight"):
        values = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
    elif len(shape) == 1:
        values = 0.02 * rng.standard_normal(shape, dtype=np.float32)
    else:
        values = rng.standard_normal(shape, dtype=np.float32) / math.sqrt(shape[-1])
    return values.astype(dtype)


def write_random_checkpoint(folder, config: LlamaConfig | dict | None = None, dtype: str = "float32",
                            seed: int = 0, max_shard_bytes: int | None = None) -> LlamaConfig:
    """Write a random checkpoint of ``config`` to ``folder``; return the config.

    dtype: "float32" or "float16". Tensors are made and written one shard at a
    time, so memory holds at most one shard.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if config is None or isinstance(config, dict):
        config = LlamaConfig(**{**TINY_CONFIG, **(config or {})})
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    itemsize = np.dtype(dtype).itemsize

    shards, current, size = [], [], 0
    for name, shape in tensor_shapes(config).items():
        nbytes = math.prod(shape) * itemsize
        if max_shard_bytes and current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)

    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file_name = "model.safetensors" if len(shards) == 1 else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: random_tensor(name, shape, rng, dtype) for name, shape in shard}
        save_file(tensors, os.path.join(folder, file_name), metadata={"format": "pt"})
        weight_map.update({name: file_name for name, _ in shard})
    if len(shards) > 1:
        total = sum(math.prod(s) * itemsize for s in tensor_shapes(config).values())
        with open(os.path.join(folder, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    config_dict = {**config.to_dict(), "architectures": ["LlamaForCausalLM"], "torch_dtype": dtype}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_dict, f, indent=2)
    return config
