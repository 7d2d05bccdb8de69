"""``model.save_pretrained``: a model written as a Hugging Face folder that transformers loads.

The folder holds ``config.json``, the weights as safetensors (split into shards listed in
``model.safetensors.index.json`` when they pass ``max_shard_size``) and, for a causal LM,
``generation_config.json``, as transformers' ``save_pretrained`` writes them:

* a tied LM head is the embedding table itself, so it is stored once (no ``lm_head.weight``);
* shards fill in the order of the state dict, a tensor larger than a shard gets a shard of its own;
* weights are written in the model's dtype, one tensor at a time: a lazy model's tensors are
  read (and upcast) only while they are written, so memory never holds all of them.

Everything is written into a temporary sibling folder first. A new folder is that one renamed;
an existing folder receives the finished files (old shards that the new save does not replace
are removed), so a failure part-way leaves nothing half-written under the name asked for.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile

import numpy as np

from .backend import to_numpy
from .formats.safetensors import nbytes, write_safetensors
from .formats.tensors import DerivedTensor, StoredTensor
from .model import state_dict_names

SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "float64": "F64"}
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def parse_shard_size(size) -> int:
    """Bytes from an int or a string such as "5GB" (10**9 bytes), "1.5MB" or "2GiB" (2**30 bytes).

    Decimal units are read as huggingface_hub reads them (transformers' ``max_shard_size``);
    the binary ones (KiB, MiB, GiB, TiB) are accepted too.
    """
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 1:
            raise ValueError(f"max_shard_size must be a positive number of bytes, got {size!r}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]i?B)\s*", size, re.IGNORECASE) if isinstance(size, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"max_shard_size must be a positive integer or a size such as '5GB' or '500MB', got {size!r}")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()])


class SavedTensor:
    """One parameter as ``write_safetensors`` reads it: a dtype name, a shape, and ``raw()``,
    which makes the host array in the saved dtype only when the tensor is written."""

    def __init__(self, value, np_dtype):
        self.value, self.np_dtype = value, np.dtype(np_dtype)
        self.shape = tuple(value.shape)
        self.dtype = SAFETENSORS_DTYPES[self.np_dtype.name]

    def raw(self) -> np.ndarray:
        if isinstance(self.value, (StoredTensor, DerivedTensor)):  # lazy: read from its file now
            return self.value.numpy(self.np_dtype)
        return to_numpy(self.value).astype(self.np_dtype, copy=False)


def split_into_shards(tensors: dict, max_bytes: int) -> list[list[str]]:
    """Names in shards of at most ``max_bytes``, in order; as huggingface_hub splits a state dict."""
    shards, current, size = [], [], 0
    for name, tensor in tensors.items():
        size_of = nbytes(tensor)
        if size_of > max_bytes:  # a tensor larger than a shard is a shard of its own
            shards.append([name])
            continue
        if current and size + size_of > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += size_of
    if current:
        shards.append(current)
    return shards


def write_weights(folder: str, tensors: dict, max_bytes: int, num_parameters: int) -> list[str]:
    """The safetensors file(s) and, when sharded, the index; returns the file names written."""
    shards = split_into_shards(tensors, max_bytes)
    files = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for file_name, names in zip(files, shards):
        write_safetensors(os.path.join(folder, file_name), names, tensors)
    if len(shards) == 1:
        return files
    index = {"metadata": {"total_parameters": num_parameters, "total_size": sum(nbytes(t) for t in tensors.values())},
             "weight_map": {name: f for f, names in zip(files, shards) for name in names}}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return files + ["model.safetensors.index.json"]


def move_into(work: str, folder: str, written: list[str]) -> None:
    """Move the finished files from ``work`` into the existing ``folder``, then drop stale weights.

    Stale: shards of an earlier save that this one does not overwrite (as transformers removes
    them), and an earlier single ``model.safetensors`` or index that would shadow the new weights.
    """
    for name in written:
        os.replace(os.path.join(work, name), os.path.join(folder, name))
    for name in os.listdir(folder):
        stale = SHARD_NAME.fullmatch(name) or name in ("model.safetensors", "model.safetensors.index.json")
        if stale and name not in written and os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))


def save_pretrained(model, save_directory, max_shard_size="5GB", safe_serialization: bool = True) -> list[str]:
    """Write ``model`` to ``save_directory`` as a Hugging Face folder; returns the file names written.

    max_shard_size: an int (bytes) or a string ("5GB", "500MB", "2GiB"); above it the weights
    are split into shards with an index. safe_serialization: only True (minillama writes
    safetensors, never pickles).
    """
    if safe_serialization is not True:
        raise ValueError("safe_serialization must be True: minillama writes safetensors only, never PyTorch pickles")
    if any(getattr(layer, "lora", None) for layer in model.weights.layers):
        raise ValueError("this model carries LoRA adapters: save them with minillama.train.save_lora, "
                         "or fold them in with merge_lora before save_pretrained")
    max_bytes = parse_shard_size(max_shard_size)
    folder = os.fspath(save_directory)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder}: is a file; save_pretrained needs a folder")
    prefix = "" if type(model).__name__ == "LlamaModel" else "model."  # transformers' base model has no prefix
    dtype = np.dtype(model.dtype)
    tensors = {name: SavedTensor(value, dtype) for name, value in state_dict_names(model.weights, model.config, prefix).items()}
    config = dataclasses.replace(model.config, architectures=[type(model).__name__], torch_dtype=dtype.name)
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(folder)) + ".partial-", dir=parent)
    try:
        written = write_weights(work, tensors, max_bytes, model.num_parameters())
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(work)
            written.append("generation_config.json")
        config.save_pretrained(work)
        written.append("config.json")  # last: a folder with a config.json is complete
        if os.path.isdir(folder):
            move_into(work, folder, written)
            os.rmdir(work)
        else:
            os.chmod(work, 0o755)  # mkdtemp made it private
            os.rename(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return written
