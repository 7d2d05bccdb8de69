"""The classes users call, mirroring Hugging Face's: ``LlamaModel``, ``LlamaForCausalLM``,
``LlamaForSequenceClassification``, and ``load``.

Each holds a config, its weights and an assembly (``minillama.fast``: which functions compute
each block, chosen once at load), and runs :func:`minillama.model.llama_forward`. The methods
transformers users reach for are thin here, with their bodies in modules of their own:
``save_pretrained`` (``modeling_save``), ``resize_token_embeddings`` (``modeling_resize``) and
``generate`` with ``generation_config`` (``modeling_generate``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import functional as F
from .backend import get_dtype, get_namespace, namespace_of, to_backend
from .config import LlamaConfig
from .fast import assembly_for
from .formats import detect_format, open_checkpoint
from .model import KVCache, Weights, last_token_index, llama_forward, load_weights, state_dict_names
from . import modeling_generate, modeling_resize, modeling_save
from .modeling_generate import GenerationConfig, generation_config_for

COMPUTE_DTYPES = ("float32", "float64", "float16")


@dataclass
class LlamaOutput:
    """What a forward pass returns; arrays live on the model's backend."""

    logits: object = None  # (batch, seq, vocab), or (batch, num_labels) for classification
    last_hidden_state: object = None  # (batch, seq, hidden)
    hidden_states: tuple | None = None  # num_hidden_layers + 1 arrays of (batch, seq, hidden)
    attentions: tuple | None = None  # num_hidden_layers arrays of (batch, heads, seq, seq)
    loss: float | None = None  # with labels=: the mean next-token cross-entropy, as transformers' loss

    def __getitem__(self, key):
        return getattr(self, key)


class LlamaPreTrainedModel:
    """What every Llama class shares: loading, input checks, the cache, parameters."""

    _head = None

    def __init__(self, config: LlamaConfig, weights: Weights, backend: str = "numpy", dtype: str = "float32",
                 assembly=None):
        """assembly: an ``Assembly`` already applied to ``weights`` (default: the reference)."""
        self.config = config
        self.weights = weights
        self.backend = backend
        self.dtype = dtype
        self.xp = get_namespace(backend)
        self.assembly = assembly if assembly is not None else assembly_for("reference", backend, config, False)
        # A causal LM's generation defaults (generation_config.json when the checkpoint has one).
        self.generation_config = GenerationConfig.from_model_config(config) if self._head == "lm_head" else None

    @classmethod
    def from_pretrained(cls, path, backend: str = "numpy", dtype: str = "float32", progress=None,
                        lazy: bool | None = None, assembly: str | None = None):
        """Load a checkpoint: a Hugging Face folder, a Meta folder or a llama2.c .bin.

        backend: "numpy", "cupy" or "strict"; dtype: the compute dtype, "float32" by default.
        progress: called as progress(layers_done, num_layers) while the weights load.
        lazy: keep weights memory-mapped in their stored dtype and upcast each layer when it
        runs (see Weights). None decides: lazy when upcasting would change the dtype and the
        upcast model would take more than 40% of this machine's memory.
        assembly: which functions compute each block (``minillama.fast``): "reference" (the
        lesson's own), "cpu" (NumPy speed arrangements); None picks "cpu" on NumPy, else "reference".
        """
        path = os.fspath(path)
        if dtype == "bfloat16":
            raise ValueError("bfloat16 compute is not available: NumPy and CuPy have no bfloat16 arithmetic. "
                             "bfloat16 checkpoints load exactly into float32 (the default) or float16")
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
        xp = get_namespace(backend)
        get_dtype(xp, dtype)  # fails early if this backend lacks the dtype
        config, tensors, _ = open_checkpoint(path)
        if lazy is None:
            lazy = _should_be_lazy(tensors, dtype)
        chosen = assembly_for(assembly, backend, config, lazy)
        weights = load_weights(tensors, config, xp, dtype, head=cls._head, source=path, progress=progress, lazy=lazy)
        if chosen.arrange is not None and not lazy:
            weights = chosen.arrange(weights, config)
        model = cls(config, weights, backend=backend, dtype=dtype, assembly=chosen)
        if model.generation_config is not None:
            model.generation_config = generation_config_for(path, config)
        return model

    def _prepare(self, input_ids, attention_mask, position_ids, past: int = 0):
        """Check the inputs and put them on the backend as integer arrays (``past``: positions already cached)."""
        xp = self.xp
        ids = self._as_int_array(input_ids, "input_ids")
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape (batch, seq) with seq >= 1, got {tuple(ids.shape)}")
        low, high = int(xp.min(ids)), int(xp.max(ids))
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"input_ids contains token id {bad}, outside the vocabulary [0, {self.config.vocab_size})")
        extras = []
        for name, value in (("attention_mask", attention_mask), ("position_ids", position_ids)):
            if value is not None:
                value = self._as_int_array(value, name)
                if value.ndim == 1:
                    value = value[None, :]
                expected = (ids.shape[0], ids.shape[1] + (past if name == "attention_mask" else 0))
                if tuple(value.shape) != expected:
                    raise ValueError(f"{name} has shape {tuple(value.shape)}, but {expected} is needed for "
                                     f"input_ids of shape {tuple(ids.shape)}" + (f" after {past} cached positions" if past else ""))
            extras.append(value)
        if extras[1] is not None and int(xp.min(extras[1])) < 0:
            raise ValueError("position_ids must not be negative")
        return ids, extras[0], extras[1]

    def _as_int_array(self, value, name):
        xp = self.xp
        if isinstance(value, (list, tuple, np.ndarray)):
            host = np.asarray(value)
            if host.dtype == np.bool_:
                host = host.astype(np.int64)
            if host.size and host.dtype.kind not in "iu":
                raise ValueError(f"{name} must hold integers, got dtype {host.dtype}")
            return to_backend(host.astype(np.int64, copy=False), xp)
        if namespace_of(value) is not xp:
            raise ValueError(f"{name} is an array of another backend than this model's ({self.backend})")
        if value.dtype == xp.bool:
            return xp.astype(value, xp.int64)
        if not xp.isdtype(value.dtype, "integral"):
            raise ValueError(f"{name} must hold integers, got dtype {value.dtype}")
        return value

    def _run(self, input_ids, attention_mask, position_ids, output_hidden_states, output_attentions, cache=None):
        ids, mask, positions = self._prepare(input_ids, attention_mask, position_ids, cache.length if cache else 0)
        x, hidden, attns = llama_forward(self.weights, self.config, ids, mask, positions,
                                         output_hidden_states, output_attentions, cache, self.assembly)
        return ids, x, (tuple(hidden) if hidden is not None else None), (tuple(attns) if attns is not None else None)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache for ``batch`` sequences of up to ``max_len`` positions, on this model's backend."""
        return KVCache(self.config, batch, max_len, self.xp, get_dtype(self.xp, self.dtype))

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True, seed: int = 0):
        """Give the vocabulary ``new_num_tokens`` rows (rounded up to ``pad_to_multiple_of``), e.g. after
        ``tokenizer.add_special_tokens``; returns the (new) embedding table, (vocab, hidden).

        As transformers 5: new rows of the embedding and of an untied LM head are drawn close to
        the old rows' mean (``mean_resizing``, the default) or normal with std ``config.initializer_range``
        (``mean_resizing=False``); shrinking drops the last rows; ``config.vocab_size`` follows.
        The draws are seeded (``seed``, 0 by default), so a resize is reproducible
        (see ``minillama.modeling_resize``). With neither size given nothing changes.
        """
        return modeling_resize.resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of, mean_resizing, seed)

    def save_pretrained(self, save_directory, max_shard_size: int | str = "5GB", safe_serialization: bool = True) -> list:
        """Write this model as a Hugging Face folder that transformers' ``from_pretrained`` loads.

        config.json, safetensors weights in the model's dtype (sharded with an index above
        ``max_shard_size``: bytes, or "5GB", "500MB", "2GiB"), and generation_config.json for a
        causal LM. A tied LM head is stored once; a lazy model is streamed tensor by tensor; the
        files appear only when all are written (see ``minillama.modeling_save``). Returns the file names.
        """
        return modeling_save.save_pretrained(self, save_directory, max_shard_size, safe_serialization)

    def state_dict(self) -> dict:
        """Hugging Face name -> the live parameter array (a tied LM head appears once, as the embedding)."""
        return state_dict_names(self.weights, self.config)

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> None:
        """Copy arrays into the live parameters by Hugging Face name (shapes must match).

        strict: every parameter must be given and no unknown name may appear, as torch's
        ``load_state_dict``. Values are copied in place, so views (and an optimizer holding the
        parameter arrays) stay valid; a tied LM head is loaded through the embedding's name.
        """
        params = self.state_dict()
        unknown = sorted(set(state_dict) - set(params))
        missing = sorted(set(params) - set(state_dict))
        if strict and (unknown or missing):
            raise ValueError(f"load_state_dict: missing {missing[:3]}, unexpected {unknown[:3]}"
                             + (" (tied LM head: load it as model.embed_tokens.weight)" if "lm_head.weight" in unknown else ""))
        for name, value in state_dict.items():
            if name not in params:
                continue
            target = params[name]
            if not getattr(getattr(target, "flags", None), "writeable", True):
                raise ValueError(f"load_state_dict: {name} is a read-only memory map of the checkpoint file; "
                                 "load the model with a compute dtype that copies it, or copy the weights first")
            value = to_backend(np.asarray(value), self.xp) if isinstance(value, np.ndarray) else value
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"load_state_dict: {name} has shape {tuple(value.shape)}, the model needs {tuple(target.shape)}")
            target[...] = self.xp.astype(value, target.dtype, copy=False)

    def num_parameters(self) -> int:
        return sum(int(np.prod(array.shape)) for array in self.state_dict().values())


class LlamaModel(LlamaPreTrainedModel):
    """The decoder stack alone: returns ``last_hidden_state``."""

    _head = None

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> LlamaOutput:
        _, x, hidden, attns = self._run(input_ids, attention_mask, position_ids, output_hidden_states, output_attentions)
        return LlamaOutput(last_hidden_state=x, hidden_states=hidden, attentions=attns)


class LlamaForCausalLM(LlamaPreTrainedModel):
    """The decoder stack and the language-model head: ``logits`` over the vocabulary at every position."""

    _head = "lm_head"

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                output_hidden_states: bool = False, output_attentions: bool = False, cache=None,
                logits_to_keep: int = 0, labels=None) -> LlamaOutput:
        """cache: a KVCache from ``new_cache``; input_ids are then the new tokens only and
        attention_mask covers the cached positions and the new ones.
        logits_to_keep: compute logits for only the last N positions (0: all), as generation needs.
        labels: (batch, seq) ids, -100 where ignored: ``loss`` is then transformers' causal LM loss
        (logits at t predict labels at t + 1, mean over the labels not ignored) as a Python float;
        ``minillama.train.loss_and_grads`` gives its gradients."""
        ids, x, hidden, attns = self._run(input_ids, attention_mask, position_ids, output_hidden_states,
                                          output_attentions, cache)
        lm_head = self.weights.ready(self.weights.lm_head)
        last = x[:, -logits_to_keep:, :] if logits_to_keep else x
        logits = F.linear_sliced(last, lm_head, slices=self.config.pretraining_tp)  # (batch, seq or N, vocab)
        loss = None
        if labels is not None:
            labels = self._as_int_array(labels, "labels")
            if tuple(labels.shape) != tuple(logits.shape[:2]):
                raise ValueError(f"labels has shape {tuple(labels.shape)}, but the logits cover {tuple(logits.shape[:2])}")
            loss = float(F.causal_lm_loss(logits, labels))
        return LlamaOutput(logits=logits, last_hidden_state=x, hidden_states=hidden, attentions=attns, loss=loss)

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int | None = None, max_length: int | None = None,
                 do_sample: bool | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None, repetition_penalty: float | None = None,
                 eos_token_id: int | list | None = None, pad_token_id: int | None = None, generation_config=None,
                 seed: int | None = None, **kwargs):
        """transformers' ``generate``: the (batch, prompt + new) ids as a NumPy array.

        A setting left None comes from ``generation_config`` (a GenerationConfig or dict), then from
        ``self.generation_config`` (the checkpoint's generation_config.json), then transformers'
        defaults: 20 new tokens, greedy (``do_sample=False`` is greedy whatever the temperature),
        top_k 50 when sampling. Rows stop at EOS; finished rows are padded with pad_token_id (else
        the first EOS). ``seed`` makes sampling reproducible. See ``minillama.modeling_generate``;
        ``minillama.generate`` returns timings and per-row tokens too.
        """
        return modeling_generate.generate(
            self, input_ids, attention_mask, generation_config, seed, max_new_tokens=max_new_tokens,
            max_length=max_length, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            min_p=min_p, repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            extra=kwargs)


class LlamaForSequenceClassification(LlamaPreTrainedModel):
    """The decoder stack and a linear ``score`` head read at each row's last real token."""

    _head = "score"

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> LlamaOutput:
        ids, x, hidden, attns = self._run(input_ids, attention_mask, position_ids, output_hidden_states, output_attentions)
        xp = self.xp
        batch = ids.shape[0]
        pad = self.config.pad_token_id
        if pad is None and batch != 1:
            raise ValueError("sequence classification of a batch needs config.pad_token_id to find each row's last token")
        scores = F.linear(x, self.weights.score)  # (batch, seq, num_labels)
        if pad is None:
            pooled = scores[:, -1, :]
        else:
            last = last_token_index(ids, pad)  # (batch,)
            seq = ids.shape[1]
            flat = xp.reshape(scores, (batch * seq, scores.shape[-1]))
            pooled = xp.take(flat, xp.arange(batch) * seq + last, axis=0)  # (batch, num_labels)
        return LlamaOutput(logits=pooled, last_hidden_state=x, hidden_states=hidden, attentions=attns)


_ARCHITECTURES = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "LlamaForSequenceClassification": LlamaForSequenceClassification,
    "LlamaModel": LlamaModel,
}


def _should_be_lazy(tensors: dict, dtype: str) -> bool:
    stored = {t.dtype for t in tensors.values()}
    if stored <= {"F32"} and dtype == "float32":
        return False  # memory-mapped as it is: nothing would be copied anyway
    upcast = sum(int(np.prod(t.shape)) for t in tensors.values()) * np.dtype(dtype).itemsize
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return False
    return upcast > 0.4 * memory


def load(path, backend: str = "numpy", dtype: str = "float32", progress=None, lazy: bool | None = None,
         assembly: str | None = None):
    """Load a checkpoint as the class its config names (LlamaForCausalLM by default).

    path: a Hugging Face folder, a Meta folder (params.json + consolidated.*.pth) or a llama2.c .bin.
    Other arguments as in ``LlamaForCausalLM.from_pretrained``.
    """
    name = "LlamaForCausalLM"
    if detect_format(path) == "hf":
        name = (LlamaConfig.from_pretrained(path).architectures or [name])[0]
    cls = _ARCHITECTURES.get(name, LlamaForCausalLM)
    return cls.from_pretrained(path, backend=backend, dtype=dtype, progress=progress, lazy=lazy, assembly=assembly)
