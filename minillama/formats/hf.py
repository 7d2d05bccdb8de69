"""Hugging Face checkpoint folders: ``config.json`` and safetensors weights, one file or sharded.

Reading indexes every tensor without loading anything (each is a view of a memory-mapped
file). Writing goes tensor by tensor into shards with an index, atomically: the folder is
written under a temporary name and renamed when complete, so an interrupted write leaves
nothing half-written under the name asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from ..errors import CheckpointError
from .safetensors import nbytes, read_safetensors, write_safetensors
from .tensors import StoredTensor

DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def read_hf_checkpoint(folder: str | os.PathLike) -> dict[str, StoredTensor]:
    """Index every tensor of a Hugging Face checkpoint folder.

    Reads ``model.safetensors``, or the shards listed in ``model.safetensors.index.json``.
    Nothing is loaded into memory: each tensor is a view of a memory-mapped file.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    index_path = os.path.join(folder, "model.safetensors.index.json")
    single_path = os.path.join(folder, "model.safetensors")
    if os.path.exists(index_path):
        return _read_sharded(folder, index_path)
    if os.path.exists(single_path):
        return read_safetensors(single_path)
    pickles = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json") if os.path.exists(os.path.join(folder, n))]
    if pickles:
        raise CheckpointError(f"{folder}: has only PyTorch pickle weights ({pickles[0]}); minillama reads safetensors, "
                              "which cannot run code when loaded. Re-save the model with safe_serialization=True.")
    raise CheckpointError(f"{folder}: no weights found (expected model.safetensors or model.safetensors.index.json)")


def _read_sharded(folder: str, index_path: str) -> dict[str, StoredTensor]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{index_path}: not a valid safetensors index ({error!r})") from None
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(folder, shard)
        if not os.path.exists(shard_path):
            raise CheckpointError(f"{index_path}: names shard {shard!r}, which is missing from {folder}")
        tensors.update(read_safetensors(shard_path))
    for name, shard in weight_map.items():
        if name not in tensors:
            raise CheckpointError(f"{index_path}: says tensor {name!r} is in {shard!r}, but it is not there")
    return tensors


def hf_order(config, names) -> list[str]:
    """Tensor names in the order Hugging Face writes them: embedding, layers, final norm, head."""
    def key(name):
        if name.startswith("model.embed_tokens"):
            return (0, 0, name)
        if name.startswith("model.layers."):
            return (1, int(name.split(".")[2]), name)
        return (2, 0 if name.startswith("model.norm") else 1, name)
    return sorted(names, key=key)


def write_hf_folder(config, tensors: dict, out: str, max_shard_bytes: int = 5 * 2**30, tokenizer_path: str | None = None,
                    progress=None) -> list[str]:
    """Write a Hugging Face checkpoint folder; returns the shard file names."""
    out = os.fspath(out)
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=os.path.basename(out) + ".partial-", dir=parent)
    try:
        names = hf_order(config, tensors)
        shards, current, size = [], [], 0
        for name in names:
            size_of = nbytes(tensors[name])
            if current and size + size_of > max_shard_bytes:
                shards.append(current)
                current, size = [], 0
            current.append(name)
            size += size_of
        shards.append(current)
        files = ["model.safetensors"] if len(shards) == 1 else \
            [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
        for file_name, shard in zip(files, shards):
            write_safetensors(os.path.join(work, file_name), shard, tensors, progress)
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(nbytes(t) for t in tensors.values())},
                     "weight_map": {n: f for f, shard in zip(files, shards) for n in shard}}
            with open(os.path.join(work, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
        stored = tensors[names[0]].dtype
        config_dict = {**config.to_dict(), "architectures": ["LlamaForCausalLM"],
                       "torch_dtype": DTYPE_NAMES.get(stored, "float32")}
        config_dict.pop("num_labels", None)
        with open(os.path.join(work, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config_dict, f, indent=2)
        if tokenizer_path:
            shutil.copyfile(tokenizer_path, os.path.join(work, "tokenizer.model"))
            with open(os.path.join(work, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                           "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}, f, indent=2)
        os.chmod(work, 0o755)  # mkdtemp made it private
        if os.path.exists(out):
            os.rmdir(out)
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return files
