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
# # 4. Attention with grouped-query heads
#
# Each query scores every key it may see (`q · k / sqrt(head_dim)`), a softmax turns the scores
# into weights, and the output is the weighted sum of the values. Llama 2 70B (and many later
# models) use **grouped-query attention**: several query heads share one key/value head, which
# shrinks the KV cache. `minillama.functional.attention` handles any grouping, from one key/value
# head per query head (MHA) to one for all (MQA).
#
# Runs on the model in `MINILLAMA_MODEL`, or on a small random stand-in with 8 query heads and
# 4 key/value heads.

# %%
import matplotlib.pyplot as plt
import numpy as np

import minillama
from minillama import functional as F
from _setup import pick_model, pick_tokenizer, save

xp = minillama.get_namespace("numpy")

# %% [markdown]
# ## Masks
# Causal: a token sees itself and the past. Padding: padded keys are hidden too. Here the second
# sequence is left-padded by two.

# %%
padding = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
mask = F.attention_mask(5, 5, xp, padding)  # (batch, 1, q_len, k_len)
print(mask[0, 0].astype(int), "\n")
print(mask[1, 0].astype(int))

# %% [markdown]
# ## Grouped-query attention equals repeating each key/value head
# A group of query heads uses the same key and value head. minillama reshapes the queries into
# groups instead of copying keys and values; the result is the same as repeating them.

# %%
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 8, 5, 16)).astype(np.float32)  # 8 query heads
k = rng.standard_normal((1, 2, 5, 16)).astype(np.float32)  # 2 key/value heads: groups of 4
v = rng.standard_normal((1, 2, 5, 16)).astype(np.float32)
causal = F.attention_mask(5, 5, xp)
grouped, _ = F.attention(q, k, v, causal)
repeated, _ = F.attention(q, np.repeat(k, 4, axis=1), np.repeat(v, 4, axis=1), causal)
print("max difference:", np.abs(grouped - repeated).max())

# %% [markdown]
# ## Attention maps of a model

# %%
model_path, description = pick_model()
print("running on", description)
model = minillama.load(model_path, lazy=True)
tokenizer = pick_tokenizer(model_path)
text = "The llama looked at the river and the llama drank"
ids = np.array([tokenizer.encode(text)])
out = model(ids, output_attentions=True)
pieces = tokenizer.convert_ids_to_tokens(ids[0].tolist())
c = model.config
print(len(out.attentions), "layers of", out.attentions[0].shape, "(batch, heads, query, key)")

fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
for ax, (layer, head) in zip(axes, [(0, 0), (c.num_hidden_layers // 2, 1), (c.num_hidden_layers - 1, c.num_attention_heads - 1)]):
    ax.imshow(out.attentions[layer][0, head], cmap="viridis")
    ax.set_title(f"layer {layer}, head {head} (kv head {head // c.num_kv_groups})")
    ax.set_xticks(range(len(pieces)), pieces, rotation=90, fontsize=7)
    ax.set_yticks(range(len(pieces)), pieces, fontsize=7)
fig.tight_layout()
print("saved", save(fig, "attention_heatmaps.png"))
