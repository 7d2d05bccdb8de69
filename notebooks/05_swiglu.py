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
# # 5. The SwiGLU MLP
#
# After attention, each token goes through the same small network on its own:
# `down(silu(gate(x)) * up(x))`. Two projections widen the vector (4096 -> 11008 in Llama-2-7B);
# one of them, through `silu(x) = x * sigmoid(x)`, decides how much of the other passes: a *gate*.

# %%
import matplotlib.pyplot as plt
import numpy as np

import minillama
from minillama import functional as F
from _setup import pick_model, save

z = np.linspace(-6, 6, 241, dtype=np.float32)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(z, F.silu(z), label="silu(x) = x·sigmoid(x)")
ax.plot(z, np.maximum(z, 0), "--", label="relu(x)")
ax.axhline(0, color="gray", lw=0.5)
ax.legend()
ax.set_title("The gate activation")
print("saved", save(fig, "swiglu_silu.png"))

# %%
model_path, description = pick_model()
print("running on", description)
model = minillama.load(model_path, lazy=True)
c = model.config
w = model.weights.layer(0)
x = np.random.default_rng(0).standard_normal((1, 3, c.hidden_size)).astype(np.float32)
gate = F.silu(F.linear(x, w.gate_proj))  # (1, 3, intermediate)
up = F.linear(x, w.up_proj)
out = F.linear(gate * up, w.down_proj)  # (1, 3, hidden)
print("x", x.shape, "-> gate, up", gate.shape, "-> out", out.shape)
print("fraction of gate values near zero (|g| < 0.05):", float((np.abs(gate) < 0.05).mean()).__round__(3))
assert np.allclose(out, F.swiglu_mlp(x, w.gate_proj, w.up_proj, w.down_proj), atol=1e-5)
params = 3 * c.hidden_size * c.intermediate_size
print(f"MLP parameters per layer: {params:,} ({params * c.num_hidden_layers / 1e6:.1f} M in all layers)")
