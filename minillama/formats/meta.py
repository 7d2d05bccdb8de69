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
"""

from __future__ import annotations

import glob
import os

from ..config import LlamaConfig
from ..errors import CheckpointError
from ..files import read_json_object
from .tensors import DerivedTensor
from .pth import read_pth

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


def is_meta_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "params.json"))


def read_params(folder: str) -> dict:
    path = os.path.join(folder, "params.json")
    params = read_json_object(path, CheckpointError)
    for key in ("dim", "n_layers", "n_heads"):
        if not isinstance(params.get(key), int):
            raise CheckpointError(f"{path}: needs an integer {key!r}")
    return params


def read_meta_checkpoint(folder: str) -> tuple[LlamaConfig, dict]:
    """Config and Hugging Face-named tensors of a Meta folder; shards merged lazily."""
    folder = os.fspath(folder)
    params = read_params(folder)
    shard_paths = sorted(glob.glob(os.path.join(folder, "consolidated.*.pth")))
    if not shard_paths:
        raise CheckpointError(f"{folder}: no consolidated.*.pth shards")
    shards = [read_pth(p) for p in shard_paths]

    dim, n_heads, n_layers = params["dim"], params["n_heads"], params["n_layers"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    tensors = {}

    def add(meta_name, hf_name, axis, rotary_heads=None):
        parts = [s.get(meta_name) for s in shards]
        missing = [p for p, t in zip(shard_paths, parts) if t is None]
        if missing:
            raise CheckpointError(f"{missing[0]}: tensor {meta_name!r} is missing")
        shape = list(parts[0].shape)
        if axis is not None and len(parts) > 1:
            shape[axis] = sum(p.shape[axis] for p in parts)
        tensors[hf_name] = DerivedTensor(hf_name, parts[0].dtype, tuple(shape), parts[0].path, parts,
                                         axis, rotary_heads)

    for meta_name, (hf_name, axis) in TOP_NAMES.items():
        if meta_name == "tok_embeddings.weight" and len(shards) > 1:
            first = shards[0].get(meta_name)
            # Llama 2 split the embedding along its width; Llama 3 along the vocabulary.
            axis = 0 if first is not None and first.shape[1] == dim else 1
        add(meta_name, hf_name, axis)
    for i in range(n_layers):
        for meta_name, (hf_name, axis) in LAYER_NAMES.items():
            heads = n_heads if "wq" in meta_name else n_kv_heads if "wk" in meta_name else None
            add(f"layers.{i}.{meta_name}", f"model.layers.{i}.{hf_name}", axis, heads)

    embed = tensors["model.embed_tokens.weight"]
    vocab = params.get("vocab_size", -1)
    if vocab is None or vocab < 0:  # -1 in params.json: read it off the embedding table
        vocab = embed.shape[0]
    scaling = None
    if params.get("use_scaled_rope"):  # Llama 3.1's frequency scaling, with Meta's constants
        scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=dim, num_hidden_layers=n_layers, num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads, rms_norm_eps=params.get("norm_eps", 1e-5),
        rope_theta=float(params.get("rope_theta", 10000.0)), rope_scaling=scaling,
        intermediate_size=meta_intermediate_size(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier")),
        max_position_embeddings=params.get("max_seq_len", 4096), tie_word_embeddings=False,
        torch_dtype={"F16": "float16", "BF16": "bfloat16", "F32": "float32"}.get(embed.dtype),
        architectures=["LlamaForCausalLM"], source=os.path.join(folder, "params.json"))
    return config, tensors
