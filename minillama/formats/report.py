"""What ``minillama inspect`` prints: a checkpoint's format, config, size, dtypes and memory needs.

Every figure is arithmetic on the config and on the tensors the files hold: nothing loops over
the config's layer count or allocates by it, so a config claiming a billion layers is reported
(with the mismatch) at once.
"""

from __future__ import annotations

import math
from collections import Counter

from .detect import open_checkpoint
from .names import layer_index
from .safetensors import nbytes

GiB = 2**30
ITEMSIZE = {"float32": 4, "float16": 2}
FORMAT_NAMES = {"hf": "Hugging Face (config.json + safetensors)", "meta": "Meta (params.json + consolidated.*.pth)",
                "llama2c": "llama2.c (.bin)"}


def _divide(n, d):
    """n / d, as a float when it fits in one (a hostile config's sizes can be integers beyond any float)."""
    try:
        return n / d
    except OverflowError:
        return n // d


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n = _divide(n, 1024)


def human_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{_divide(n, size):.2f} {unit}"
    return str(n)


def params_per_layer(tensors: dict) -> dict[int, int]:
    """Layer index -> parameters the files hold for it, from the tensor names (``...layers.<i>.``)."""
    counts = Counter()
    for name, tensor in tensors.items():
        index = layer_index(name)
        if index is not None:
            counts[index] += math.prod(tensor.shape)
    return dict(counts)


def memory_estimates(config, tensors, context: int | None = None) -> list[dict]:
    """Memory a forward needs, per backend and compute dtype, eager and lazy.

    weights: bytes of weights held in the compute dtype (eager: all of them, except that a
    float32 checkpoint computed in float32 on NumPy stays memory-mapped and costs page cache,
    not memory; lazy: the largest layer, embedding rows and the LM head while it runs).
    kv_cache: keys and values for ``context`` positions of one sequence (default: the
    config's ``max_position_embeddings``).
    """
    context = config.max_position_embeddings if context is None else context
    stored = {t.dtype for t in tensors.values()}
    params = sum(math.prod(t.shape) for t in tensors.values())
    layer_params = max(params_per_layer(tensors).values(), default=0)
    head = tensors.get("lm_head.weight") or tensors.get("model.embed_tokens.weight")
    head_params = math.prod(head.shape) if head is not None else 0
    rows = []
    for backend in ("numpy", "cupy"):
        for dtype, size in ITEMSIZE.items():
            kv = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * context * size
            mapped = backend == "numpy" and dtype == "float32" and stored <= {"F32"}
            eager = 0 if mapped else params * size
            lazy = (layer_params + head_params) * size
            rows.append(dict(backend=backend, dtype=dtype, eager_weights=eager, lazy_weights=lazy, kv_cache=kv,
                             mapped=mapped))
    return rows


def describe(path, context: int | None = None) -> str:
    """The report ``minillama inspect`` prints; ``context``: positions for the KV-cache estimate
    (default: the config's ``max_position_embeddings``)."""
    config, tensors, fmt = open_checkpoint(path)
    c = config
    context = c.max_position_embeddings if context is None else context
    params = sum(math.prod(t.shape) for t in tensors.values())
    by_dtype = Counter()
    for t in tensors.values():
        by_dtype[t.dtype] += nbytes(t)
    kind = FORMAT_NAMES[fmt]
    if fmt == "hf" and tensors and all(t.path.endswith(".bin") for t in tensors.values()):
        kind = "Hugging Face (config.json + pytorch_model.bin, read without running code)"
    lines = [
        f"path:        {path}",
        f"format:      {kind}",
        f"parameters:  {params:,} ({human_count(params)})",
        "stored:      " + ", ".join(f"{k} {human_bytes(v)}" for k, v in sorted(by_dtype.items())),
        f"shape:       {c.num_hidden_layers} layers, hidden {c.hidden_size}, intermediate {c.intermediate_size}, "
        f"heads {c.num_attention_heads} (kv {c.num_key_value_heads}, head_dim {c.head_dim}), vocab {c.vocab_size}",
        f"positions:   {c.max_position_embeddings}, rope_theta {c.rope_theta:g}, rope_scaling {c.rope_scaling}",
        f"norm eps:    {c.rms_norm_eps:g}; tied embeddings: {c.tie_word_embeddings}; "
        f"biases: attention {c.attention_bias}, mlp {c.mlp_bias}",
    ]
    held = len(params_per_layer(tensors))
    if held != c.num_hidden_layers:
        lines.append(f"warning:     the config says {c.num_hidden_layers} layers, the files hold {held}; "
                     "loading it will be refused")
    lines += [
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
