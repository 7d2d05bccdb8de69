"""Which checkpoint format a path holds, and one way to open any of them.

Every reader returns the same thing: a :class:`LlamaConfig` and a dict from
Hugging Face tensor names to lazy tensors (``.shape``, ``.dtype``, ``.raw()``,
``.numpy(dtype)``), so the model is built the same way whatever the source.
"""

from __future__ import annotations

import os

from ..config import LlamaConfig
from ..errors import CheckpointError
from ..files import check_regular_file
from .hf import read_hf_checkpoint

FORMATS = ("hf", "meta", "llama2c")


def detect_format(path) -> str:
    """"hf", "meta" or "llama2c": what the folder (or file) at ``path`` holds."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not os.path.isdir(path):
        check_regular_file(path, CheckpointError)  # a FIFO or device is refused here, before anything opens it
        if path.endswith(".bin") and os.path.basename(path) != "pytorch_model.bin":
            return "llama2c"
        if os.path.basename(path) == "config.json":
            return "hf"
        raise CheckpointError(f"{path}: not a checkpoint minillama reads (a folder, or a llama2.c .bin file)")
    if os.path.exists(os.path.join(path, "config.json")):
        return "hf"
    if os.path.exists(os.path.join(path, "params.json")):
        return "meta"
    if len(_llama2c_files(path)) == 1:
        return "llama2c"
    raise FileNotFoundError(f"{path}: no config.json (Hugging Face), params.json (Meta) or llama2.c .bin found")


def _llama2c_files(folder: str) -> list[str]:
    """The .bin files of a folder that can be llama2.c checkpoints (not its tokenizer, not PyTorch weights)."""
    return sorted(n for n in os.listdir(folder)
                  if n.endswith(".bin") and n != "tokenizer.bin" and not n.startswith("pytorch_model"))


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
        path = os.path.join(path, _llama2c_files(path)[0])
    config, tensors = read_llama2c_checkpoint(path)
    return config, tensors, fmt
