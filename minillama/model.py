"""The Llama model: weights, the forward pass, and classes that mirror Hugging Face's API.

Data flows through a forward pass like this:

    token ids (batch, seq)
      -> embedding                                      (batch, seq, hidden)
      -> for each layer:
             h = x + attention(rms_norm(x))             self-attention block
             x = h + swiglu_mlp(rms_norm(h))            feed-forward block
      -> rms_norm                                       last_hidden_state
      -> lm_head (or score, for classification)         logits (batch, seq, vocab)

The functional core is :func:`llama_forward`; the classes at the bottom only
load weights and hold them with the config and backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

import numpy as np

from . import functional as F
from .backend import backend_name, get_dtype, get_namespace, namespace_of, to_backend, to_numpy, tune_malloc
from .checkpoint import CheckpointError, StoredTensor, prefetch_pages, release_pages, widen
from .formats import detect_format, open_checkpoint
from .cache import KVCache
from .config import LlamaConfig
from .rope import apply_rotary, inverse_frequencies, rope_cos_sin

COMPUTE_DTYPES = ("float32", "float64", "float16")


# ---- weights ----------------------------------------------------------------------------------

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
    # Speed arrangement of the NumPy assembly (see fuse_projections): q/k/v and gate/up stored as one
    # matrix each, the named projections above being views into them. None elsewhere.
    qkv_proj: object = None  # (heads * head_dim + 2 * kv_heads * head_dim, hidden)
    gate_up_proj: object = None  # (2 * intermediate, hidden)


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

    def layer(self, i: int) -> LayerWeights:
        layer = self.layers[i]
        if self.lazy_dtype is None:
            return layer
        return LayerWeights(**{f.name: self.ready(getattr(layer, f.name)) for f in fields(layer)})

    def embed(self, token_ids):
        """Embedding rows for token_ids (batch, seq); lazily, only the rows used are read."""
        if self.lazy_dtype is None:
            return F.embedding(token_ids, self.embed_tokens)
        rows = self.embed_tokens.raw()[to_numpy(token_ids)]  # (batch, seq, hidden), stored dtype, on the host
        return to_backend(widen(rows, self.embed_tokens.dtype, self.lazy_dtype), self.xp)


# Hugging Face tensor names, relative to "model.layers.{i}."
_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "q_proj": "self_attn.q_proj.weight", "k_proj": "self_attn.k_proj.weight",
    "v_proj": "self_attn.v_proj.weight", "o_proj": "self_attn.o_proj.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "gate_proj": "mlp.gate_proj.weight", "up_proj": "mlp.up_proj.weight", "down_proj": "mlp.down_proj.weight",
    "q_bias": "self_attn.q_proj.bias", "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias", "o_bias": "self_attn.o_proj.bias",
    "gate_bias": "mlp.gate_proj.bias", "up_bias": "mlp.up_proj.bias", "down_bias": "mlp.down_proj.bias",
}


def _layer_shapes(c: LlamaConfig) -> dict:
    q, kv, h, i = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.hidden_size, c.intermediate_size
    return {
        "attn_norm": (h,), "q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
        "mlp_norm": (h,), "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i),
        "q_bias": (q,), "k_bias": (kv,), "v_bias": (kv,), "o_bias": (h,),
        "gate_bias": (i,), "up_bias": (i,), "down_bias": (h,),
    }


def load_weights(tensors: dict, config: LlamaConfig, xp, dtype, head: str = "lm_head", source: str = "",
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
    gemv_layout = backend_name(xp) == "numpy"  # see _transposed_storage
    # LlamaModel.save_pretrained writes names without the "model." prefix.
    prefix = "model." if any(name.startswith("model.") for name in tensors) else ""

    def get(name, shape, required=True, small=False, matmul=True):
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
        array = stored.numpy(np_dtype)
        if gemv_layout and matmul and len(shape) == 2 and shape[0] >= 2 * shape[1]:
            array = _transposed_storage(array)
        return to_backend(array, xp)

    c = config
    shapes = _layer_shapes(c)
    layers = []
    for i in range(c.num_hidden_layers):
        parts = {}
        for key, name in _LAYER_NAMES.items():
            is_bias = key.endswith("_bias")
            wanted = (c.attention_bias if key[0] in "qkvo" else c.mlp_bias) if is_bias else True
            parts[key] = get(f"{prefix}layers.{i}.{name}", shapes[key]) if wanted else None
        if gemv_layout and not lazy and c.pretraining_tp == 1 and not c.attention_bias and not c.mlp_bias:
            parts.update(fuse_projections({k: tensors[f"{prefix}layers.{i}.{_LAYER_NAMES[k]}"] for k in
                                           ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")}, np_dtype))
        layers.append(LayerWeights(**parts))
        if progress is not None:
            progress(i + 1, c.num_hidden_layers)

    # The embedding is read by rows, so it keeps its row-major layout (also when it is the tied LM head).
    embed = get(f"{prefix}embed_tokens.weight", (c.vocab_size, c.hidden_size), matmul=False)
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


def fuse_projections(stored: dict, dtype) -> dict:
    """q/k/v as one (q + 2 kv, hidden) matrix and gate/up as one (2 * intermediate, hidden) matrix.

    A speed arrangement for NumPy decoding: one matrix-vector product instead of three (or
    two) streams the same bytes with fewer calls, and a taller matrix streams faster. The
    named projections become views of the fused matrices, so nothing is stored twice; the
    file pages they were copied from are released.
    """
    out = {}
    for fused_name, names in (("qkv_proj", ("q_proj", "k_proj", "v_proj")), ("gate_up_proj", ("gate_proj", "up_proj"))):
        arrays = [stored[n].numpy(dtype) for n in names]
        rows, cols = sum(a.shape[0] for a in arrays), arrays[0].shape[1]
        fused = np.empty((rows, cols), dtype=dtype, order="F" if rows >= 2 * cols else "C")  # see _transposed_storage
        at = 0
        for name, array in zip(names, arrays):
            fused[at:at + array.shape[0]] = array
            out[name] = fused[at:at + array.shape[0]]
            at += array.shape[0]
            release_pages(array)
        out[fused_name] = fused
    return out


def _transposed_storage(weight: np.ndarray) -> np.ndarray:
    """The same (out, in) matrix, stored column by column (Fortran order).

    A speed arrangement for NumPy decoding, where every linear layer is a matrix-vector
    product limited by memory bandwidth: OpenBLAS streams a wide matrix (out >= 2 * in:
    gate_proj, up_proj, the LM head) 7-22% faster in this layout (benchmarks/speed.py and
    docs/performance.md). ``linear`` still computes ``x @ weight.T``; only the memory order
    changes. The copy replaces the file mapping of that tensor, whose pages are released.
    """
    if weight.flags.f_contiguous:
        return weight
    copy = np.asfortranarray(weight)
    release_pages(weight)
    return copy


# ---- the forward pass -------------------------------------------------------------------------

# Long prompts attend in blocks of this many queries (see causal_attention_in_blocks).
QUERY_BLOCK = 128  # measured best of 64-512 for 512-token prompts (docs/performance.md)


def causal_attention_in_blocks(q, k, v, mask):
    """The same result as F.attention, computed block of queries by block of queries.

    A speed arrangement, not a new idea: with a causal mask, queries early in a long prompt
    see only early keys, so each block is given only the keys up to its last query. For a
    512-token prompt in blocks of 128 that is 62.5% of the scores of the full square, and a
    quarter of the memory. q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, k_len, head_dim).
    """
    xp = namespace_of(q)
    q_len, k_len = q.shape[2], k.shape[2]
    past = k_len - q_len  # keys already cached before these queries
    outs = []
    for start in range(0, q_len, QUERY_BLOCK):
        end = min(start + QUERY_BLOCK, q_len)
        visible = past + end  # keys up to this block's last query
        block_mask = mask[:, :, start:end, :visible]
        outs.append(_attention_normalised_late(q[:, :, start:end, :], k[:, :, :visible, :], v[:, :, :visible, :],
                                               block_mask))
    return xp.concat(outs, axis=2)  # (batch, heads, q_len, head_dim)


def _attention_normalised_late(q, k, v, mask):
    """F.attention's output without its probabilities, with two passes fewer over the scores.

    Softmax divides every probability by its row's sum; dividing the output instead touches
    head_dim numbers per query rather than k_len (flash attention does the same), and the
    row maximum is subtracted in place. Equal to F.attention up to rounding (tests compare
    the two, and the blocked path with transformers). Shapes as in F.attention.
    """
    xp = namespace_of(q)
    batch, heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    q = xp.reshape(q * head_dim ** -0.5, (batch, kv_heads, group * q_len, head_dim))
    scores = xp.reshape(q @ xp.matrix_transpose(k), (batch, heads, q_len, k_len))
    wide = xp.float64 if q.dtype == xp.float64 else xp.float32
    scores = xp.astype(scores, wide, copy=False)
    if mask is not None:
        scores = xp.where(mask, scores, float(xp.finfo(wide).min))
    scores -= xp.max(scores, axis=-1, keepdims=True)
    exps = xp.exp(scores)  # (batch, heads, q_len, k_len), not yet divided by the row sums
    # Sums of up to k_len values could overflow float16, so this product stays float32 (or float64).
    unnormalised = xp.reshape(exps, (batch, kv_heads, group * q_len, k_len)) @ xp.astype(v, wide, copy=False)
    out = xp.reshape(unnormalised, (batch, heads, q_len, head_dim)) / xp.sum(exps, axis=-1, keepdims=True)
    return xp.astype(out, q.dtype, copy=False)


def _heads_from_fused_qkv(x, qkv_proj, config: LlamaConfig, cos, sin):
    """q, k (rotated) and v from the fused q/k/v matrix, as the unfused lines of self_attention make them.

    A speed arrangement: one product, one split into heads, and one apply_rotary for the query and
    key heads together (each head is rotated the same way), instead of three, three and two calls.
    x: (batch, seq, hidden) -> q (batch, heads, seq, head_dim), k and v (batch, kv_heads, seq, head_dim).
    """
    xp = namespace_of(x)
    batch, seq, _ = x.shape
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    qkv = F.linear(x, qkv_proj)  # (batch, seq, (heads + 2 * kv_heads) * head_dim)
    qkv = xp.permute_dims(xp.reshape(qkv, (batch, seq, heads + 2 * kv_heads, head_dim)), (0, 2, 1, 3))
    qk = apply_rotary(qkv[:, :heads + kv_heads, :, :], cos, sin)  # (batch, heads + kv_heads, seq, head_dim)
    return qk[:, :heads, :, :], qk[:, heads:, :, :], qkv[:, heads + kv_heads:, :, :]


def self_attention(x, w: LayerWeights, config: LlamaConfig, cos, sin, mask, cache=None, layer: int = 0,
                   want_probs: bool = True):
    """The attention block of one layer, without the norm and residual.

    x: (batch, seq, hidden) -> ((batch, seq, hidden), probabilities (batch, heads, seq, k_len)).
    With a KVCache, the new keys and values are appended to the layer's cache and the
    queries attend to every cached position (k_len = cached + seq).
    """
    xp = namespace_of(x)
    batch, seq, _ = x.shape
    heads, kv_heads, head_dim, tp = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.pretraining_tp
    if w.qkv_proj is not None:  # fused by the NumPy assembly (see fuse_projections)
        q, k, v = _heads_from_fused_qkv(x, w.qkv_proj, config, cos, sin)
    else:
        q = F.linear_sliced(x, w.q_proj, w.q_bias, tp)  # (batch, seq, heads * head_dim)
        k = F.linear_sliced(x, w.k_proj, w.k_bias, tp)  # (batch, seq, kv_heads * head_dim)
        v = F.linear_sliced(x, w.v_proj, w.v_bias, tp)
        # Split the features into heads and put heads before positions.
        q = xp.permute_dims(xp.reshape(q, (batch, seq, heads, head_dim)), (0, 2, 1, 3))  # (batch, heads, seq, head_dim)
        k = xp.permute_dims(xp.reshape(k, (batch, seq, kv_heads, head_dim)), (0, 2, 1, 3))  # (batch, kv_heads, seq, head_dim)
        v = xp.permute_dims(xp.reshape(v, (batch, seq, kv_heads, head_dim)), (0, 2, 1, 3))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if cache is not None:
        k, v = cache.update(layer, k, v)  # (batch, kv_heads, cached + seq, head_dim)
    if seq > QUERY_BLOCK and not want_probs:
        out, probs = causal_attention_in_blocks(q, k, v, mask), None
    else:
        out, probs = F.attention(q, k, v, mask)  # (batch, heads, seq, head_dim)
    out = xp.reshape(xp.permute_dims(out, (0, 2, 1, 3)), (batch, seq, heads * head_dim))
    return F.linear_sliced(out, w.o_proj, w.o_bias, tp, split="in"), probs


def mlp(x, w: LayerWeights, config: LlamaConfig):
    """The SwiGLU feed-forward block of one layer. x: (batch, seq, hidden)."""
    tp = config.pretraining_tp
    if w.gate_up_proj is not None:  # fused by the NumPy assembly: the same SwiGLU, one product for gate and up
        gate_up = F.linear(x, w.gate_up_proj)  # (..., 2 * intermediate)
        gate, up = gate_up[..., :config.intermediate_size], gate_up[..., config.intermediate_size:]
        return F.linear(F.silu(gate) * up, w.down_proj)
    if tp == 1:
        return F.swiglu_mlp(x, w.gate_proj, w.up_proj, w.down_proj, w.gate_bias, w.up_bias, w.down_bias)
    gate = F.silu(F.linear_sliced(x, w.gate_proj, w.gate_bias, tp))
    up = F.linear_sliced(x, w.up_proj, w.up_bias, tp)
    return F.linear_sliced(gate * up, w.down_proj, w.down_bias, tp, split="in")


def decoder_layer(x, w: LayerWeights, config: LlamaConfig, cos, sin, mask, cache=None, layer: int = 0,
                  want_probs: bool = True):
    """One pre-norm block: attention then MLP, each added to the residual stream."""
    attn_out, probs = self_attention(F.rms_norm(x, w.attn_norm, config.rms_norm_eps), w, config, cos, sin, mask,
                                     cache, layer, want_probs)
    h = x + attn_out
    return h + mlp(F.rms_norm(h, w.mlp_norm, config.rms_norm_eps), w, config), probs


def positions_from_mask(padding_mask):
    """Position of each token counting only real tokens, so left padding does not shift them.

    padding_mask: (batch, seq) of 1 (token) / 0 (padding) -> (batch, seq) int64; padding gets position 0.
    """
    xp = namespace_of(padding_mask)
    real = xp.astype(padding_mask != 0, xp.int64)
    return xp.maximum(xp.cumulative_sum(real, axis=1) - 1, 0)


def llama_forward(weights: Weights, config: LlamaConfig, input_ids, attention_mask=None, position_ids=None,
                  output_hidden_states: bool = False, output_attentions: bool = False, cache=None):
    """Run the decoder stack.

    input_ids: (batch, seq) integer array on the weights' backend.
    attention_mask: (batch, seq), 1 for tokens, 0 for padding (left or right); with a
    cache, (batch, cached + seq), covering the cached positions too.
    position_ids: (batch, seq); by default counted from the attention mask.
    cache: a KVCache to read earlier positions from and append these to.
    Returns (last_hidden_state (batch, seq, hidden), hidden_states or None, attentions or None),
    where hidden_states holds the embeddings, each layer's output, and the final normed output
    in place of the last layer's, as transformers does.
    """
    xp = namespace_of(input_ids)
    batch, seq = input_ids.shape
    past = cache.length if cache is not None else 0
    if position_ids is None:
        if attention_mask is not None:
            position_ids = positions_from_mask(attention_mask)[:, past:]
        else:
            position_ids = xp.broadcast_to(xp.arange(past, past + seq)[None, :], (batch, seq))
    x = weights.embed(input_ids)  # (batch, seq, hidden)
    # Only dynamic RoPE depends on the longest position; reading it is a device-to-host sync on a GPU.
    dynamic = config.rope_scaling is not None and config.rope_scaling["rope_type"] == "dynamic"
    seq_len = int(xp.max(position_ids)) + 1 if dynamic else None
    inv_freq = inverse_frequencies(config, xp, seq_len=seq_len)
    cos, sin = rope_cos_sin(position_ids, inv_freq, x.dtype)  # (batch, seq, head_dim)
    # (batch, 1, seq, past + seq); one new token without padding sees every key, and needs no mask.
    mask = None if seq == 1 and attention_mask is None else F.attention_mask(seq, past + seq, xp, attention_mask)

    hidden_states, attentions = [x] if output_hidden_states else None, [] if output_attentions else None
    for i in range(len(weights.layers)):
        x, probs = decoder_layer(x, weights.layer(i), config, cos, sin, mask, cache, i, output_attentions)
        if output_hidden_states:
            hidden_states.append(x)
        if output_attentions:
            attentions.append(probs)
    if cache is not None:
        cache.advance(seq)
    x = F.rms_norm(x, weights.norm, config.rms_norm_eps)
    if output_hidden_states:
        hidden_states[-1] = x
    return x, hidden_states, attentions


def last_token_index(input_ids, pad_token_id):
    """For each row, the index of the rightmost token that is not padding, as transformers pools it."""
    xp = namespace_of(input_ids)
    seq = input_ids.shape[1]
    not_pad = xp.astype(input_ids != pad_token_id, xp.int64)
    return xp.argmax(xp.arange(seq)[None, :] * not_pad, axis=1)  # (batch,)


# ---- the classes ------------------------------------------------------------------------------

@dataclass
class LlamaOutput:
    """What a forward pass returns; arrays live on the model's backend."""

    logits: object = None  # (batch, seq, vocab), or (batch, num_labels) for classification
    last_hidden_state: object = None  # (batch, seq, hidden)
    hidden_states: tuple | None = None  # num_hidden_layers + 1 arrays of (batch, seq, hidden)
    attentions: tuple | None = None  # num_hidden_layers arrays of (batch, heads, seq, seq)

    def __getitem__(self, key):
        return getattr(self, key)


class _LlamaBase:
    _head = None

    def __init__(self, config: LlamaConfig, weights: Weights, backend: str = "numpy", dtype: str = "float32"):
        self.config = config
        self.weights = weights
        self.backend = backend
        self.dtype = dtype
        self.xp = get_namespace(backend)
        if backend != "cupy":
            tune_malloc()  # CPU arrays: keep freed temporaries for reuse (see backend.tune_malloc)

    @classmethod
    def from_pretrained(cls, path, backend: str = "numpy", dtype: str = "float32", progress=None,
                        lazy: bool | None = None):
        """Load a checkpoint: a Hugging Face folder, a Meta folder or a llama2.c .bin.

        backend: "numpy", "cupy" or "strict"; dtype: the compute dtype, "float32" by default.
        progress: called as progress(layers_done, num_layers) while the weights load.
        lazy: keep weights memory-mapped in their stored dtype and upcast each layer when it
        runs (see Weights). None decides: lazy when upcasting would change the dtype and the
        upcast model would take more than 40% of this machine's memory.
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
        weights = load_weights(tensors, config, xp, dtype, head=cls._head, source=path, progress=progress, lazy=lazy)
        return cls(config, weights, backend=backend, dtype=dtype)

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
                                         output_hidden_states, output_attentions, cache)
        return ids, x, (tuple(hidden) if hidden is not None else None), (tuple(attns) if attns is not None else None)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache for ``batch`` sequences of up to ``max_len`` positions, on this model's backend."""
        return KVCache(self.config, batch, max_len, self.xp, get_dtype(self.xp, self.dtype))

    def resize_token_embeddings(self, new_num_tokens: int) -> None:
        """Give the vocabulary ``new_num_tokens`` rows, e.g. after ``tokenizer.add_special_tokens``.

        New rows of the embedding (and of an untied LM head) are zero, so a new pad
        token embeds to zero. Shrinking drops the last rows.
        """
        if not isinstance(new_num_tokens, int) or new_num_tokens < 1:
            raise ValueError(f"new_num_tokens must be a positive integer, got {new_num_tokens!r}")
        if self.weights.lazy_dtype is not None:
            raise ValueError("resize_token_embeddings needs the weights in memory: load with lazy=False")
        xp, w, old = self.xp, self.weights, self.config.vocab_size

        def resized(table):  # (old, hidden) -> (new_num_tokens, hidden)
            if new_num_tokens <= old:
                return table[:new_num_tokens, :]
            zeros = xp.zeros((new_num_tokens - old, table.shape[1]), dtype=table.dtype)
            return xp.concat([table, zeros], axis=0)

        tied = w.lm_head is w.embed_tokens
        w.embed_tokens = resized(w.embed_tokens)
        if tied:
            w.lm_head = w.embed_tokens
        elif w.lm_head is not None:
            w.lm_head = resized(w.lm_head)
        self.config.vocab_size = new_num_tokens

    def num_parameters(self) -> int:
        w = self.weights
        seen, total = set(), 0
        for array in [w.embed_tokens, w.norm, w.lm_head, w.score] + \
                     [getattr(layer, f.name) for layer in w.layers for f in fields(layer)
                      if f.name not in ("qkv_proj", "gate_up_proj")]:  # those hold the named projections
            if array is not None and id(array) not in seen:
                seen.add(id(array))
                total += int(np.prod(array.shape))
        return total


class LlamaModel(_LlamaBase):
    """The decoder stack alone: returns ``last_hidden_state``."""

    _head = None

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> LlamaOutput:
        _, x, hidden, attns = self._run(input_ids, attention_mask, position_ids, output_hidden_states, output_attentions)
        return LlamaOutput(last_hidden_state=x, hidden_states=hidden, attentions=attns)


class LlamaForCausalLM(_LlamaBase):
    """The decoder stack and the language-model head: ``logits`` over the vocabulary at every position."""

    _head = "lm_head"

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                output_hidden_states: bool = False, output_attentions: bool = False, cache=None,
                logits_to_keep: int = 0) -> LlamaOutput:
        """cache: a KVCache from ``new_cache``; input_ids are then the new tokens only and
        attention_mask covers the cached positions and the new ones.
        logits_to_keep: compute logits for only the last N positions (0: all), as generation needs."""
        _, x, hidden, attns = self._run(input_ids, attention_mask, position_ids, output_hidden_states,
                                        output_attentions, cache)
        lm_head = self.weights.ready(self.weights.lm_head)
        last = x[:, -logits_to_keep:, :] if logits_to_keep else x
        logits = F.linear_sliced(last, lm_head, slices=self.config.pretraining_tp)  # (batch, seq or N, vocab)
        return LlamaOutput(logits=logits, last_hidden_state=x, hidden_states=hidden, attentions=attns)


class LlamaForSequenceClassification(_LlamaBase):
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


def load(path, backend: str = "numpy", dtype: str = "float32", progress=None, lazy: bool | None = None):
    """Load a checkpoint as the class its config names (LlamaForCausalLM by default).

    path: a Hugging Face folder, a Meta folder (params.json + consolidated.*.pth) or a llama2.c .bin.
    """
    name = "LlamaForCausalLM"
    if detect_format(path) == "hf":
        name = (LlamaConfig.from_pretrained(path).architectures or [name])[0]
    cls = _ARCHITECTURES.get(name, LlamaForCausalLM)
    return cls.from_pretrained(path, backend=backend, dtype=dtype, progress=progress, lazy=lazy)
