"""The forward pass of a Llama model, assembled from the components in ``functional``.

Data flows through a forward pass like this:

    token ids (batch, seq)
      -> embedding                                      (batch, seq, hidden)
      -> for each layer:
             h = x + self_attention(rms_norm(x))        attention block
             x = h + mlp(rms_norm(h))                   feed-forward block
      -> rms_norm                                       last_hidden_state
      -> lm_head (or score, for classification)         logits (batch, seq, vocab)

Every projection goes through :func:`project`, which adds a LoRA adapter's update when the
layer has one. This is the reference assembly: one path per block, written for reading. A speed
arrangement (``minillama.fast``) replaces :func:`self_attention` or :func:`mlp` as a whole,
through an :class:`Assembly` chosen once when a model is loaded; nothing here branches on speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import functional as F
from ..backend import namespace_of


def project(x, w, field: str, slices: int = 1, split: str = "out"):
    """x through the layer's projection ``field`` ("q_proj", ..., "down_proj") and its bias, plus
    the LoRA update (alpha / r) B A x when an adapter is attached to it.

    x: (..., in) -> (..., out); slices and split as in ``F.linear_sliced`` (pretraining_tp).
    """
    y = F.linear_sliced(x, getattr(w, field), getattr(w, field.replace("_proj", "_bias")), slices, split)
    adapter = w.lora.get(field) if w.lora else None
    if adapter is None:
        return y
    return y + F.lora_delta(x, adapter.lora_A, adapter.lora_B, adapter.scale)


def attention_heads(x, w, config, cos, sin):
    """Project x to queries, keys and values, split them into heads, and rotate q and k.

    x: (batch, seq, hidden) -> q (batch, heads, seq, head_dim), k and v (batch, kv_heads, seq, head_dim).
    """
    xp = namespace_of(x)
    batch, seq, _ = x.shape
    heads, kv_heads, head_dim, tp = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.pretraining_tp
    q = project(x, w, "q_proj", tp)  # (batch, seq, heads * head_dim)
    k = project(x, w, "k_proj", tp)  # (batch, seq, kv_heads * head_dim)
    v = project(x, w, "v_proj", tp)
    # Split the features into heads and put heads before positions.
    q = xp.permute_dims(xp.reshape(q, (batch, seq, heads, head_dim)), (0, 2, 1, 3))  # (batch, heads, seq, head_dim)
    k = xp.permute_dims(xp.reshape(k, (batch, seq, kv_heads, head_dim)), (0, 2, 1, 3))  # (batch, kv_heads, seq, head_dim)
    v = xp.permute_dims(xp.reshape(v, (batch, seq, kv_heads, head_dim)), (0, 2, 1, 3))
    return F.apply_rotary(q, cos, sin), F.apply_rotary(k, cos, sin), v


def output_projection(out, w, config):
    """Merge the heads back into one vector per position and apply o_proj.

    out: (batch, heads, seq, head_dim) -> (batch, seq, hidden)
    """
    xp = namespace_of(out)
    batch, heads, seq, head_dim = out.shape
    merged = xp.reshape(xp.permute_dims(out, (0, 2, 1, 3)), (batch, seq, heads * head_dim))
    return project(merged, w, "o_proj", config.pretraining_tp, split="in")


def self_attention(x, w, config, cos, sin, mask, cache=None, layer: int = 0, want_probs: bool = True):
    """The attention block of one layer, without the norm and residual.

    x: (batch, seq, hidden) -> ((batch, seq, hidden), probabilities (batch, heads, seq, k_len)).
    With a KVCache, the new keys and values are appended to the layer's cache and the
    queries attend to every cached position (k_len = cached + seq). ``want_probs`` says
    whether the caller uses the probabilities (a speed arrangement may skip them).
    """
    q, k, v = attention_heads(x, w, config, cos, sin)
    if cache is not None:
        k, v = cache.update(layer, k, v)  # (batch, kv_heads, cached + seq, head_dim)
    out, probs = F.attention(q, k, v, mask)  # (batch, heads, seq, head_dim)
    return output_projection(out, w, config), probs


def mlp(x, w, config):
    """The SwiGLU feed-forward block of one layer, down(silu(gate(x)) * up(x)). x: (batch, seq, hidden).

    ``F.swiglu_mlp`` written out, so that each projection can carry a LoRA adapter and, with
    pretraining_tp > 1, be computed in slices as the checkpoint was trained.
    """
    tp = config.pretraining_tp
    gate = F.silu(project(x, w, "gate_proj", tp))  # (batch, seq, intermediate)
    up = project(x, w, "up_proj", tp)
    return project(gate * up, w, "down_proj", tp, split="in")  # (batch, seq, hidden)


@dataclass(frozen=True)
class Assembly:
    """Which function computes each block of a layer, and how the weights are laid out for them.

    The reference assembly uses :func:`self_attention` and :func:`mlp` above on the weights as
    loaded. A speed arrangement (``minillama.fast``) supplies drop-in replacements, each tested
    equal to the reference, and ``arrange`` rearranges the loaded weights once for them.
    """

    name: str
    self_attention: Callable = self_attention
    mlp: Callable = mlp
    arrange: Callable | None = None  # (weights, config) -> weights, applied once at load (eager weights only)


REFERENCE = Assembly("reference")


def decoder_layer(x, w, config, cos, sin, mask, cache=None, layer: int = 0, want_probs: bool = True,
                  assembly: Assembly = REFERENCE):
    """One pre-norm block: attention then MLP, each added to the residual stream."""
    attn_out, probs = assembly.self_attention(F.rms_norm(x, w.attn_norm, config.rms_norm_eps), w, config, cos, sin,
                                              mask, cache, layer, want_probs)
    h = x + attn_out
    return h + assembly.mlp(F.rms_norm(h, w.mlp_norm, config.rms_norm_eps), w, config), probs


def rotary_tables(config, position_ids, dtype):
    """cos and sin (batch, seq, head_dim) for these positions, after the config's rope scaling."""
    xp = namespace_of(position_ids)
    # Only dynamic RoPE depends on the longest position; reading it is a device-to-host sync on a GPU.
    dynamic = config.rope_scaling is not None and config.rope_scaling["rope_type"] == "dynamic"
    seq_len = int(xp.max(position_ids)) + 1 if dynamic else None
    inv_freq = F.inverse_frequencies(config, xp, seq_len=seq_len)
    return F.rope_cos_sin(position_ids, inv_freq, dtype)


def llama_forward(weights, config, input_ids, attention_mask=None, position_ids=None,
                  output_hidden_states: bool = False, output_attentions: bool = False, cache=None,
                  assembly: Assembly = REFERENCE):
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
            position_ids = F.positions_from_mask(attention_mask)[:, past:]
        else:
            position_ids = xp.broadcast_to(xp.arange(past, past + seq)[None, :], (batch, seq))
    x = weights.embed(input_ids)  # (batch, seq, hidden)
    cos, sin = rotary_tables(config, position_ids, x.dtype)  # (batch, seq, head_dim)
    # (batch, 1, seq, past + seq); one new token without padding sees every key, and needs no mask.
    mask = None if seq == 1 and attention_mask is None else F.attention_mask(seq, past + seq, xp, attention_mask)

    hidden_states, attentions = [x] if output_hidden_states else None, [] if output_attentions else None
    for i in range(len(weights.layers)):
        x, probs = decoder_layer(x, weights.layer(i), config, cos, sin, mask, cache, i, output_attentions, assembly)
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
