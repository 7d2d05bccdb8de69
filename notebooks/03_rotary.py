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
# # 3. Rotary position embeddings (RoPE)
#
# Llama adds no position vector. Instead, each head's query and key are cut into pairs of numbers,
# and pair `i` of the token at position `p` is rotated by the angle `p * inv_freq[i]`, with
# `inv_freq[i] = theta ** (-2i / head_dim)`. Fast pairs turn a lot per token, slow pairs barely.
# The dot product of a rotated query and key then depends only on their distance.
#
# No model needed: this uses a config with Llama-2-7B's head size (128) and theta (10000).

# %%
import matplotlib.pyplot as plt
import numpy as np

from minillama import LlamaConfig, get_namespace
from minillama.functional.rope import apply_rotary, apply_rotary_interleaved, inverse_frequencies, rope_cos_sin
from _setup import save

xp = get_namespace("numpy")
config = LlamaConfig(hidden_size=4096, num_attention_heads=32, max_position_embeddings=4096)
inv_freq = inverse_frequencies(config, xp)
print("head_dim", config.head_dim, "->", inv_freq.shape[0], "pairs; fastest", inv_freq[0], "slowest", inv_freq[-1])
print("wavelengths in tokens: from", 2 * np.pi / inv_freq[0], "to", round(2 * np.pi / inv_freq[-1]))

# %% [markdown]
# ## Relative position is all that matters

# %%
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 1, 1, 128)).astype(np.float32)
k = rng.standard_normal((1, 1, 1, 128)).astype(np.float32)


def score(pq, pk):
    cq, sq = rope_cos_sin(np.array([[pq]]), inv_freq, np.float32)
    ck, sk = rope_cos_sin(np.array([[pk]]), inv_freq, np.float32)
    return float((apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum())


print("q at 5, k at 2:", score(5, 2), "| q at 105, k at 102:", score(105, 102))
distances = np.arange(0, 200)
scores = [score(int(d), 0) for d in distances]

# %% [markdown]
# ## Rotate-half (Hugging Face) versus interleaved (Meta, llama2.c)
# Same rotation, different pairing of the numbers: HF pairs `(x[i], x[i + 64])`, Meta pairs
# `(x[2i], x[2i+1])`. With the features permuted, the two agree exactly; that permutation is what
# the checkpoint converters apply to wq and wk.

# %%
cos, sin = rope_cos_sin(np.array([[0, 1, 2, 3]]), inv_freq, np.float32)
x = rng.standard_normal((1, 1, 4, 128)).astype(np.float32)
to_half = np.concatenate([np.arange(0, 128, 2), np.arange(1, 128, 2)])
print("max difference:", np.abs(apply_rotary(x[..., to_half], cos, sin) - apply_rotary_interleaved(x, cos, sin)[..., to_half]).max())

# %% [markdown]
# ## Scaling variants, for contexts longer than training
# `linear` divides every frequency by the factor; `dynamic` (NTK) grows theta once the sequence is
# longer than trained; `llama3` leaves fast pairs alone, divides slow ones, and blends between.

# %%
variants = {
    "default": None,
    "linear x4": {"rope_type": "linear", "factor": 4.0},
    "dynamic x4 at 16k": {"rope_type": "dynamic", "factor": 4.0},
    "llama3 x8": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 4096},
}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for name, scaling in variants.items():
    cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, max_position_embeddings=4096, rope_scaling=scaling)
    axes[0].plot(inverse_frequencies(cfg, xp, seq_len=16384), label=name)
axes[0].set_yscale("log")
axes[0].set_xlabel("pair i")
axes[0].set_ylabel("inv_freq (radians per token)")
axes[0].set_title("Rotation speed of each pair")
axes[0].legend()
axes[1].plot(distances, scores)
axes[1].set_xlabel("distance between query and key")
axes[1].set_ylabel("q · k after rotation")
axes[1].set_title("The score depends on distance only")
fig.tight_layout()
print("saved", save(fig, "rope_frequencies.png"))
