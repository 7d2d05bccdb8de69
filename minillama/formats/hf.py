"""Hugging Face checkpoint folders: ``config.json`` and weights, one file or sharded.

Reading indexes every tensor without loading anything (each is a view of a memory-mapped
file). Safetensors weights (``model.safetensors``, or shards listed in
``model.safetensors.index.json``) are preferred; a folder with only PyTorch weights
(``pytorch_model.bin``, or ``.bin`` shards listed in ``pytorch_model.bin.index.json``) is
read with :func:`minillama.formats.pth.read_pth`, which runs no code from the file.

An index is held to what it claims: every shard it names must lie inside the folder
(links inside the folder are followed, as the Hugging Face cache needs: its snapshot
files are links into ``../../blobs``), every tensor must be in the shard the index says
and in no other, and every tensor of a shard must be listed.

Writing goes tensor by tensor into shards with an index, atomically: the folder is
written under a temporary name and renamed when complete, so an interrupted write leaves
nothing half-written under the name asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from ..errors import CheckpointError
from ..files import check_regular_file, inside_folder, open_regular_file, read_json_object
from .names import layer_index
from .safetensors import nbytes, read_safetensors, write_safetensors
from .tensors import StoredTensor

DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _read_pth(path: str) -> dict[str, StoredTensor]:
    from .pth import read_pth
    try:
        check_regular_file(path, CheckpointError)  # opening a FIFO to read it as a zip would block
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    return read_pth(path)


# (single file, index) of each weights layout, in the order they are looked for, with the reader of a file
WEIGHT_LAYOUTS = (("model.safetensors", "model.safetensors.index.json", read_safetensors),
                  ("pytorch_model.bin", "pytorch_model.bin.index.json", _read_pth))


def read_hf_checkpoint(folder: str | os.PathLike) -> dict[str, StoredTensor]:
    """Index every tensor of a Hugging Face checkpoint folder.

    Reads ``model.safetensors`` or the shards listed in ``model.safetensors.index.json``;
    failing those, ``pytorch_model.bin`` or the shards of ``pytorch_model.bin.index.json``.
    Nothing is loaded into memory: each tensor is a view of a memory-mapped file.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    for single, index, reader in WEIGHT_LAYOUTS:
        index_path, single_path = os.path.join(folder, index), os.path.join(folder, single)
        if os.path.lexists(index_path):
            return _read_sharded(folder, index_path, reader)
        if os.path.lexists(single_path):
            return reader(single_path)
    raise CheckpointError(f"{folder}: no weights found (expected model.safetensors, model.safetensors.index.json, "
                          "pytorch_model.bin or pytorch_model.bin.index.json)")


def read_weight_map(folder: str, index_path: str) -> dict[str, str]:
    """Tensor name -> shard path, from an index, every shard confined to ``folder``."""
    index = read_json_object(index_path, CheckpointError)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: not a valid index (needs a non-empty \"weight_map\" object of "
                              "tensor name -> shard file)")
    shard_paths = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index_path}: weight_map[{name!r}] must be a file name, got {shard!r}")
        if shard not in shard_paths:
            shard_paths[shard] = inside_folder(folder, shard, CheckpointError, index_path)
    return {name: shard_paths[shard] for name, shard in weight_map.items()}


def _read_sharded(folder: str, index_path: str, reader) -> dict[str, StoredTensor]:
    weight_map = read_weight_map(folder, index_path)
    tensors, found_in = {}, {}
    for shard_path in sorted(set(weight_map.values())):
        if not os.path.lexists(shard_path):
            raise CheckpointError(f"{index_path}: names shard {os.path.relpath(shard_path, folder)!r}, "
                                  f"which is missing from {folder}")
        for name, tensor in reader(shard_path).items():
            if name in found_in:
                raise CheckpointError(f"{shard_path}: tensor {name!r} is also in {found_in[name]}")
            if name not in weight_map:
                raise CheckpointError(f"{shard_path}: tensor {name!r} is not listed in {index_path}")
            if weight_map[name] != shard_path:
                raise CheckpointError(f"{shard_path}: holds tensor {name!r}, which {index_path} places in "
                                      f"{os.path.relpath(weight_map[name], folder)!r}")
            found_in[name], tensors[name] = shard_path, tensor
    for name, shard_path in weight_map.items():
        if name not in tensors:
            raise CheckpointError(f"{index_path}: says tensor {name!r} is in "
                                  f"{os.path.relpath(shard_path, folder)!r}, but it is not there")
    return tensors


def hf_order(config, names) -> list[str]:
    """Tensor names in the order Hugging Face writes them: embedding, layers, final norm, head."""
    def key(name):
        if name.startswith(("model.embed_tokens", "embed_tokens")):
            return (0, 0, name)
        if layer_index(name) is not None:
            return (1, layer_index(name), name)
        return (2, 0 if name.startswith(("model.norm", "norm")) else 1, name)
    return sorted(names, key=key)


def shard_plan(names: list[str], tensors: dict, max_shard_bytes: int) -> list[list[str]]:
    """Names grouped into shards of at most ``max_shard_bytes`` each (a larger tensor gets a shard of its own)."""
    shards, current, size = [], [], 0
    for name in names:
        size_of = nbytes(tensors[name])
        if current and size + size_of > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += size_of
    shards.append(current)
    return shards


DEFAULT_TOKENIZER_CONFIG = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                            "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}


def write_hf_folder(config, tensors: dict, out: str, max_shard_bytes: int = 5 * 2**30, tokenizer_path: str | None = None,
                    progress=None, extra_files: dict | None = None) -> list[str]:
    """Write a Hugging Face checkpoint folder; returns the shard file names.

    tokenizer_path: a ``tokenizer.model`` to copy in (with a default ``tokenizer_config.json``
    unless ``extra_files`` brings one). extra_files: file name in the folder -> a file to copy
    there unchanged (the source's tokenizer and generation files).
    """
    out = os.fspath(out)
    if os.path.lexists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"{out} exists and is not empty (or not a folder); choose a new folder")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    copies = dict(extra_files or {})
    if tokenizer_path:
        copies.setdefault("tokenizer.model", tokenizer_path)
    work = None
    try:
        work = tempfile.mkdtemp(prefix=os.path.basename(out) + ".partial-", dir=parent)
        files = _write_weights(config, tensors, work, max_shard_bytes, progress)
        for name, source in copies.items():
            _copy_regular_file(source, os.path.join(work, name))
        if "tokenizer.model" in copies and "tokenizer_config.json" not in copies:
            _write_json(os.path.join(work, "tokenizer_config.json"), DEFAULT_TOKENIZER_CONFIG)
        os.chmod(work, 0o755)  # mkdtemp made it private
        if os.path.exists(out):
            os.rmdir(out)
        os.rename(work, out)
    except BaseException:  # an error, Ctrl-C, or a signal turned into an exception (see convert): leave nothing
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return files


def _write_weights(config, tensors: dict, work: str, max_shard_bytes: int, progress) -> list[str]:
    """The safetensors shards, their index (when more than one) and config.json, in ``work``."""
    names = hf_order(config, tensors)
    shards = shard_plan(names, tensors, max_shard_bytes)
    files = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for file_name, shard in zip(files, shards):
        write_safetensors(os.path.join(work, file_name), shard, tensors, progress)
    if len(shards) > 1:
        _write_json(os.path.join(work, "model.safetensors.index.json"),
                    {"metadata": {"total_size": sum(nbytes(t) for t in tensors.values())},
                     "weight_map": {n: f for f, shard in zip(files, shards) for n in shard}})
    stored = tensors[names[0]].dtype
    classifier = "score.weight" in tensors
    config_dict = {**config.to_dict(), "torch_dtype": DTYPE_NAMES.get(stored, "float32"),
                   "architectures": ["LlamaForSequenceClassification" if classifier else "LlamaForCausalLM"]}
    if not classifier:
        config_dict.pop("num_labels", None)
    _write_json(os.path.join(work, "config.json"), config_dict)
    return files


def _write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)


def _copy_regular_file(source: str, target: str) -> None:
    """Copy a file byte for byte, refusing a FIFO or device (which could block the copy forever)."""
    with open_regular_file(source, CheckpointError) as f, open(target, "wb") as g:
        shutil.copyfileobj(f, g, 2**20)
