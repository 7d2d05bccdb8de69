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
# # 13. The KV cache and what attention costs
#
# A model generates one token at a time, and the next token's attention needs the keys and values
# of **every** earlier position. Those do not change once computed (position 5's key depends only
# on tokens 0..5), so generation stores them: the **KV cache**. Without it, step `t` would run the
# whole model over all `t` positions again; with it, a step runs the model over one position and
# reads the rest from the cache.
#
# This notebook looks inside the cache of the demo model, checks that decoding with it gives the
# same logits as running the full sequence, measures the cost of each step with and without it,
# works out the cache's memory for Llama-2-7B, and then turns to the other cost of attention, the
# (query, key) score matrix, and the **online softmax** that flash attention uses to avoid storing it.
# With `MINILLAMA_MODEL` set, the same cells run on that model: the shapes and memory change with its
# config; the 7B figures are computed from the real 7B shapes either way.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

import minillama
from minillama import functional as F
from minillama.fast.online_softmax import attention_online_softmax
from minillama.model.forward import attention_heads, rotary_tables
from _setup import TODO, check, pick_model, pick_tokenizer

model_path, description = pick_model()
print("running on", description)
model = minillama.LlamaForCausalLM.from_pretrained(model_path, assembly="reference")  # float32, reference layout
tokenizer = pick_tokenizer(model_path)
c = model.config
print(f"{c.num_hidden_layers} layers, {c.num_attention_heads} query heads over {c.num_key_value_heads} "
      f"key/value heads of {c.head_dim}")

# %% [markdown]
# ## What the cache holds
#
# `model.new_cache(batch, max_len)` preallocates, for every layer, one keys array and one values array
# of shape `(batch, kv_heads, max_len, head_dim)`. A forward pass with `cache=` computes the new
# positions' keys and values (after the rotary embedding, for keys), writes them at
# `cache.length`, and attends over everything up to there. Only the **key/value heads** are stored:
# with grouped-query attention that is fewer than the query heads.
#
# The prompt goes through in one pass (the *prefill*); then each generated token is one more pass
# of a single position (a *decode step*).

# %%
prompt = "And God said, Let there be light: and there was"
ids = np.array([tokenizer.encode(prompt)])  # (1, prompt_len), with BOS
cache = model.new_cache(batch=1, max_len=ids.shape[1] + 16)
print("layers:", len(cache.keys), " keys per layer:", cache.keys[0].shape, "(batch, kv_heads, max_len, head_dim)")
print("filled before the prefill:", cache.length)
logits = model(ids, cache=cache).logits  # (1, prompt_len, vocab)
print(f"after the prefill of {ids.shape[1]} tokens: cache.length = {cache.length}")

generated = []
for step in range(8):  # greedy decoding, one position per forward pass
    next_id = int(np.argmax(logits[0, -1]))
    generated.append(next_id)
    logits = model(np.array([[next_id]]), cache=cache).logits  # (1, 1, vocab): only the new position
print(f"after 8 decode steps: cache.length = {cache.length}; generated {tokenizer.decode(generated)!r}")

# %% [markdown]
# The cached keys of one layer, one key/value head, as an image: one row per position, one column per
# feature. Rows past `cache.length` are still zeros, waiting for tokens. The left columns change from
# row to row fastest: they are the rotary embedding's fastest-turning frequencies.

# %%
pieces = tokenizer.convert_ids_to_tokens(ids[0].tolist() + generated)
layer, kv_head = c.num_hidden_layers // 2, 0
keys = cache.keys[layer][0, kv_head]  # (max_len, head_dim)
fig, ax = plt.subplots(figsize=(8, 5))
image = ax.imshow(keys, cmap="RdBu_r", aspect="auto", vmin=-np.abs(keys).max(), vmax=np.abs(keys).max())
ax.axhline(cache.length - 0.5, color="k", lw=1)
ax.set_yticks(range(len(pieces)), pieces, fontsize=7)
ax.set_xlabel("feature of the key (head_dim)")
ax.set_title(f"cached keys, layer {layer}, key/value head {kv_head} (filled above the line)")
fig.colorbar(image, ax=ax)
plt.show()

# %% [markdown]
# ## The cache changes nothing but the cost
#
# Running the whole sequence (prompt plus the 8 generated tokens) in one pass, without a cache, must
# give the same logits at every position as the prefill-then-decode above, up to float32 rounding.

# %%
full_ids = np.array([ids[0].tolist() + generated])
full = model(full_ids).logits  # (1, seq, vocab), no cache
cached = model.new_cache(1, full_ids.shape[1])
stepwise = [model(full_ids[:, :ids.shape[1]], cache=cached).logits]
for t in range(ids.shape[1], full_ids.shape[1]):
    stepwise.append(model(full_ids[:, t:t + 1], cache=cached).logits)
stepwise = np.concatenate(stepwise, axis=1)  # (1, seq, vocab)
print(f"max |logits with cache - logits without| = {float(np.abs(stepwise - full).max()):.2e} "
      f"over {full.shape[1]} positions")

# %% [markdown]
# What it saves: generating token `t` without a cache runs the model over `t` positions (the work
# grows with the length, and the total over a reply grows with its square); with the cache it runs
# over one. Timed here for 48 new tokens after the prompt, step by step.

# %%
NEW = 48
seq_ids = ids[0].tolist()
times_without, times_with = [], []
cache = model.new_cache(1, len(seq_ids) + NEW)
model(ids, cache=cache)
for t in range(NEW):
    seq_ids.append(seq_ids[-1])  # which token comes next does not change the time a step takes
    start = time.perf_counter()
    model(np.array([seq_ids]), logits_to_keep=1)  # everything again
    times_without.append(time.perf_counter() - start)
    start = time.perf_counter()
    model(np.array([[seq_ids[-1]]]), cache=cache)  # one position
    times_with.append(time.perf_counter() - start)
lengths = np.arange(ids.shape[1] + 1, ids.shape[1] + NEW + 1)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(lengths, 1e3 * np.array(times_without), label="no cache: the whole sequence each step")
ax.plot(lengths, 1e3 * np.array(times_with), label="KV cache: one position each step")
ax.set_xlabel("sequence length at this step")
ax.set_ylabel("ms per step")
ax.set_ylim(bottom=0)
ax.legend()
plt.show()
print(f"{NEW} steps: {sum(times_without):.2f} s without the cache, {sum(times_with):.2f} s with it")

# %% [markdown]
# On a model this small, Python's overhead per layer is a large part of a step, so the gap is
# modest; on a long sequence through a large model it is the difference between linear and quadratic.
#
# ## The cache's memory
#
# Per token, each layer stores one key and one value per key/value head:
# `2 × layers × kv_heads × head_dim × bytes` per position. For Llama-2-7B (32 layers, 32 key/value
# heads, head_dim 128) in float16 that is 512 KiB per token, and at its full context of 4096 tokens,
# **2 GiB** per sequence: next to 13.5 GB of weights, a batch of 8 long sequences needs more memory
# for the cache than for the model. This is why Llama 2 70B uses grouped-query attention (8
# key/value heads for 64 query heads): its cache is 8 times smaller than it would be with one
# key/value head per query head.

# %%
def cache_bytes(layers, kv_heads, head_dim, tokens, bytes_per_value=2, batch=1):
    """Bytes of a KV cache: keys and values, every layer, every key/value head, every position."""
    return 2 * layers * kv_heads * head_dim * tokens * bytes_per_value * batch


GiB = 2 ** 30
shapes = {"Llama-2-7B (MHA, 32 kv heads)": (32, 32, 128), "Llama-2-13B (MHA, 40 kv heads)": (40, 40, 128),
          "Llama-2-70B (GQA, 8 kv heads)": (80, 8, 128), "Llama-2-70B if it were MHA (64)": (80, 64, 128)}
for name, (layers, kv_heads, head_dim) in shapes.items():
    print(f"{name:34s} {cache_bytes(layers, kv_heads, head_dim, 1) / 1024:6.0f} KiB per token, "
          f"{cache_bytes(layers, kv_heads, head_dim, 4096) / GiB:5.2f} GiB at 4096 tokens (float16)")
demo_bytes = cache.keys[0].nbytes * 2 * len(cache.keys)
print(f"this notebook's cache above: {demo_bytes / 1024:.0f} KiB for {cache.max_len} positions in "
      f"{cache.keys[0].dtype} (= {cache_bytes(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, cache.max_len, cache.keys[0].itemsize) / 1024:.0f} KiB by the formula)")

tokens = np.arange(0, 4097, 256)
fig, ax = plt.subplots(figsize=(7, 3.5))
for name, (layers, kv_heads, head_dim) in shapes.items():
    ax.plot(tokens, cache_bytes(layers, kv_heads, head_dim, tokens) / GiB, label=name)
ax.axhline(13.5e9 / GiB, color="gray", ls="--", lw=1, label="Llama-2-7B's weights (float16)")
ax.set_xlabel("tokens in the sequence")
ax.set_ylabel("GiB per sequence (float16)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## The other cost: the score matrix
#
# Over a prompt of `n` tokens, attention makes `n × n` scores per head (half of them masked), and a
# plain implementation such as `F.attention` keeps them all at once. For 7B at 4096 tokens in float32
# that is 4096 × 4096 × 32 heads × 4 bytes = 2 GiB **per layer**, far more than the keys and values
# themselves, and on a GPU it means writing all of it to slow memory and reading it back.
#
# The **online softmax** avoids it. Keys arrive in blocks; each query keeps a running maximum `m`,
# a running denominator `l = Σ exp(score − m)` and a running output `acc = Σ exp(score − m) · value`.
# When a block raises the maximum, what was accumulated is rescaled by `exp(m_old − m_new)`. After
# the last block, the output is `acc / l`: the same softmax-weighted sum, though no row of scores
# ever existed whole. `minillama.fast.online_softmax.attention_online_softmax` does exactly this;
# here it runs on the real queries, keys and values of the demo model's middle layer.

# %%
text = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.")
ids = np.array([tokenizer.encode(text)])  # (1, seq)
seq = ids.shape[1]
hidden = model(ids, output_hidden_states=True).hidden_states[layer]  # the input of layer `layer`
w = model.weights.layer(layer)
positions = np.arange(seq)[None, :]  # (1, seq)
cos, sin = rotary_tables(c, positions, hidden.dtype)
q, k, v = attention_heads(F.rms_norm(hidden, w.attn_norm, c.rms_norm_eps), w, c, cos, sin)
print("q", q.shape, " k", k.shape, " v", v.shape, "(batch, heads, seq, head_dim)")
mask = F.attention_mask(seq, seq, np)  # causal, (1, 1, seq, seq)
plain, probs = F.attention(q, k, v, mask)  # keeps the (1, heads, seq, seq) probabilities
running = []  # (block end, running max and denominator of the last query of head 0)
online = attention_online_softmax(q, k, v, mask, block_size=8,
                                  on_block=lambda start, end, m, l: running.append((end, float(m[0, 0, -1, 0]),
                                                                                    float(l[0, 0, -1, 0]))))
print(f"max |online - plain| = {float(np.abs(online - plain).max()):.2e}; dtype {online.dtype}")
print(f"plain attention held {probs.nbytes:,} bytes of probabilities; the online one a block of "
      f"{q.shape[1] * seq * 8 * 4:,} bytes of scores at a time")

# %%
ends, maxima, denominators = zip(*running)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
axes[0].step(ends, maxima, where="post")
axes[0].set_title("running maximum m of the last query's scores")
axes[1].step(ends, denominators, where="post", color="C1")
axes[1].set_title("running denominator l (rescaled when m rises)")
for ax in axes:
    ax.set_xlabel("keys seen so far")
fig.tight_layout()
plt.show()

# %% [markdown]
# The denominator can *fall* from one block to the next: when a block brings a larger score, the old
# terms are rescaled down by `exp(m_old − m_new)`. Only the final pair (m, l) matters, and it is the
# ordinary softmax's maximum and denominator for that row.
#
# ## Exercises
#
# 1. How many bytes does this model's KV cache take for one sequence of 1,000 positions in float32?
#    (Use `c`: layers, key/value heads, head_dim.)
# 2. How many GiB does Llama-2-7B's cache take in float16 for a batch of 4 sequences of 4096 tokens?
# 3. The demo model has `c.num_attention_heads` query heads over `c.num_key_value_heads` key/value
#    heads. How many times larger would its cache be with one key/value head per query head?

# %%
answer_1 = TODO
answer_2 = TODO
answer_3 = TODO
check("1. the demo cache", answer_1,
      lambda a: int(a) == 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 1000 * 4,
      "Count keys and values, every layer, every key/value head (not query head), head_dim numbers of 4 bytes each.")
check("2. 7B, batch of 4", answer_2, lambda a: abs(float(a) - 4 * 2 * 32 * 32 * 128 * 4096 * 2 / GiB) < 0.01,
      "One sequence of 4096 tokens in float16 is worked out above; a batch stores one cache per sequence.")
check("3. without grouping", answer_3, lambda a: float(a) == c.num_attention_heads / c.num_key_value_heads,
      "The cache stores one key and one value per key/value head; how many would there be with one per query head?")
