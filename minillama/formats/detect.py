"""Which checkpoint format a path holds, and one way to open any of them.

Every reader returns the same thing: a :class:`LlamaConfig` and a dict from
Hugging Face tensor names to lazy tensors (``.shape``, ``.dtype``, ``.raw()``,
``.numpy(dtype)``), so the model is built the same way whatever the source.
"""

from __future__ import annotations

import os

from ..config import LlamaConfig
from ..errors import CheckpointError
from .hf import read_hf_checkpoint

FORMATS = ("hf", "meta", "llama2c")


def detect_format(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isfile(path):
        if path.endswith(".bin") and os.path.basename(path) != "pytorch_model.bin":
            return "llama2c"
        if os.path.basename(path) == "config.json":
            return "hf"
        raise CheckpointError(f"{path}: not a checkpoint minillama reads (a folder, or a llama2.c .bin file)")
    if os.path.exists(os.path.join(path, "config.json")):
        return "hf"
    if os.path.exists(os.path.join(path, "params.json")):
        return "meta"
    bins = [n for n in os.listdir(path) if n.endswith(".bin") and n != "tokenizer.bin" and not n.startswith("pytorch_model")]
    if len(bins) == 1:
        return "llama2c"
    raise FileNotFoundError(f"{path}: no config.json (Hugging Face), params.json (Meta) or llama2.c .bin found")


def open_checkpoint(path) -> tuple[LlamaConfig, dict, str]:
    """(config, HF-named lazy tensors, format) for a checkpoint in any supported format."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt == "hf":
        folder = os.path.dirname(path) if os.path.isfile(path) else path
        return LlamaConfig.from_pretrained(folder), read_hf_checkpoint(folder), fmt
    if fmt == "meta":
        from .meta import read_meta_checkpoint
        config, tensors = read_meta_checkpoint(path)
        return config, tensors, fmt
    from .llama2c import read_llama2c_checkpoint
    if os.path.isdir(path):
        path = os.path.join(path, next(n for n in os.listdir(path) if n.endswith(".bin") and n != "tokenizer.bin"))
    config, tensors = read_llama2c_checkpoint(path)
    return config, tensors, fmt
