"""The Hugging Face tensor names of a Llama checkpoint, and the shape the config gives each one.

Every reader maps its own names onto these (``model.layers.0.self_attn.q_proj.weight``, ...),
the model loads them, ``convert`` writes them, and the synthetic checkpoints are made from them.
"""

from __future__ import annotations

# Field of a decoder layer -> its tensor name, relative to "model.layers.{i}."
LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "q_proj": "self_attn.q_proj.weight", "k_proj": "self_attn.k_proj.weight",
    "v_proj": "self_attn.v_proj.weight", "o_proj": "self_attn.o_proj.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "gate_proj": "mlp.gate_proj.weight", "up_proj": "mlp.up_proj.weight", "down_proj": "mlp.down_proj.weight",
    "q_bias": "self_attn.q_proj.bias", "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias", "o_bias": "self_attn.o_proj.bias",
    "gate_bias": "mlp.gate_proj.bias", "up_bias": "mlp.up_proj.bias", "down_bias": "mlp.down_proj.bias",
}
ATTENTION_BIASES = ("q_bias", "k_bias", "v_bias", "o_bias")
MLP_BIASES = ("gate_bias", "up_bias", "down_bias")


def layer_shapes(config) -> dict[str, tuple]:
    """Field -> shape for the tensors one decoder layer of this config has (biases only when configured)."""
    c = config
    q, kv, h, i = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.hidden_size, c.intermediate_size
    shapes = {
        "attn_norm": (h,), "q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
        "mlp_norm": (h,), "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i),
    }
    if c.attention_bias:
        shapes.update({"q_bias": (q,), "k_bias": (kv,), "v_bias": (kv,), "o_bias": (h,)})
    if c.mlp_bias:
        shapes.update({"gate_bias": (i,), "up_bias": (i,), "down_bias": (h,)})
    return shapes


def tensor_shapes(config, head: str | None = "lm_head") -> dict[str, tuple]:
    """Every tensor of a checkpoint with this config, in Hugging Face's file order.

    head: "lm_head" (LlamaForCausalLM; none when the embeddings are tied), "score"
    (LlamaForSequenceClassification) or None (LlamaModel).
    """
    c = config
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size)}
    per_layer = layer_shapes(c)
    for i in range(c.num_hidden_layers):
        shapes.update({f"model.layers.{i}.{LAYER_NAMES[field]}": shape for field, shape in per_layer.items()})
    shapes["model.norm.weight"] = (c.hidden_size,)
    if head == "lm_head" and not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    elif head == "score":
        shapes["score.weight"] = (c.num_labels, c.hidden_size)
    return shapes


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor name belongs to (``model.layers.3.mlp...`` -> 3), or None."""
    parts = name.split(".")
    for at, part in enumerate(parts[:-1]):
        if part == "layers" and parts[at + 1].isdigit():
            return int(parts[at + 1])
    return None
