"""Fused projections and column-major storage: the weight layouts that make NumPy decoding fast.

Decoding one token is a chain of matrix-vector products limited by memory bandwidth:

* **Fused q/k/v and gate/up.** One (q + 2 kv, hidden) matrix instead of three, one
  (2 * intermediate, hidden) instead of two: one product streams the same bytes with fewer
  calls, and a taller matrix streams faster. The named projections stay as views into the
  fused matrices, so nothing is stored twice and ``state_dict`` still sees every weight.
* **Column-major storage of tall matrices** (out >= 2 * in: gate/up, the LM head): OpenBLAS
  streams them 7-22% faster in this layout (benchmarks/gemv_shapes.py). ``linear`` still
  computes ``x @ weight.T``; only the memory order changes.

The copies replace the file mapping of the tensors they came from, whose pages are released.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from .. import functional as F
from ..backend import namespace_of
from ..formats.tensors import release_pages
from ..model.forward import output_projection
from ..model.weights import LayerWeights
from .attention import attend


@dataclass
class FusedLayerWeights(LayerWeights):
    """A layer whose q/k/v and gate/up projections are views into one matrix each."""

    qkv_proj: object = None  # (heads * head_dim + 2 * kv_heads * head_dim, hidden)
    gate_up_proj: object = None  # (2 * intermediate, hidden)


def column_major(weight: np.ndarray) -> np.ndarray:
    """The same (out, in) matrix stored column by column when it is tall (out >= 2 * in)."""
    if weight.ndim != 2 or weight.shape[0] < 2 * weight.shape[1] or weight.flags.f_contiguous:
        return weight
    copy = np.asfortranarray(weight)
    release_pages(weight)
    return copy


def _stacked(arrays: list) -> tuple:
    """One matrix holding ``arrays`` one above the other, and a view of each part in it."""
    rows, cols = sum(a.shape[0] for a in arrays), arrays[0].shape[1]
    fused = np.empty((rows, cols), dtype=arrays[0].dtype, order="F" if rows >= 2 * cols else "C")
    views, at = [], 0
    for array in arrays:
        fused[at:at + array.shape[0]] = array
        views.append(fused[at:at + array.shape[0]])
        at += array.shape[0]
        release_pages(array)
    return fused, views


def fuse_layer(layer: LayerWeights) -> FusedLayerWeights:
    """The same layer with q/k/v and gate/up stored as one matrix each (NumPy arrays)."""
    qkv, (q, k, v) = _stacked([layer.q_proj, layer.k_proj, layer.v_proj])
    gate_up, (gate, up) = _stacked([layer.gate_proj, layer.up_proj])
    named = {f.name: getattr(layer, f.name) for f in fields(LayerWeights)}
    named.update(q_proj=q, k_proj=k, v_proj=v, gate_proj=gate, up_proj=up)
    return FusedLayerWeights(**named, qkv_proj=qkv, gate_up_proj=gate_up)


def arrange_fused(weights, config):
    """Every layer fused, the untied LM head column-major (applied once at load)."""
    weights.layers = [fuse_layer(layer) for layer in weights.layers]
    return arrange_head(weights, config)


def arrange_column_major(weights, config):
    """Tall matrices column-major, for configs whose layers cannot be fused (biases, pretraining_tp)."""
    tall = ("gate_proj", "up_proj")
    weights.layers = [replace(layer, **{n: column_major(getattr(layer, n)) for n in tall}) for layer in weights.layers]
    return arrange_head(weights, config)


def arrange_head(weights, config):
    # The embedding is read by rows, so a tied head keeps the table's row-major layout.
    if weights.lm_head is not None and weights.lm_head is not weights.embed_tokens:
        weights.lm_head = column_major(weights.lm_head)
    return weights


def heads_from_fused_qkv(x, qkv_proj, config, cos, sin):
    """q, k (rotated) and v from the fused matrix, as ``model.attention_heads`` makes them.

    One product, one split into heads, and one apply_rotary for the query and key heads together
    (each head is rotated the same way), instead of three, three and two calls.
    x: (batch, seq, hidden) -> q (batch, heads, seq, head_dim), k and v (batch, kv_heads, seq, head_dim).
    """
    xp = namespace_of(x)
    batch, seq, _ = x.shape
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    qkv = F.linear(x, qkv_proj)  # (batch, seq, (heads + 2 * kv_heads) * head_dim)
    qkv = xp.permute_dims(xp.reshape(qkv, (batch, seq, heads + 2 * kv_heads, head_dim)), (0, 2, 1, 3))
    qk = F.apply_rotary(qkv[:, :heads + kv_heads, :, :], cos, sin)  # (batch, heads + kv_heads, seq, head_dim)
    return qk[:, :heads, :, :], qk[:, heads:, :, :], qkv[:, heads + kv_heads:, :, :]


def fused_self_attention(x, w: FusedLayerWeights, config, cos, sin, mask, cache=None, layer: int = 0,
                         want_probs: bool = True):
    """Drop-in for ``model.self_attention`` on fused weights (blocked attention for long prompts)."""
    q, k, v = heads_from_fused_qkv(x, w.qkv_proj, config, cos, sin)
    if cache is not None:
        k, v = cache.update(layer, k, v)
    out, probs = attend(q, k, v, mask, want_probs)
    return output_projection(out, w, config), probs


def fused_mlp(x, w: FusedLayerWeights, config):
    """Drop-in for ``model.mlp`` on fused weights: the same SwiGLU, one product for gate and up."""
    gate_up = F.linear(x, w.gate_up_proj)  # (..., 2 * intermediate)
    gate, up = gate_up[..., :config.intermediate_size], gate_up[..., config.intermediate_size:]
    return F.linear(F.silu(gate) * up, w.down_proj)
