"""LoRA fine-tuning: attach low-rank adapters to a model, save and load them as peft does, merge them.

A LoRA adapter on a projection W (out, in) adds (alpha / r) B A x to W x, with A (r, in) and
B (out, r) trained while every weight of the model stays frozen (``functional.lora``). Here:

* :func:`add_lora`: adapters on the chosen projections of every layer, initialised as peft does
  (A uniform in +-1/sqrt(in), which is kaiming_uniform with a = sqrt(5); B zero, so the model
  starts unchanged). It returns the adapter arrays by name, ready for ``AdamW``, and
  ``loss_and_grads`` then returns gradients for exactly those names.
* :func:`save_lora` / :func:`load_lora`: the folder peft's ``save_pretrained`` writes
  (adapter_config.json, adapter_model.safetensors), which ``peft.PeftModel.from_pretrained`` reads.
* :func:`merge_lora`: fold (alpha / r) B A into each weight and drop the adapters.

Names follow peft's without its ``base_model.model.`` prefix and ``.default`` adapter name:
``model.layers.0.self_attn.q_proj.lora_A.weight`` (r, in), ``...q_proj.lora_B.weight`` (out, r).
Adding adapters switches the model to the reference assembly: the fused speed arrangements know
nothing about adapters, and would silently leave them out.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import numpy as np

from ..backend import namespace_of, to_backend
from ..errors import CheckpointError, ConfigError
from ..files import inside_folder, read_json_object
from ..formats.names import LAYER_NAMES
from ..formats.safetensors import read_safetensors, write_safetensors
from ..model.forward import REFERENCE
from ..model.weights import LoraAdapter
from ..modeling_save import SavedTensor

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # peft's module names
PEFT_PREFIX = "base_model.model."
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PARTS = ("lora_A", "lora_B")
# peft's task_type by model class; classification is left out: peft would then expect a trained score head.
TASK_TYPES = {"LlamaForCausalLM": "CAUSAL_LM", "LlamaModel": "FEATURE_EXTRACTION"}


def adapter_name(layer: int, field: str, part: str) -> str:
    """``model.layers.{layer}.self_attn.q_proj.lora_A.weight`` for (layer, "q_proj", "lora_A")."""
    module = LAYER_NAMES[field][:-len(".weight")]  # "self_attn.q_proj"
    return f"model.layers.{layer}.{module}.{part}.weight"


def lora_parameters(model) -> dict:
    """Name -> live array of every adapter matrix of the model (what ``add_lora`` returned)."""
    out = {}
    for i, layer in enumerate(model.weights.layers):
        for field, adapter in (layer.lora or {}).items():
            out[adapter_name(i, field, "lora_A")] = adapter.lora_A
            out[adapter_name(i, field, "lora_B")] = adapter.lora_B
    return out


def _check_trainable(model) -> None:
    if getattr(model, "weights", None) is None or not model.weights.layers:
        raise ValueError("LoRA needs a minillama Llama model (LlamaForCausalLM, ...)")
    if model.weights.lazy_dtype is not None:
        raise ValueError("LoRA needs the weights in memory: load the model with lazy=False")


def _check_settings(r, alpha, target_modules, error=ValueError, source: str = "") -> tuple:
    """r, alpha and the target names checked (peft's names; a single string is refused, as peft reads it as a regex)."""
    where = f"{source}: " if source else ""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise error(f"{where}r must be a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise error(f"{where}lora_alpha must be a positive finite number, got {alpha!r}")
    if isinstance(target_modules, str) or not isinstance(target_modules, (list, tuple, set, frozenset)):
        raise error(f"{where}target_modules must be a list of module names from {TARGETS}, got {target_modules!r}")
    targets = list(target_modules)
    unknown = [t for t in targets if t not in TARGETS]
    if not targets or unknown:
        raise error(f"{where}target_modules must be a non-empty list of names from {TARGETS}, got {targets!r}")
    return r, alpha, tuple(t for t in TARGETS if t in targets)  # in the layer's order, each once


def _attach(model, adapters: dict) -> dict:
    """Put ``(layer, field) -> LoraAdapter`` on the layers and switch to the reference assembly."""
    for i, layer in enumerate(model.weights.layers):
        layer.lora = {field: a for (j, field), a in adapters.items() if j == i} or None
    model.assembly = REFERENCE
    return lora_parameters(model)


def add_lora(model, r: int = 8, alpha: float = 16, target_modules=("q_proj", "v_proj"), seed: int = 0) -> dict:
    """Attach a fresh LoRA adapter to each ``target_modules`` projection of every layer -> the adapter arrays by name.

    As peft's LoraConfig(r, lora_alpha=alpha, target_modules): A (r, in) uniform in
    [-1/sqrt(in), 1/sqrt(in)) drawn from numpy.random.default_rng(seed) layer by layer in the
    order of TARGETS, B (out, r) zero; the update is scaled by alpha / r. Arrays are in the
    model's dtype on its backend.
    """
    _check_trainable(model)
    r, alpha, targets = _check_settings(r, alpha, target_modules)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if any(layer.lora for layer in model.weights.layers):
        raise ValueError("the model already has LoRA adapters: merge_lora them first, or load_lora to replace them")
    rng = np.random.default_rng(seed)
    adapters = {}
    for i, layer in enumerate(model.weights.layers):
        for field in targets:
            weight = getattr(layer, field)  # (out, in)
            xp, dtype = namespace_of(weight), np.dtype(model.dtype)
            out_features, in_features = weight.shape
            bound = 1.0 / math.sqrt(in_features)
            lora_A = rng.uniform(-bound, bound, size=(r, in_features)).astype(dtype)
            lora_B = np.zeros((out_features, r), dtype=dtype)
            adapters[i, field] = LoraAdapter(to_backend(lora_A, xp), to_backend(lora_B, xp), alpha)
    return _attach(model, adapters)


def merge_lora(model):
    """Fold each adapter into its weight, W <- W + (alpha / r) B A, and remove the adapters; returns the model.

    The logits are unchanged (up to rounding). Weights are updated in place where their
    arrays are writeable, so views of them (the fused layouts) stay consistent; the model
    keeps the reference assembly.
    """
    _check_trainable(model)
    for layer in model.weights.layers:
        for field, adapter in (layer.lora or {}).items():
            weight = getattr(layer, field)  # (out, in)
            merged = weight + (adapter.lora_B @ adapter.lora_A) * adapter.scale
            try:
                weight[...] = merged  # in place: views of it (the fused layouts) stay consistent
            except ValueError:  # a read-only memory map of the checkpoint file: a new array instead
                setattr(layer, field, merged)
        layer.lora = None
    return model


def peft_config(model) -> dict:
    """The adapter_config.json peft writes for these adapters (peft's LoraConfig fields)."""
    first = next((layer.lora for layer in model.weights.layers if layer.lora), None)
    if first is None:
        raise ValueError("the model has no LoRA adapters: add_lora or load_lora first")
    adapter = next(iter(first.values()))
    alpha = adapter.alpha
    return {
        "peft_type": "LORA", "task_type": TASK_TYPES.get(type(model).__name__), "base_model_name_or_path": None,
        "revision": None, "inference_mode": True, "r": adapter.lora_A.shape[0],
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "target_modules": [field for field in TARGETS if field in first], "lora_dropout": 0.0,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "lora_bias": False,
        "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "exclude_modules": None,
    }


def peft_key(model, name: str) -> str:
    """peft's file name of an adapter array: ``base_model.model.`` + its name (transformers' bare
    LlamaModel has no ``model.`` before its layers)."""
    return PEFT_PREFIX + (name[len("model."):] if type(model).__name__ == "LlamaModel" else name)


def save_lora(model, save_directory) -> list[str]:
    """Write the adapters as peft does: adapter_config.json and adapter_model.safetensors -> the file names.

    The files are written into a temporary sibling folder first and moved into place when both
    are complete, so a failure part-way leaves nothing half-written under the name asked for.
    """
    config = peft_config(model)
    folder = os.fspath(save_directory)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder}: is a file; save_lora needs a folder")
    tensors = {peft_key(model, name): SavedTensor(array, model.dtype) for name, array in lora_parameters(model).items()}
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(folder)) + ".partial-", dir=parent)
    written = [WEIGHTS_FILE, CONFIG_FILE]
    try:
        write_safetensors(os.path.join(work, WEIGHTS_FILE), list(tensors), tensors)
        with open(os.path.join(work, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if os.path.isdir(folder):
            for name in written:
                os.replace(os.path.join(work, name), os.path.join(folder, name))
            os.rmdir(work)
        else:
            os.chmod(work, 0o755)  # mkdtemp made it private
            os.rename(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return written


# adapter_config.json fields that change what the adapters compute, which minillama cannot honour,
# with the value that means "not used" (a missing field is not used). Dropout only acts in training
# and is not applied; initialisation choices (init_lora_weights, ...) no longer matter once trained.
UNSUPPORTED = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "lora_bias": False, "bias": "none",
               "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "modules_to_save": None,
               "target_parameters": None, "trainable_token_indices": None, "layer_replication": None,
               "exclude_modules": None, "alora_invocation_tokens": None, "use_bdlora": None, "arrow_config": None,
               "monteclora_config": None, "kasa_config": None}


def read_adapter_config(path: str) -> tuple:
    """(r, alpha, targets) from a peft adapter_config.json; anything else is a ConfigError naming the field."""
    raw = read_json_object(path, ConfigError)
    if raw.get("peft_type") != "LORA":
        raise ConfigError(f"{path}: peft_type must be 'LORA', got {raw.get('peft_type')!r}")
    for field, unused in UNSUPPORTED.items():
        value = raw.get(field, unused)
        empty = unused in (None, {}) and value in (None, [], {})  # peft writes null, [] or {} alike
        if value != unused and not empty:
            raise ConfigError(f"{path}: {field}={value!r} is not supported (only {unused!r})")
    for field in ("r", "lora_alpha", "target_modules"):
        if field not in raw:
            raise ConfigError(f"{path}: field {field!r} is missing")
    return _check_settings(raw["r"], raw["lora_alpha"], raw["target_modules"], ConfigError, path)


def read_adapter_tensor(tensors: dict, key: str, shape: tuple, dtype, path: str) -> np.ndarray:
    """One adapter matrix from the file, checked: present, floating point, of ``shape``, finite."""
    stored = tensors.get(key)
    if stored is None:
        raise CheckpointError(f"{path}: tensor {key!r} is missing")
    if stored.dtype not in ("F64", "F32", "F16", "BF16"):
        raise CheckpointError(f"{path}: tensor {key!r} has dtype {stored.dtype}, not a floating-point one")
    if tuple(stored.shape) != tuple(shape):
        raise CheckpointError(f"{path}: tensor {key!r} has shape {tuple(stored.shape)}, but the model needs {shape}")
    array = np.array(stored.numpy(dtype))  # a copy: the adapter is trained in place
    if not np.all(np.isfinite(array)):
        raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values")
    return array


def load_lora(model, adapter_directory) -> dict:
    """Attach the adapters of a peft folder (adapter_config.json, adapter_model.safetensors) -> the arrays by name.

    Replaces any adapters the model had. Every tensor is checked against the model's shapes; a
    missing, extra or malformed one is a CheckpointError naming the file and the tensor.
    """
    _check_trainable(model)
    folder = os.fspath(adapter_directory)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"LoRA adapter folder not found: {folder}")
    r, alpha, targets = read_adapter_config(inside_folder(folder, CONFIG_FILE))
    path = inside_folder(folder, WEIGHTS_FILE)
    if not os.path.exists(path) and os.path.exists(inside_folder(folder, "adapter_model.bin")):
        raise CheckpointError(f"{folder}: only adapter_model.bin (a PyTorch pickle) is there; minillama reads "
                              f"safetensors only")
    tensors = read_safetensors(path)
    dtype, adapters, expected = np.dtype(model.dtype), {}, set()
    for i, layer in enumerate(model.weights.layers):
        for field in targets:
            weight = getattr(layer, field)  # (out, in)
            out_features, in_features = weight.shape
            parts = []
            for part, shape in zip(PARTS, ((r, in_features), (out_features, r))):
                key = peft_key(model, adapter_name(i, field, part))
                expected.add(key)
                parts.append(to_backend(read_adapter_tensor(tensors, key, shape, dtype, path), namespace_of(weight)))
            adapters[i, field] = LoraAdapter(parts[0], parts[1], alpha)
    extra = sorted(set(tensors) - expected)
    if extra:
        raise CheckpointError(f"{path}: tensor {extra[0]!r} is not an adapter of this model's "
                              f"{len(model.weights.layers)} layers and target_modules {list(targets)}")
    return _attach(model, adapters)
