"""A fresh model to train, and a trainable copy of a loaded one.

:func:`init_model` draws the weights as transformers' ``LlamaPreTrainedModel._init_weights``
does: every matrix (embedding, projections, LM head) normal with mean 0 and standard
deviation ``config.initializer_range``, every RMSNorm gain 1, every bias 0. The draws come
from a NumPy generator seeded per tensor by ``(seed, tensor index)``, so the same config and
seed give the same model on every backend. The arrays are float32 and writable, in memory.

:func:`trainable_copy` turns a model from ``from_pretrained`` (whose float32 weights may be
read-only memory maps of the file) into one with writable float32 arrays of its own.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_namespace, to_backend, to_numpy
from ..formats.names import LAYER_NAMES, tensor_shapes
from ..model import Weights
from ..model.weights import LayerWeights
from ..modeling import LlamaForCausalLM


def initial_tensor(name: str, shape: tuple, std: float, rng: np.random.Generator) -> np.ndarray:
    """One parameter's starting value: norms 1, biases 0, matrices normal(0, std); float32."""
    if name.endswith("norm.weight"):
        return np.ones(shape, dtype=np.float32)
    if name.endswith(".bias"):
        return np.zeros(shape, dtype=np.float32)
    return (std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)


def initial_tensors(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging Face name -> the float32 starting value of every parameter of a LlamaForCausalLM."""
    tensors = {}
    for i, (name, shape) in enumerate(tensor_shapes(config).items()):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
        tensors[name] = initial_tensor(name, shape, config.initializer_range, rng)
    return tensors


def weights_from_tensors(tensors: dict, config, xp) -> Weights:
    """Weights holding ``tensors`` (name -> host array), moved to the backend ``xp``; tied heads share one table."""
    def get(name):
        return to_backend(tensors[name], xp) if name in tensors else None

    layers = [LayerWeights(**{key: get(f"model.layers.{i}.{LAYER_NAMES[key]}") for key in LAYER_NAMES})
              for i in range(config.num_hidden_layers)]
    embed = get("model.embed_tokens.weight")
    head = embed if config.tie_word_embeddings else get("lm_head.weight")
    return Weights(embed_tokens=embed, layers=layers, norm=get("model.norm.weight"), lm_head=head, xp=xp)


def init_model(config, seed: int = 0, backend: str = "numpy") -> LlamaForCausalLM:
    """A LlamaForCausalLM of ``config`` with freshly drawn float32 weights (see the module docstring)."""
    xp = get_namespace(backend)
    weights = weights_from_tensors(initial_tensors(config, seed), config, xp)
    return LlamaForCausalLM(config, weights, backend=backend, dtype="float32")


def trainable_copy(model) -> LlamaForCausalLM:
    """A LlamaForCausalLM with the same config and values as ``model``, in writable float32 arrays of its own.

    The copy uses the reference assembly, whose weights are the plain (out, in) matrices
    that ``loss_and_grads`` and the optimizer update in place.
    """
    if getattr(model.weights, "lm_head", None) is None:
        raise ValueError("training needs a LlamaForCausalLM (a model with an LM head)")
    if model.weights.lazy_dtype is not None:
        raise ValueError("training needs the weights in memory: load with lazy=False")
    if model.assembly.name != "reference":
        raise ValueError(f"training needs the plain weight layout: load with assembly='reference', "
                         f"not {model.assembly.name!r}")
    tensors = {name: np.array(to_numpy(value), dtype=np.float32, copy=True)
               for name, value in model.state_dict().items()}
    weights = weights_from_tensors(tensors, model.config, model.xp)
    return LlamaForCausalLM(model.config, weights, backend=model.backend, dtype="float32")


def load_trainable(path, backend: str = "numpy") -> LlamaForCausalLM:
    """A checkpoint folder as a LlamaForCausalLM to train: float32, in memory, writable, reference assembly."""
    model = LlamaForCausalLM.from_pretrained(path, backend=backend, dtype="float32", lazy=False, assembly="reference")
    return trainable_copy(model)


__all__ = ["init_model", "initial_tensors", "trainable_copy", "load_trainable"]
