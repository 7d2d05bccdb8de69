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
# # 9. The backward pass
#
# Training needs the gradient of the loss with respect to every weight. minillama writes each
# gradient by hand, as a `*_backward` function next to its forward in `minillama.functional`, and
# `minillama.train.loss_and_grads` chains them through the whole model, in reverse.
#
# A backward takes the gradient of the loss with respect to a function's *output* (call it
# `dy`, the "upstream" gradient) and returns the gradients with respect to its inputs. To test
# one we need no autograd: pick a random `dy`, define the scalar `L = sum(f(x) * dy)` (whose
# gradient with respect to `f(x)` is exactly `dy`), and nudge each input entry by ±ε:
#
# $$\frac{\partial L}{\partial x_i} \approx \frac{L(x + \varepsilon e_i) - L(x - \varepsilon e_i)}{2\varepsilon}$$
#
# In float64 with ε = 1e-6 the central difference is good to about 1e-9 relative, so a correct
# backward agrees to that, and a wrong one (a missing transpose, a sum over the wrong axis) is
# off by order 1.

# %%
import matplotlib.pyplot as plt
import numpy as np

import minillama
from minillama import functional as F
from minillama.train import loss_and_grads
from _setup import TODO, check, pick_model, pick_tokenizer, using_demo_model

rng = np.random.default_rng(0)


def numerical_grad(loss, x, eps=1e-6):
    """Central finite differences of the scalar ``loss()`` with respect to every entry of ``x`` (changed in place, then restored)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + eps
        up = loss()
        x[i] = saved - eps
        down = loss()
        x[i] = saved
        grad[i] = (up - down) / (2 * eps)
    return grad


def rel_error(analytic, numeric):
    """max |analytic - numeric| relative to the largest gradient entry."""
    return float(np.max(np.abs(analytic - numeric)) / max(np.max(np.abs(numeric)), 1e-300))


def report(name, analytic, numeric):
    error = rel_error(analytic, numeric)
    print(f"{name:28s} shape {str(analytic.shape):16s} max relative error {error:.1e}")
    assert error < 1e-6, f"{name}: the backward disagrees with finite differences"


# %% [markdown]
# ## Embedding
#
# `y[b, t] = table[ids[b, t]]` copies a row. Each copy passes its gradient back to the row it
# came from, so row `v` of the table's gradient is the sum of `dy` over every position holding
# token `v` (and rows of tokens not in the batch get zero):
#
# $$\frac{\partial L}{\partial\,\mathrm{table}_v} = \sum_{(b,t):\ \mathrm{ids}_{b,t} = v} dy_{b,t}$$

# %%
table = rng.standard_normal((6, 3))  # vocab 6, hidden 3
ids = np.array([[1, 4, 1, 0]])  # token 1 appears twice
dy = rng.standard_normal((1, 4, 3))
numeric = numerical_grad(lambda: np.sum(F.embedding(ids, table) * dy), table)
report("embedding: table", F.embedding_backward(dy, ids, vocab_size=6), numeric)

# %% [markdown]
# ## Linear
#
# `y = x Wᵀ + b` with `W` stored `(out, in)`. Each output is a dot product, so
#
# $$dx = dy\,W, \qquad dW = dy^\top x, \qquad db = \textstyle\sum dy$$
#
# where the last two sum over every leading axis (batch and position): every position used the
# same weight, and a weight used many times collects the gradient of each use.

# %%
x = rng.standard_normal((2, 3, 4))
W = rng.standard_normal((5, 4))
b = rng.standard_normal(5)
dy = rng.standard_normal((2, 3, 5))
grad_x, grad_W, grad_b = F.linear_backward(dy, x, W, b)
L = lambda: np.sum(F.linear(x, W, b) * dy)
report("linear: x", grad_x, numerical_grad(L, x))
report("linear: W", grad_W, numerical_grad(L, W))
report("linear: b", grad_b, numerical_grad(L, b))

# %% [markdown]
# ## RMSNorm
#
# With $r = 1/\sqrt{\mathrm{mean}(x^2) + \epsilon}$ and $n = x\,r$, the output is $y = w \odot n$.
# The gain's gradient is $dw = \sum_{\text{positions}} dy \odot n$. For $x$, write $g = dy \odot w$;
# $n$ depends on $x$ directly and through $r$, and $\partial r / \partial x_j = -r^3 x_j / d$, which gives
#
# $$dx = r\,\big(g - n\ \mathrm{mean}(g \odot n)\big)$$
#
# The subtracted term removes the part of $g$ that would only rescale $x$, which the norm undoes.

# %%
x = rng.standard_normal((2, 3, 6))
w = rng.standard_normal(6)
dy = rng.standard_normal((2, 3, 6))
grad_x, grad_w = F.rms_norm_backward(dy, x, w, 1e-5)
L = lambda: np.sum(F.rms_norm(x, w, 1e-5) * dy)
report("rms_norm: x", grad_x, numerical_grad(L, x))
report("rms_norm: weight", grad_w, numerical_grad(L, w))

# %% [markdown]
# ## Rotary embedding
#
# Rotary turns each pair of a query or key by an angle that depends on the position:
# `y = x·cos + rotate_half(x)·sin`, a linear map $y = R_\theta x$ with $R_\theta$ orthogonal. The
# gradient of a linear map is its transpose, and the transpose of a rotation is the rotation by
# $-\theta$:
#
# $$dx = R_\theta^\top dy = R_{-\theta}\, dy = dy\cdot\cos - \mathrm{rotate\_half}(dy\cdot\sin)$$
#
# There are no weights: rotary only passes gradient through to q and k.

# %%
head_dim, seq = 4, 3
inv_freq = 1.0 / 10000.0 ** (np.arange(0, head_dim, 2) / head_dim)  # (head_dim / 2,)
cos, sin = F.rope_cos_sin(np.arange(seq)[None, :], inv_freq, np.float64)  # (1, seq, head_dim)
x = rng.standard_normal((1, 2, seq, head_dim))
dy = rng.standard_normal((1, 2, seq, head_dim))
numeric = numerical_grad(lambda: np.sum(F.apply_rotary(x, cos, sin) * dy), x)
report("rotary: x", F.apply_rotary_backward(dy, cos, sin), numeric)

# %% [markdown]
# ## Attention, with grouped-query heads
#
# With $S = q k^\top/\sqrt{d}$ (masked), $P = \mathrm{softmax}(S)$ row by row and $O = P v$:
#
# $$dv = P^\top dO,\quad dP = dO\,v^\top,\quad dS = P \odot \big(dP - \mathrm{rowsum}(dP \odot P)\big),\quad
# dq = dS\,k/\sqrt{d},\quad dk = dS^\top q/\sqrt{d}$$
#
# The softmax backward is the middle one: a softmax row sums to 1, so only the part of $dP$ that
# differs from its $P$-weighted mean moves the scores. Masked scores were replaced by a constant
# and get no gradient.
#
# **GQA.** Here 4 query heads share 2 key/value heads (2 query heads per group). A shared key head
# is used by every query head of its group, so, as with a weight used at many positions, its
# gradient is the **sum over the query heads sharing it**. The check below also shows this
# directly: give each query head its own copy of k and v (`np.repeat`, plain multi-head attention),
# take the gradients of the copies, and sum each group's copies.

# %%
heads, kv_heads, seq, head_dim = 4, 2, 3, 2
group = heads // kv_heads
q = rng.standard_normal((1, heads, seq, head_dim))
k = rng.standard_normal((1, kv_heads, seq, head_dim))
v = rng.standard_normal((1, kv_heads, seq, head_dim))
mask = F.attention_mask(seq, seq, np)  # causal: (1, 1, seq, seq)
dO = rng.standard_normal((1, heads, seq, head_dim))
grad_q, grad_k, grad_v = F.attention_backward(dO, q, k, v, mask)
L = lambda: np.sum(F.attention(q, k, v, mask)[0] * dO)
report("attention: q", grad_q, numerical_grad(L, q))
report("attention: k (2 kv heads)", grad_k, numerical_grad(L, k))
report("attention: v (2 kv heads)", grad_v, numerical_grad(L, v))

k_copies, v_copies = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # (1, heads, seq, head_dim)
_, grad_k_copies, grad_v_copies = F.attention_backward(dO, q, k_copies, v_copies, mask)
summed = grad_k_copies.reshape(1, kv_heads, group, seq, head_dim).sum(axis=2)
print("grad of the shared k == sum of its", group, "copies' grads:", np.allclose(summed, grad_k))

# %% [markdown]
# ## SiLU and the SwiGLU MLP
#
# $\mathrm{silu}(a) = a\,\sigma(a)$ and $\sigma' = \sigma(1-\sigma)$, so
# $\mathrm{silu}'(a) = \sigma(a)\,\big(1 + a(1 - \sigma(a))\big)$.
#
# The MLP is $y = W_{down}\,h$ with $h = \mathrm{silu}(a) \odot u$, $a = W_{gate}x$, $u = W_{up}x$.
# The product rule splits $dh$: $du = dh \odot \mathrm{silu}(a)$ and $da = dh \odot u \odot \mathrm{silu}'(a)$;
# then each projection is a linear backward, and $x$, which feeds both branches, gets the sum
# $dx = da\,W_{gate} + du\,W_{up}$.

# %%
a = rng.standard_normal((2, 5))
dy = rng.standard_normal((2, 5))
report("silu: x", F.silu_backward(dy, a), numerical_grad(lambda: np.sum(F.silu(a) * dy), a))

hidden, inter = 4, 6
x = rng.standard_normal((2, 3, hidden))
gate, up, down = (rng.standard_normal((inter, hidden)), rng.standard_normal((inter, hidden)),
                  rng.standard_normal((hidden, inter)))
dy = rng.standard_normal((2, 3, hidden))
grads = F.swiglu_mlp_backward(dy, x, gate, up, down)
L = lambda: np.sum(F.swiglu_mlp(x, gate, up, down) * dy)
for name, array in (("x", x), ("gate_proj", gate), ("up_proj", up), ("down_proj", down)):
    report(f"swiglu_mlp: {name}", grads[name], numerical_grad(L, array))

# %% [markdown]
# ## Cross-entropy, shifted, with ignored labels
#
# For one position with logits $z$ and label $y$, the loss is $\log\sum_j e^{z_j} - z_y$, so
#
# $$\frac{\partial\,\ell}{\partial z} = \mathrm{softmax}(z) - \mathrm{onehot}(y)$$
#
# The causal LM loss is the **mean** over the counted positions, where position $t$ is scored
# against label $t+1$: the last position predicts nothing, and labels of `-100` are skipped
# (padding, or a prompt we do not train on). So the gradient is
# $(\mathrm{softmax}(z_t) - \mathrm{onehot}(y_{t+1}))/N$ at each counted position, with $N$ the
# number counted, and exactly zero elsewhere. Here the loss is already a scalar: no `dy` needed.

# %%
logits = rng.standard_normal((2, 5, 7))  # batch 2, seq 5, vocab 7
labels = np.array([[3, 1, 4, 1, 5], [2, 6, -100, -100, 0]])
grad = F.causal_lm_loss_backward(logits, labels)
report("causal_lm_loss: logits", grad, numerical_grad(lambda: float(F.causal_lm_loss(logits, labels)), logits))
print("positions counted:", int(np.sum(labels[:, 1:] != -100)),
      "| gradient rows that are all zero:", int(np.sum(np.all(grad == 0, axis=-1))), "(last positions and ignored labels)")

# %% [markdown]
# ## The whole model
#
# `loss_and_grads(model, ids)` runs the forward once, keeping what each backward reads, then walks
# back through the LM head, the final norm, each layer (MLP block, then attention block; a
# residual add passes its gradient to both branches), and the embedding. It returns the loss and a
# gradient for every parameter, by its Hugging Face name. We check a few entries of one weight's
# gradient by finite differences on the real model, in float64, and look at the sizes of all of them.

# %%
model_path, description = pick_model()
print("running on", description)
tokenizer = pick_tokenizer(model_path)
model = minillama.LlamaForCausalLM.from_pretrained(model_path, dtype="float64", lazy=False, assembly="reference")
c = model.config
text = "And God said, Let there be light: and there was light. And God saw the light, that it was good."
ids = np.array([tokenizer.encode(text)[:24]])
loss, grads = loss_and_grads(model, ids)
print(f"loss {loss:.4f} nats on {ids.shape[1]} tokens; {len(grads)} gradients, "
      f"{sum(g.size for g in grads.values()):,} numbers")

name = "model.layers.2.self_attn.k_proj.weight"
weight = model.weights.layers[2].k_proj  # the very array the model computes with
picked = [tuple(int(i) for i in np.unravel_index(j, weight.shape))
          for j in np.argsort(np.abs(grads[name]).ravel())[-4:]]  # its 4 largest entries
for index in picked:
    saved, eps = weight[index], 1e-5
    weight[index] = saved + eps
    up = loss_and_grads(model, ids)[0]
    weight[index] = saved - eps
    down = loss_and_grads(model, ids)[0]
    weight[index] = saved
    numeric = (up - down) / (2 * eps)
    print(f"{name}{list(index)}: backward {grads[name][index]: .6e}  finite difference {numeric: .6e}  "
          f"relative error {abs(grads[name][index] - numeric) / abs(numeric):.1e}")

# %% [markdown]
# Gradient norms per parameter, layer by layer. Read it with the chain rule in mind: the
# embedding only gets gradient at the rows of tokens in the batch, the norms' gains are small
# vectors, and the projections' norms show how much each layer's weights would move.

# %%
kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "input_layernorm",
         "post_attention_layernorm"]
norms = {kind: [float(np.linalg.norm(grads[n])) for i in range(c.num_hidden_layers)
                for n in grads if n.startswith(f"model.layers.{i}.") and f".{kind}." in n] for kind in kinds}
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [4, 1]})
width = 0.8 / len(kinds)
for j, kind in enumerate(kinds):
    left.bar(np.arange(c.num_hidden_layers) + j * width, norms[kind], width, label=kind)
left.set_xticks(np.arange(c.num_hidden_layers) + 0.4 - width / 2, [f"layer {i}" for i in range(c.num_hidden_layers)])
left.set_yscale("log")
left.set_ylabel("gradient norm")
left.legend(fontsize=7, ncol=3)
outside = [n for n in grads if not n.startswith("model.layers.")]
right.bar(range(len(outside)), [float(np.linalg.norm(grads[n])) for n in outside])
right.set_xticks(range(len(outside)), [n.replace("model.", "").replace(".weight", "") for n in outside],
                 rotation=30, fontsize=8)
right.set_yscale("log")
fig.suptitle(f"Gradient norms for one sequence of {ids.shape[1]} tokens (loss {loss:.2f})")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Exercises
#
# Replace each `TODO` with your answer (computed or reasoned, not copied from a hidden value) and
# run the cell. A wrong answer says what to think about; it never shows the expected one.
#
# 1. What shape (a tuple) is the gradient of `model.layers.0.self_attn.k_proj.weight` in this
#    model? Work it out from `c.num_key_value_heads`, `c.head_dim` and `c.hidden_size`.
# 2. A key/value head's gradient is the sum of the gradients it receives from the query heads that
#    share it. In this model, how many query heads does each key/value head's gradient sum over?
# 3. A batch of 2 sequences of 16 tokens, with no label set to -100: over how many positions does
#    the causal LM loss take its mean (the N dividing each gradient row)?

# %%
answer_1 = TODO  # e.g. (c.num_key_value_heads * c.head_dim, c.hidden_size)?
answer_2 = TODO
answer_3 = TODO
check("1. k_proj gradient shape", answer_1,
      lambda a: tuple(int(n) for n in a) == tuple(grads["model.layers.0.self_attn.k_proj.weight"].shape),
      "A weight's gradient has the weight's shape, (out, in): k_proj maps the hidden vector to one key "
      "per key/value head, not per query head.")
check("2. query heads per key/value head", answer_2,
      lambda a: int(a) == c.num_attention_heads // c.num_key_value_heads,
      "It is the group size: query head h uses key/value head h // (heads // kv_heads).")
check("3. positions in the mean", answer_3, lambda a: int(a) == 2 * (16 - 1),
      "Position t is scored against the label at t + 1: how many positions of each row have a next token?")
