"""Whole-model gradients: the forward pass run once more, keeping what each backward needs.

    ids ─► embedding ─► layer 0 ─► ... ─► layer L-1 ─► rms_norm ─► lm_head ─► logits ─► loss
                 ◄── grad ◄──── grad ◄──────────── grad ◄─────── grad ◄──── grad_logits

Each block's backward is the chain rule through the same components the forward uses, in
reverse: a residual add passes its gradient to both branches, and every weight's gradient is
read off by the backward of the one function that uses it (``functional``'s ``*_backward``).

Memory: per layer the forward keeps its input and the few intermediates its backward reads
(the normed inputs, rotated queries and keys, values, attention probabilities, merged heads).
With ``recompute=True`` only each layer's input is kept and the rest is computed again, one
layer at a time, during the backward (activation checkpointing): less memory, one more forward.

Attention: which function pair computes it is chosen once per call (:class:`AttentionPair`):
the lesson's ``F.attention`` and ``F.attention_backward`` whenever there is an attention mask,
and for plain causal batches (no padding) ``fast.train_attention``'s blocked pair, which computes
the same numbers without the scores above the diagonal (tests/test_fast.py holds them equal).

LoRA: a model with adapters (``train.add_lora``) is "frozen": only the adapters get gradients.
The backward then still carries the gradient through every weight (grad_x = grad_y W) but skips
the products that would give the frozen weights' own gradients (grad_W = grad_y^T x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import functional as F
from ..backend import namespace_of
from ..fast import train_attention
from ..formats.names import LAYER_NAMES
from ..model.forward import project, rotary_tables
from .lora import adapter_name


@dataclass(frozen=True)
class AttentionPair:
    """The attention a training step uses: a forward and the backward that reads what it kept.

    forward(q, k, v, mask) -> (out, kept); backward(grad_out, q, k, v, mask, kept) -> (grad_q, grad_k, grad_v).
    """

    name: str
    forward: Callable
    backward: Callable


REFERENCE_ATTENTION = AttentionPair("reference", F.attention, F.attention_backward)  # kept: the probabilities
CAUSAL_BLOCKS = AttentionPair("causal blocks", train_attention.causal_attention, train_attention.causal_attention_backward)


@dataclass
class AttentionSaved:
    """What the attention block's backward reads, for one layer."""

    x: object  # (batch, seq, hidden), the layer input
    normed: object  # (batch, seq, hidden), rms_norm(x)
    q: object  # (batch, heads, seq, head_dim), after rotary
    k: object  # (batch, kv_heads, seq, head_dim), after rotary
    v: object  # (batch, kv_heads, seq, head_dim)
    kept: object  # what the attention's backward reads (reference: the probabilities (batch, heads, seq, seq))
    merged: object  # (batch, seq, heads * head_dim), the heads before o_proj


def split_heads(x, n_heads, head_dim):
    """(batch, seq, n_heads * head_dim) -> (batch, n_heads, seq, head_dim)."""
    xp = namespace_of(x)
    batch, seq, _ = x.shape
    return xp.permute_dims(xp.reshape(x, (batch, seq, n_heads, head_dim)), (0, 2, 1, 3))


def merge_heads(x):
    """(batch, n_heads, seq, head_dim) -> (batch, seq, n_heads * head_dim)."""
    xp = namespace_of(x)
    batch, n_heads, seq, head_dim = x.shape
    return xp.reshape(xp.permute_dims(x, (0, 2, 1, 3)), (batch, seq, n_heads * head_dim))


def attention_forward(x, w, config, cos, sin, mask, attend: AttentionPair = REFERENCE_ATTENTION):
    """The attention block (norm, projections, rotary, attention, o_proj) -> (output, AttentionSaved)."""
    c = config
    normed = F.rms_norm(x, w.attn_norm, c.rms_norm_eps)
    q = F.apply_rotary(split_heads(project(normed, w, "q_proj"), c.num_attention_heads, c.head_dim), cos, sin)
    k = F.apply_rotary(split_heads(project(normed, w, "k_proj"), c.num_key_value_heads, c.head_dim), cos, sin)
    v = split_heads(project(normed, w, "v_proj"), c.num_key_value_heads, c.head_dim)
    out, kept = attend.forward(q, k, v, mask)  # (batch, heads, seq, head_dim)
    merged = merge_heads(out)
    return project(merged, w, "o_proj"), AttentionSaved(x, normed, q, k, v, kept, merged)


def projection_backward(grad_y, x, w, field: str, frozen: bool = False):
    """grad of ``project(x, w, field)`` (..., out) -> (grad of x (..., in), grads by key).

    Keys: the weight's and bias's fields ("q_proj", "q_bias"), left out when ``frozen`` (and their
    products not computed), and the adapter's "q_proj.lora_A", "q_proj.lora_B" when it has one.
    """
    weight, bias_field = getattr(w, field), field.replace("_proj", "_bias")
    grads = {}
    if frozen:
        grad_x = grad_y @ weight  # (..., in); grad_W = grad_y^T x is not needed
    else:
        grad_x, grads[field], grads[bias_field] = F.linear_backward(grad_y, x, weight, getattr(w, bias_field))
    adapter = w.lora.get(field) if w.lora else None
    if adapter is not None:
        grad_x_lora, grads[f"{field}.lora_A"], grads[f"{field}.lora_B"] = F.lora_delta_backward(
            grad_y, x, adapter.lora_A, adapter.lora_B, adapter.scale)
        grad_x = grad_x + grad_x_lora
    return grad_x, grads


def attention_backward(grad_out, w, config, cos, sin, mask, s: AttentionSaved, frozen: bool = False,
                       attend: AttentionPair = REFERENCE_ATTENTION):
    """grad of the attention block's output (batch, seq, hidden) -> (grad of its input x, weight grads by key)."""
    c = config
    grad_merged, grads = projection_backward(grad_out, s.merged, w, "o_proj", frozen)
    grad_heads = split_heads(grad_merged, c.num_attention_heads, c.head_dim)  # (batch, heads, seq, head_dim)
    grad_q, grad_k, grad_v = attend.backward(grad_heads, s.q, s.k, s.v, mask, s.kept)
    grad_normed = 0.0
    for name, grad in (("q", F.apply_rotary_backward(grad_q, cos, sin)), ("k", F.apply_rotary_backward(grad_k, cos, sin)),
                       ("v", grad_v)):
        grad_in, projection_grads = projection_backward(merge_heads(grad), s.normed, w, f"{name}_proj", frozen)
        grads.update(projection_grads)
        grad_normed = grad_normed + grad_in
    grad_x, grads["attn_norm"] = F.rms_norm_backward(grad_normed, s.x, w.attn_norm, c.rms_norm_eps)
    return grad_x, grads


@dataclass
class MLPSaved:
    """What the MLP block's backward reads, for one layer."""

    h: object  # (batch, seq, hidden), the block input (the residual stream after attention)
    normed: object  # (batch, seq, hidden), rms_norm(h)
    gate_in: object  # (batch, seq, intermediate), gate_proj(normed) before silu
    up: object  # (batch, seq, intermediate), up_proj(normed)


def mlp_forward(h, w, config):
    """The MLP block (norm, gate and up, silu, down) -> (output, MLPSaved); the same numbers as model.forward.mlp."""
    normed = F.rms_norm(h, w.mlp_norm, config.rms_norm_eps)
    gate_in, up = project(normed, w, "gate_proj"), project(normed, w, "up_proj")
    return project(F.silu(gate_in) * up, w, "down_proj"), MLPSaved(h, normed, gate_in, up)


def mlp_backward(grad_out, w, config, s: MLPSaved, frozen: bool = False):
    """grad of the MLP block's output -> (grad of its input h, weight grads by key)."""
    h, normed = s.h, s.normed
    if frozen or w.lora:
        grad_normed, grads = adapted_mlp_backward(grad_out, w, s, frozen)
        grad_h, grads["mlp_norm"] = F.rms_norm_backward(grad_normed, h, w.mlp_norm, config.rms_norm_eps)
        return grad_h, grads
    parts = F.swiglu_mlp_backward(grad_out, normed, w.gate_proj, w.up_proj, w.down_proj,
                                  w.gate_bias, w.up_bias, w.down_bias, gate_in=s.gate_in, up=s.up)
    grads = {key: parts.get(key) for key in ("gate_proj", "up_proj", "down_proj", "gate_bias", "up_bias", "down_bias")}
    grad_h, grads["mlp_norm"] = F.rms_norm_backward(parts["x"], h, w.mlp_norm, config.rms_norm_eps)
    return grad_h, grads


def adapted_mlp_backward(grad_out, w, s: MLPSaved, frozen: bool):
    """``F.swiglu_mlp_backward`` written out through :func:`projection_backward`, for LoRA adapters
    and frozen weights -> (grad of normed, grads by key)."""
    normed, gate_in, up = s.normed, s.gate_in, s.up  # (..., hidden), (..., intermediate) twice
    gate = F.silu(gate_in)
    grad_hidden, grads = projection_backward(grad_out, gate * up, w, "down_proj", frozen)
    grad_from_gate, gate_grads = projection_backward(F.silu_backward(grad_hidden * up, gate_in), normed, w,
                                                     "gate_proj", frozen)
    grad_from_up, up_grads = projection_backward(grad_hidden * gate, normed, w, "up_proj", frozen)
    grads.update(gate_grads)
    grads.update(up_grads)
    return grad_from_gate + grad_from_up, grads


def layer_forward(x, w, config, cos, sin, mask, attend: AttentionPair = REFERENCE_ATTENTION):
    """One decoder layer, as decoder_layer computes it -> (output, what its backward needs)."""
    attn_out, attention_saved = attention_forward(x, w, config, cos, sin, mask, attend)
    h = x + attn_out
    mlp_out, mlp_saved = mlp_forward(h, w, config)
    return h + mlp_out, (attention_saved, mlp_saved)


def layer_backward(grad_out, w, config, cos, sin, mask, saved, frozen: bool = False,
                   attend: AttentionPair = REFERENCE_ATTENTION):
    """grad of a layer's output -> (grad of its input, weight grads by key). Residuals pass grad on unchanged."""
    attention_saved, mlp_saved = saved
    grad_h, grads = mlp_backward(grad_out, w, config, mlp_saved, frozen)
    grad_h = grad_out + grad_h  # h feeds both the residual and the MLP
    grad_x, attention_grads = attention_backward(grad_h, w, config, cos, sin, mask, attention_saved, frozen, attend)
    grads.update(attention_grads)
    return grad_h + grad_x, grads


def layer_parameter_name(layer: int, key: str) -> str:
    """Hugging Face name of a layer gradient's key: "q_proj" -> model.layers.{layer}.self_attn.q_proj.weight,
    "q_proj.lora_A" -> model.layers.{layer}.self_attn.q_proj.lora_A.weight."""
    field, _, part = key.partition(".")
    return adapter_name(layer, field, part) if part else f"model.layers.{layer}.{LAYER_NAMES[field]}"


def default_labels(input_ids, attention_mask):
    """labels = input_ids, with padding positions ignored (-100)."""
    xp = namespace_of(input_ids)
    if attention_mask is None:
        return input_ids
    return xp.where(attention_mask != 0, input_ids, xp.full_like(input_ids, -100))


def forward_and_backward(weights, config, input_ids, labels, attention_mask=None, position_ids=None,
                         recompute: bool = False, attend: AttentionPair | None = None):
    """Loss and gradients of a causal LM on eager weights -> (loss as a 0-d array, grads by Hugging Face name).

    input_ids, labels: (batch, seq) on the weights' backend; labels -100 are ignored; the loss
    predicts labels[:, t + 1] from position t, as transformers' LlamaForCausalLM does.
    attend: the attention pair; None: the blocked causal pair without an attention mask, else the reference.
    """
    xp = namespace_of(input_ids)
    batch, seq = input_ids.shape
    if position_ids is None:
        position_ids = (F.positions_from_mask(attention_mask) if attention_mask is not None
                        else xp.broadcast_to(xp.arange(seq)[None, :], (batch, seq)))
    x = weights.embed(input_ids)  # (batch, seq, hidden)
    cos, sin = rotary_tables(config, position_ids, x.dtype)
    mask = F.attention_mask(seq, seq, xp, attention_mask)  # (batch or 1, 1, seq, seq)
    if attend is None:
        attend = CAUSAL_BLOCKS if attention_mask is None else REFERENCE_ATTENTION

    kept = []  # per layer: its input (recompute) or everything its backward reads
    for i, w in enumerate(weights.layers):
        out, saved = layer_forward(x, w, config, cos, sin, mask, attend)
        kept.append(x if recompute else saved)
        x = out
    normed = F.rms_norm(x, weights.norm, config.rms_norm_eps)
    logits = F.linear(normed, weights.lm_head)  # (batch, seq, vocab)
    loss = F.causal_lm_loss(logits, labels)

    frozen = any(layer.lora for layer in weights.layers)  # LoRA: only the adapters are trained
    grads = {}
    grad_logits = F.causal_lm_loss_backward(logits, labels)
    if frozen:
        grad_normed = grad_logits @ weights.lm_head  # (batch, seq, hidden)
    else:
        grad_normed, lm_head_grad, _ = F.linear_backward(grad_logits, normed, weights.lm_head)
    grad_x, norm_grad = F.rms_norm_backward(grad_normed, x, weights.norm, config.rms_norm_eps)
    if not frozen:
        grads["model.norm.weight"] = norm_grad
    for i in reversed(range(len(weights.layers))):
        w = weights.layers[i]
        saved = layer_forward(kept[i], w, config, cos, sin, mask, attend)[1] if recompute else kept[i]
        kept[i] = None  # this layer's activations are no longer needed
        grad_x, layer_grads = layer_backward(grad_x, w, config, cos, sin, mask, saved, frozen, attend)
        for key, grad in layer_grads.items():
            if grad is not None and (not frozen or ".lora_" in key):
                grads[layer_parameter_name(i, key)] = grad
    if frozen:
        return loss, grads  # the adapters' only: the embedding and LM head are frozen too
    embed_grad = F.embedding_backward(grad_x, input_ids, config.vocab_size)
    if weights.lm_head is weights.embed_tokens:  # tied: one table, both uses summed
        grads["model.embed_tokens.weight"] = embed_grad + lm_head_grad
    else:
        grads["model.embed_tokens.weight"] = embed_grad
        grads["lm_head.weight"] = lm_head_grad
    return loss, grads


def loss_and_grads(model, input_ids, labels=None, attention_mask=None, position_ids=None, recompute: bool = False):
    """(loss, grads) of a LlamaForCausalLM on a batch, as transformers' ``model(..., labels=...).loss`` and autograd.

    labels: (batch, seq), -100 where ignored; None means input_ids with padding ignored.
    loss is a Python float; grads maps each parameter's Hugging Face name
    (``model.layers.0.self_attn.q_proj.weight``, ...) to an array of its shape and dtype.
    A tied LM head has one gradient, under the embedding's name, with both uses summed.
    With LoRA adapters attached (``add_lora``, ``load_lora``), only the adapters are trained:
    grads holds exactly the names ``add_lora`` returned (``...q_proj.lora_A.weight``, ...).
    recompute: keep only each layer's input and compute its intermediates again in the backward.
    """
    if getattr(model.weights, "lm_head", None) is None:
        raise ValueError("loss_and_grads needs a LlamaForCausalLM (a model with an LM head)")
    if model.weights.lazy_dtype is not None:
        raise ValueError("training needs the weights in memory: load with lazy=False")
    ids, mask, positions = model._prepare(input_ids, attention_mask, position_ids)
    labels = default_labels(ids, mask) if labels is None else model._as_int_array(labels, "labels")
    if tuple(labels.shape) != tuple(ids.shape):
        raise ValueError(f"labels has shape {tuple(labels.shape)}, but input_ids has {tuple(ids.shape)}")
    loss, grads = forward_and_backward(model.weights, model.config, ids, labels, mask, positions, recompute)
    return float(loss), grads
