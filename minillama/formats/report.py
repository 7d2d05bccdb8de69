"""What ``minillama inspect`` prints: a checkpoint's format, config, size, dtypes and memory needs."""

from __future__ import annotations

import math
from collections import Counter

from .detect import open_checkpoint
from .safetensors import nbytes

GiB = 2**30


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)
ITEMSIZE = {"float32": 4, "float16": 2}


def memory_estimates(config, tensors, context: int = 4096) -> list[dict]:
    """Memory a forward needs, per backend and compute dtype, eager and lazy.

    weights: bytes of weights held in the compute dtype (eager: all of them, except that a
    float32 checkpoint computed in float32 on NumPy stays memory-mapped and costs page cache,
    not memory; lazy: the largest layer, embedding rows and the LM head while it runs).
    kv_cache: keys and values for ``context`` positions of one sequence.
    """
    stored = {t.dtype for t in tensors.values()}
    params = sum(math.prod(t.shape) for t in tensors.values())
    layer_params = max(sum(math.prod(t.shape) for n, t in tensors.items() if n.startswith(f"model.layers.{i}."))
                       for i in range(config.num_hidden_layers))
    head = tensors.get("lm_head.weight") or tensors.get("model.embed_tokens.weight")
    rows = []
    for backend in ("numpy", "cupy"):
        for dtype, size in ITEMSIZE.items():
            kv = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * context * size
            mapped = backend == "numpy" and dtype == "float32" and stored <= {"F32"}
            eager = 0 if mapped else params * size
            lazy = (layer_params + math.prod(head.shape)) * size
            rows.append(dict(backend=backend, dtype=dtype, eager_weights=eager, lazy_weights=lazy, kv_cache=kv,
                             mapped=mapped))
    return rows


def describe(path, context: int = 4096) -> str:
    config, tensors, fmt = open_checkpoint(path)
    c = config
    params = sum(math.prod(t.shape) for t in tensors.values())
    by_dtype = Counter()
    for t in tensors.values():
        by_dtype[t.dtype] += nbytes(t)
    lines = [
        f"path:        {path}",
        f"format:      {dict(hf='Hugging Face (config.json + safetensors)', meta='Meta (params.json + consolidated.*.pth)', llama2c='llama2.c (.bin)')[fmt]}",
        f"parameters:  {params:,} ({human_count(params)})",
        "stored:      " + ", ".join(f"{k} {human_bytes(v)}" for k, v in sorted(by_dtype.items())),
        f"shape:       {c.num_hidden_layers} layers, hidden {c.hidden_size}, intermediate {c.intermediate_size}, "
        f"heads {c.num_attention_heads} (kv {c.num_key_value_heads}, head_dim {c.head_dim}), vocab {c.vocab_size}",
        f"positions:   {c.max_position_embeddings}, rope_theta {c.rope_theta:g}, rope_scaling {c.rope_scaling}",
        f"norm eps:    {c.rms_norm_eps:g}; tied embeddings: {c.tie_word_embeddings}; "
        f"biases: attention {c.attention_bias}, mlp {c.mlp_bias}",
        "",
        f"memory for a forward (weights in the compute dtype; KV cache for {context} positions, batch 1):",
        f"  {'backend':8s} {'dtype':8s} {'eager weights':>14s} {'lazy weights':>13s} {'KV cache':>10s}",
    ]
    for row in memory_estimates(config, tensors, context):
        eager = "0 (mmap)" if row["mapped"] else human_bytes(row["eager_weights"])
        lines.append(f"  {row['backend']:8s} {row['dtype']:8s} {eager:>14s} {human_bytes(row['lazy_weights']):>13s} "
                     f"{human_bytes(row['kv_cache']):>10s}")
    lines.append("  (lazy: weights stay memory-mapped in their stored dtype and each layer is upcast when it runs;"
                 " minillama picks it when eager would not fit)")
    return "\n".join(lines)
