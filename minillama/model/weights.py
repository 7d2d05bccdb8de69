"""The weights of a Llama model: one dataclass per decoder layer, and the loader that fills them.

The fields are the named projections of the checkpoint (``q_proj``, ``gate_proj``, ...),
stored (out_features, in_features) as PyTorch stores them, and optionally LoRA adapters on
some of them (``LayerWeights.lora``, attached by ``minillama.train.add_lora``). Weights are eager by default
(every array on the backend in the compute dtype) or lazy (kept memory-mapped in their
stored dtype and upcast one layer at a time, see :class:`Weights`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .. import functional as F
from ..backend import to_backend, to_numpy
from ..errors import CheckpointError
from ..formats.names import LAYER_NAMES, layer_shapes
from ..formats.tensors import StoredTensor, prefetch_pages, widen


@dataclass
class LayerWeights:
    """One decoder layer. Projections are stored (out_features, in_features)."""

    attn_norm: object  # (hidden,)
    q_proj: object  # (heads * head_dim, hidden)
    k_proj: object  # (kv_heads * head_dim, hidden)
    v_proj: object  # (kv_heads * head_dim, hidden)
    o_proj: object  # (hidden, heads * head_dim)
    mlp_norm: object  # (hidden,)
    gate_proj: object  # (intermediate, hidden)
    up_proj: object  # (intermediate, hidden)
    down_proj: object  # (hidden, intermediate)
    q_bias: object = None  # biases exist only with config.attention_bias / config.mlp_bias
    k_bias: object = None
    v_bias: object = None
    o_bias: object = None
    gate_bias: object = None
    up_bias: object = None
    down_bias: object = None
    lora: dict | None = None  # projection field ("q_proj", ...) -> LoraAdapter, when LoRA adapters are attached


@dataclass
class LoraAdapter:
    """A trainable low-rank update of one projection: W x + (alpha / r) B A x (see ``functional.lora``)."""

    lora_A: object  # (r, in_features)
    lora_B: object  # (out_features, r)
    alpha: float  # peft's lora_alpha; the update is scaled by alpha / r

    @property
    def scale(self) -> float:
        return self.alpha / self.lora_A.shape[0]


@dataclass
class Weights:
    """All weights of a model.

    Eager (the default): every array is on the backend in the compute dtype.
    Lazy (``lazy_dtype`` set): the embedding, the LM head and the layers stay as
    memory-mapped tensors in their stored dtype (float16 for a 7B checkpoint: 13.5 GB
    instead of 27 GB in float32), and each layer is read and upcast just before it
    runs, then dropped. A forward pass then costs one read of the file, and memory
    holds about one layer in the compute dtype.
    """

    embed_tokens: object  # (vocab, hidden)
    layers: list = field(default_factory=list)  # of LayerWeights
    norm: object = None  # (hidden,)
    lm_head: object = None  # (vocab, hidden); the embedding table itself when tied; None for LlamaModel
    score: object = None  # (num_labels, hidden) for sequence classification
    lazy_dtype: object = None  # NumPy compute dtype when lazy, else None
    xp: object = None  # the backend, for lazy conversion

    def ready(self, array):
        """A weight as a backend array in the compute dtype (lazy ones are read and upcast now)."""
        if self.lazy_dtype is None or array is None:
            return array
        return to_backend(array.numpy(self.lazy_dtype), self.xp)

    def layer(self, i: int):
        """Layer ``i``'s weights as backend arrays (for lazy weights, read and upcast now)."""
        layer = self.layers[i]
        if self.lazy_dtype is None:
            return layer
        return LayerWeights(**{f.name: self.ready(getattr(layer, f.name)) for f in fields(LayerWeights)})

    def embed(self, token_ids):
        """Embedding rows for token_ids (batch, seq); lazily, only the rows used are read."""
        if self.lazy_dtype is None:
            return F.embedding(token_ids, self.embed_tokens)
        rows = self.embed_tokens.raw()[to_numpy(token_ids)]  # (batch, seq, hidden), stored dtype, on the host
        return to_backend(widen(rows, self.embed_tokens.dtype, self.lazy_dtype), self.xp)


def load_weights(tensors: dict, config, xp, dtype, head: str | None = "lm_head", source: str = "",
                 progress=None, lazy: bool = False) -> Weights:
    """Pick the Llama tensors out of a checkpoint's ``name -> StoredTensor`` map.

    Checks every name and shape against the config, converts to the compute
    ``dtype`` and moves each tensor to the backend ``xp``. For a float32
    checkpoint computed in float32 on NumPy, the weights stay memory-mapped.
    head: "lm_head", "score" (sequence classification) or None (LlamaModel).
    progress: called as progress(layers_done, num_layers) while loading, for a progress bar.
    lazy: keep the large tensors memory-mapped in their stored dtype (see :class:`Weights`).
    """
    np_dtype = np.dtype(dtype)
    # LlamaModel.save_pretrained writes names without the "model." prefix.
    prefix = "model." if any(name.startswith("model.") for name in tensors) else ""
    _check_layer_count(tensors, config, prefix, source)

    def get(name, shape, required=True, small=False):
        stored = tensors.get(name)
        if stored is None:
            if required:
                raise CheckpointError(f"{source}: tensor {name!r} is missing")
            return None
        if tuple(stored.shape) != tuple(shape):
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(stored.shape)}, "
                                  f"but the config needs {tuple(shape)} ({stored.path})")
        if lazy and not small:
            return stored
        return to_backend(stored.numpy(np_dtype), xp)

    c = config
    shapes = layer_shapes(c)
    layers = []
    for i in range(c.num_hidden_layers):
        layers.append(LayerWeights(**{key: get(f"{prefix}layers.{i}.{LAYER_NAMES[key]}", shape)
                                      for key, shape in shapes.items()}))
        if progress is not None:
            progress(i + 1, c.num_hidden_layers)

    embed = get(f"{prefix}embed_tokens.weight", (c.vocab_size, c.hidden_size))
    # Decoding reads one row of it per token; without this, each row not yet read is a disk read mid-generation.
    prefetch_pages(embed.data if isinstance(embed, StoredTensor) else embed)
    weights = Weights(embed_tokens=embed, layers=layers, norm=get(f"{prefix}norm.weight", (c.hidden_size,), small=True),
                      lazy_dtype=np_dtype if lazy else None, xp=xp)
    if head == "lm_head":
        untied = get("lm_head.weight", (c.vocab_size, c.hidden_size), required=not c.tie_word_embeddings)
        weights.lm_head = embed if c.tie_word_embeddings else untied
    elif head == "score":
        weights.score = get("score.weight", (c.num_labels, c.hidden_size), small=True)
    return weights


def _check_layer_count(tensors: dict, config, prefix: str, source: str) -> None:
    """The config's layer count against the layers the checkpoint holds (before looking up any layer)."""
    marker = f"{prefix}layers."
    found = set()
    for name in tensors:
        if name.startswith(marker):
            index = name[len(marker):].split(".", 1)[0]
            if index.isdigit():
                found.add(int(index))
    if len(found) != config.num_hidden_layers:
        raise CheckpointError(f"{source}: the config has num_hidden_layers={config.num_hidden_layers}, "
                              f"but the checkpoint holds {len(found)} layers")


def state_dict_names(weights: Weights, config, prefix: str = "model.") -> dict[str, object]:
    """Hugging Face name -> the live array (or lazy tensor) of every parameter, once each.

    A tied LM head is the embedding table itself, so it appears once, as the embedding.
    """
    out = {f"{prefix}embed_tokens.weight": weights.embed_tokens}
    for i, layer in enumerate(weights.layers):
        for key, name in LAYER_NAMES.items():
            value = getattr(layer, key)
            if value is not None:
                out[f"{prefix}layers.{i}.{name}"] = value
    out[f"{prefix}norm.weight"] = weights.norm
    if weights.lm_head is not None and weights.lm_head is not weights.embed_tokens:
        out["lm_head.weight"] = weights.lm_head
    if weights.score is not None:
        out["score.weight"] = weights.score
    return out
