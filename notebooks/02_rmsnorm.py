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
# # 2. RMSNorm
#
# Before each attention and MLP block, Llama rescales every token's vector to a root-mean-square
# of 1 and multiplies by a learned gain per channel. Unlike LayerNorm it does not subtract the mean.
#
# `y = weight * x / sqrt(mean(x²) + eps)`
#
# This notebook needs no model; the last cell looks at the norm gains of the model in
# `MINILLAMA_MODEL`, or of a small random stand-in.

# %%
import matplotlib.pyplot as plt
import numpy as np

import minillama
from minillama.functional import rms_norm
from _setup import pick_model, save

rng = np.random.default_rng(0)
x = (rng.standard_normal((3, 512)) * np.array([[0.5], [3.0], [40.0]])).astype(np.float32)  # three tokens
y = rms_norm(x, np.ones(512, dtype=np.float32), eps=1e-6)
print("rms before:", np.sqrt((x ** 2).mean(-1)), "after:", np.sqrt((y ** 2).mean(-1)))
print("dtype in, out:", x.dtype, y.dtype)

# %% [markdown]
# Half precision is normalised in float32 and cast back: squaring 300 overflows float16's range,
# yet the result is right.

# %%
big = np.full((1, 8), 300.0, dtype=np.float16)
print((big.astype(np.float16) ** 2)[0, :2], "->", rms_norm(big, np.ones(8, dtype=np.float16), 1e-6))

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for row, label in zip(x, ("small", "medium", "large")):
    axes[0].hist(row, bins=40, alpha=0.6, label=label)
for row, label in zip(y, ("small", "medium", "large")):
    axes[1].hist(row, bins=40, alpha=0.6, label=label)
axes[0].set_title("three tokens before RMSNorm")
axes[1].set_title("after: the same scale")
axes[0].legend()
fig.tight_layout()
print("saved", save(fig, "rmsnorm_histograms.png"))

# %%
model_path, description = pick_model()
model = minillama.load(model_path, lazy=True)
print("running on", description)
gains = np.stack([np.asarray(model.weights.layer(i).attn_norm) for i in range(model.config.num_hidden_layers)])
print("attention-norm gains per layer: mean", gains.mean(1).round(3))
