"""Writing Hugging Face checkpoint folders, one tensor at a time.

``convert`` turns a Meta folder or a llama2.c ``.bin`` into a Hugging Face folder
(``config.json``, safetensors shards with ``model.safetensors.index.json``, the
tokenizer). Every tensor is read, merged and permuted on its own and written
straight to its shard, so memory holds about one tensor at a time (Hugging Face's
own script holds the whole model). The folder is written under a temporary name
and renamed when complete: an interrupted conversion leaves nothing half-written
under the name you asked for.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile

import numpy as np

from .formats import open_checkpoint

DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def hf_order(config, names) -> list[str]:
    """Tensor names in the order Hugging Face writes them: embedding, layers, final norm, head."""
    def key(name):
        if name.startswith("model.embed_tokens"):
            return (0, 0, name)
        if name.startswith("model.layers."):
            return (1, int(name.split(".")[2]), name)
        return (2, 0 if name.startswith("model.norm") else 1, name)
    return sorted(names, key=key)


def write_safetensors(path: str, names: list[str], tensors: dict, progress=None) -> None:
    """Write ``names`` from ``tensors`` (lazy, with .raw()) to one safetensors file, tensor by tensor."""
    header, offset = {}, 0
    for name in names:
        t = tensors[name]
        nbytes = _nbytes(t)
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # align the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name in names:
            array = np.ascontiguousarray(tensors[name].raw())
            if list(array.shape) != header[name]["shape"]:
                raise ValueError(f"tensor {name!r} produced shape {array.shape}, expected {header[name]['shape']}")
            f.write(memoryview(array).cast("B"))
            if progress is not None:
                progress(name)


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _nbytes(tensor) -> int:
    return math.prod(tensor.shape) * _ITEMSIZE[tensor.dtype]


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
            nbytes = _nbytes(tensors[name])
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = [], 0
            current.append(name)
            size += nbytes
        shards.append(current)
        files = ["model.safetensors"] if len(shards) == 1 else \
            [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
        for file_name, shard in zip(files, shards):
            write_safetensors(os.path.join(work, file_name), shard, tensors, progress)
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(_nbytes(t) for t in tensors.values())},
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


def convert(src: str, out: str, max_shard_bytes: int = 5 * 2**30, progress=None) -> list[str]:
    """Convert a Meta folder or a llama2.c .bin (or re-shard an HF folder) into a Hugging Face folder."""
    config, tensors, fmt = open_checkpoint(src)
    folder = src if os.path.isdir(src) else os.path.dirname(src)
    tokenizer = os.path.join(folder, "tokenizer.model")
    return write_hf_folder(config, tensors, out, max_shard_bytes,
                           tokenizer if os.path.exists(tokenizer) else None, progress)
