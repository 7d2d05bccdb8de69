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
# # 7. Sampling, generation and the KV cache
#
# The model gives logits for the next token. Generation turns them into a choice, appends it and
# repeats. The sampling functions reshape the distribution first, in the order transformers
# applies them: repetition penalty, temperature, top-k, top-p (nucleus), min-p.
#
# Runs on the model in `MINILLAMA_MODEL`, or on a small random stand-in (whose text is noise).

# %%

import matplotlib.pyplot as plt
import numpy as np

import minillama
from minillama import functional as F
from minillama.generation import sampling as S
from _setup import pick_model, pick_tokenizer, save

logits = np.log(np.array([[0.30, 0.20, 0.14, 0.10, 0.08, 0.06, 0.05, 0.04, 0.02, 0.01]], dtype=np.float32))


def probs(l):
    return F.softmax(l)[0]  # the library's softmax: removed tokens (-inf) get probability 0


shapes = {
    "original": logits,
    "temperature 0.5": S.temperature(logits, 0.5),
    "temperature 2": S.temperature(logits, 2.0),
    "top-k 3": S.top_k(logits, 3),
    "top-p 0.6": S.top_p(logits, 0.6),
    "min-p 0.3": S.min_p(logits, 0.3),
}
fig, axes = plt.subplots(1, len(shapes), figsize=(15, 2.8), sharey=True)
for ax, (name, l) in zip(axes, shapes.items()):
    ax.bar(range(10), probs(l))
    ax.set_title(name)
    ax.set_xlabel("token")
axes[0].set_ylabel("probability")
fig.tight_layout()
print("saved", save(fig, "sampling_distributions.png"))
for name, l in shapes.items():
    print(f"{name:16s}", np.round(probs(l), 3))

# %% [markdown]
# ## Generation with a KV cache
# Without a cache every step recomputes the whole sequence; with one, a step computes one position
# and reads the keys and values stored so far. The logits are the same.

# %%
model_path, description = pick_model()
print("running on", description)
model = minillama.load(model_path)
tokenizer = pick_tokenizer(model_path)
prompt = "Once upon a time"
ids = np.array([tokenizer.encode(prompt)])

cache = model.new_cache(1, ids.shape[1] + 8)
cached = [model(ids, cache=cache).logits[:, -1]]
sequence = ids
for _ in range(8):
    token = np.argmax(cached[-1], axis=-1)[:, None]
    sequence = np.concatenate([sequence, token], axis=1)
    cached.append(model(token, cache=cache).logits[:, -1])
recomputed = model(sequence).logits[:, ids.shape[1] - 1:]
print("max difference cached vs recomputed:", float(np.abs(np.stack(cached, axis=1) - recomputed).max()))

out = minillama.generate_text(model, tokenizer, prompt, max_new_tokens=32, temperature=0.8, top_p=0.9, seed=0)
print(repr(prompt + out.texts[0]))
print(f"prefill {out.prefill_tokens_per_second:.0f} tokens/s, decode {out.decode_tokens_per_second:.0f} tokens/s")
for piece in minillama.stream_text(model, tokenizer, prompt, max_new_tokens=16, temperature=0.0):
    print(piece, end="|")
print()
