# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. The full Llama-2-7B forward pass, layer by layer
#
# This notebook runs one forward pass by hand, with minillama's own functions, and looks inside:
# the embedding, each block's norm, the q/k/v projections and their shapes, the rotary embedding,
# attention, the residual stream, the MLP, the final norm, the logits and the next-token
# distribution.
#
# **Which model.** Set `MINILLAMA_MODEL` to a Llama-2-7B folder (Hugging Face, Meta's
# `consolidated.00.pth` release, or a llama2.c `.bin`) before starting Jupyter, and the notebook
# runs on it. Otherwise it makes a small random stand-in in a few seconds, so it runs anywhere: the
# shapes and the code path are the real ones, the words are not.
#
# **Memory.** A 7B checkpoint in float16 is 13.5 GB; in float32 it would be 27 GB. The model is
# loaded *lazily*: weights stay memory-mapped in their stored dtype and each layer is upcast to
# float32 only while it runs, so this notebook fits in 24 GiB.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

import minillama
from minillama import functional as F
from minillama.functional import positions_from_mask
from minillama.model import decoder_layer
from minillama.functional.rope import apply_rotary, inverse_frequencies, rope_cos_sin
from _setup import pick_model, pick_tokenizer, save

MODEL, DESCRIPTION = pick_model(layers=4)
PROMPT = "The capital of France is"
print("running on", DESCRIPTION)

# %%
start = time.perf_counter()
model = minillama.load(MODEL, lazy=True)  # lazy: each layer is read and upcast when it runs
tokenizer = pick_tokenizer(MODEL)
c = model.config
print(f"loaded in {time.perf_counter() - start:.1f} s: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
      f"{c.num_attention_heads} heads ({c.num_key_value_heads} key/value heads) of {c.head_dim}, "
      f"MLP {c.intermediate_size}, vocabulary {c.vocab_size}")

# %% [markdown]
# ## Tokens and the embedding
# The prompt becomes token ids (with BOS in front), and each id selects one row of the embedding
# table. That row is the start of the **residual stream**, the vector every layer reads from and adds to.

# %%
ids = np.array([tokenizer.encode(PROMPT)])  # (batch=1, seq)
print("pieces:", tokenizer.convert_ids_to_tokens(ids[0].tolist()))
x = model.weights.embed(ids)  # (batch, seq, hidden)
print("embedding:", x.shape, x.dtype, f"mean {x.mean():+.4f}, std {x.std():.4f}")
seq = ids.shape[1]

# %% [markdown]
# ## Positions: rotary embedding and the causal mask
# Positions are not added to the embedding; they rotate each head's query and key pairs by angles
# `position * inv_freq`. The mask lets each token see itself and the tokens before it.

# %%
positions = positions_from_mask(np.ones_like(ids))  # (1, seq): 0, 1, 2, ...
inv_freq = inverse_frequencies(c, model.xp)  # (head_dim / 2,)
cos, sin = rope_cos_sin(positions, inv_freq, x.dtype)  # (batch, seq, head_dim)
mask = F.attention_mask(seq, seq, model.xp)  # (1, 1, seq, seq), True = may attend
print("inv_freq:", inv_freq.shape, "from", inv_freq[0], "to", inv_freq[-1])
print("mask:\n", mask[0, 0].astype(int))

# %% [markdown]
# ## Layer 0, step by step
# Each layer is two residual blocks: `x + attention(rms_norm(x))`, then `h + mlp(rms_norm(h))`.

# %%
w = model.weights.layer(0)  # this layer's weights, upcast to float32 now
normed = F.rms_norm(x, w.attn_norm, c.rms_norm_eps)
print("after RMSNorm:", normed.shape, f"rms {np.sqrt((normed ** 2).mean()):.3f}")
q = F.linear(normed, w.q_proj)  # (batch, seq, heads * head_dim)
k = F.linear(normed, w.k_proj)  # (batch, seq, kv_heads * head_dim)
v = F.linear(normed, w.v_proj)
print("q, k, v:", q.shape, k.shape, v.shape)
heads = lambda t, n: t.reshape(1, seq, n, c.head_dim).transpose(0, 2, 1, 3)  # -> (batch, heads, seq, head_dim)
q, k, v = heads(q, c.num_attention_heads), heads(k, c.num_key_value_heads), heads(v, c.num_key_value_heads)
q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
print("per head:", q.shape, k.shape, "- each key/value head serves", c.num_kv_groups, "query heads")
attended, probs = F.attention(q, k, v, mask)  # (batch, heads, seq, head_dim), (batch, heads, seq, seq)
attn_out = F.linear(attended.transpose(0, 2, 1, 3).reshape(1, seq, -1), w.o_proj)
h = x + attn_out  # the residual stream after attention
mlp_out = F.swiglu_mlp(F.rms_norm(h, w.mlp_norm, c.rms_norm_eps), w.gate_proj, w.up_proj, w.down_proj)
layer0 = h + mlp_out
print(f"residual norm: embedding {np.linalg.norm(x[0, -1]):.2f} -> after attention {np.linalg.norm(h[0, -1]):.2f}"
      f" -> after MLP {np.linalg.norm(layer0[0, -1]):.2f} (last token)")
same, _ = decoder_layer(x, w, c, cos, sin, mask)
assert np.allclose(same, layer0, atol=1e-5), "the steps above are exactly decoder_layer"
del w

# %%
fig, ax = plt.subplots(figsize=(4.5, 4))
pieces = tokenizer.convert_ids_to_tokens(ids[0].tolist())
ax.imshow(probs[0, 0], cmap="viridis")
ax.set_xticks(range(seq), pieces, rotation=90)
ax.set_yticks(range(seq), pieces)
ax.set_title("layer 0, head 0: attention weights")
ax.set_xlabel("key (attended to)")
ax.set_ylabel("query")
print("saved", save(fig, "forward_attention_map.png"))

# %% [markdown]
# ## All layers, with a logit lens
# Now every layer in turn (each one upcast just before it runs). After each layer we also apply the
# final norm and the LM head to the last position: the **logit lens**, what the model would predict
# if it stopped there.

# %%
lm_head = model.weights.ready(model.weights.lm_head)  # (vocab, hidden), upcast once
residual_norms, lens_top, lens_prob = [np.linalg.norm(x[0, -1])], [], []
start = time.perf_counter()
for i in range(c.num_hidden_layers):
    x, _ = decoder_layer(x, model.weights.layer(i), c, cos, sin, mask)
    residual_norms.append(np.linalg.norm(x[0, -1]))
    lens = F.linear(F.rms_norm(x[:, -1:], model.weights.norm, c.rms_norm_eps), lm_head)[0, 0]  # (vocab,)
    p = F.softmax(lens)
    lens_top.append(int(np.argmax(p)))
    lens_prob.append(float(p.max()))
print(f"{c.num_hidden_layers} layers in {time.perf_counter() - start:.1f} s")
for i in range(0, c.num_hidden_layers, max(1, c.num_hidden_layers // 8)):
    print(f"  after layer {i:2d}: residual norm {residual_norms[i + 1]:8.2f}, "
          f"lens predicts {tokenizer.convert_ids_to_tokens(lens_top[i])!r} (p={lens_prob[i]:.3f})")

# %% [markdown]
# ## Final norm, logits, next token

# %%
final = F.rms_norm(x, model.weights.norm, c.rms_norm_eps)  # last_hidden_state
logits = F.linear(final, lm_head)  # (batch, seq, vocab)
probs_next = F.softmax(logits[0, -1].astype(np.float64))
top = np.argsort(-probs_next)[:5]
print("next token after", repr(PROMPT))
for t in top:
    print(f"  {tokenizer.convert_ids_to_tokens(int(t))!r:>14}  p={probs_next[t]:.4f}")
reference = model(ids).logits  # the library's own forward, for comparison
print("max |hand-made - model(ids)| =", float(np.abs(logits - reference).max()))
assert np.abs(logits - reference).max() < 1e-4

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot(range(len(residual_norms)), residual_norms, marker="o")
axes[0].set_xlabel("layer (0 = embedding)")
axes[0].set_ylabel("norm of the last token's residual")
axes[0].set_title("The residual stream grows layer by layer")
axes[1].bar(range(1, len(lens_prob) + 1), lens_prob)
axes[1].set_xlabel("layer")
axes[1].set_ylabel("top probability")
axes[1].set_title("Logit lens: confidence after each layer")
fig.tight_layout()
print("saved", save(fig, "forward_residual_and_lens.png"))
