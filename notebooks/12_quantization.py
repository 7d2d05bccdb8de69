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
# # 12. Quantization: fewer bits per weight
#
# Generating a token reads every weight of the model once, so a model's speed on a CPU (and how
# large a model fits at all) is set by its **bytes**. Llama-2-7B in float16 is 13.5 GB; llama.cpp
# runs it from a 3.8 GB file. The trick is *weight-only quantization*: store each weight as a small
# integer code and keep one float **scale** per group of weights, `w ≈ code × scale`.
#
# This notebook builds llama.cpp's two simplest formats with `minillama.quantize`, looks at the
# error they make, and measures what that error costs the demo model: bytes, logits, perplexity.
#
# * **int8** (llama.cpp's Q8_0 with groups of 32, or one scale per output row): `scale = max|w| / 127`,
#   `code = round(w / scale)` in -127 .. 127.
# * **int4** (Q4_0, groups of 32 or 64): `m` = the group's weight of largest magnitude, *with its
#   sign*; `d = m / -8`; `code = clip(floor(w / d + 8.5), 0, 15)`, read back as `(code - 8) × d`.

# %%
import gzip
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import _setup
import minillama
from minillama import functional as F
from minillama import quantize as Q
from minillama.train import evaluate
from minillama.train.data import encode_corpus

START = time.perf_counter()
MODEL, DESCRIPTION = _setup.pick_model()
print("running on", DESCRIPTION)
model = minillama.LlamaForCausalLM.from_pretrained(MODEL)  # float32 compute
tokenizer = _setup.pick_tokenizer(MODEL)
c = model.config
print(f"{model.num_parameters() / 1e6:.1f}M parameters: {c.num_hidden_layers} layers of width {c.hidden_size}, "
      f"MLP {c.intermediate_size}, vocabulary {c.vocab_size}")

# %% [markdown]
# ## What the values of a weight matrix look like
#
# A trained projection is a bell-shaped cloud around zero with a few larger values in the tails.
# Quantization has to cover the largest value of each group (or the group's codes overflow) while
# keeping the many small values distinct: the wider the tails, the coarser the steps.

# %%
layer = model.weights.layers[0]
W = np.asarray(layer.gate_proj)  # (intermediate, hidden): layer 0's gate projection
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].hist(W.ravel(), bins=200, color="tab:blue")
axes[0].set_title(f"layer 0 gate_proj {W.shape}: all values")
axes[1].hist(W.ravel(), bins=200, color="tab:blue", log=True)
axes[1].set_title("the same, log counts: the tails")
for ax in axes:
    ax.set_xlabel("weight")
plt.tight_layout()
plt.show()
std, top = float(W.std()), float(np.abs(W).max())
print(f"std {std:.4f}, largest |w| {top:.4f} = {top / std:.1f} std; "
      f"{np.mean(np.abs(W) > 3 * std):.2%} of the weights lie beyond 3 std")

# %% [markdown]
# ## int8, one scale per output row
#
# Row `i` of `W` produces output feature `i`, so it is natural to give each row (each *output
# channel*) its own scale: `scale_i = max_j |W_ij| / 127`. The largest weight becomes ±127 and
# every other weight is rounded to the nearest multiple of the scale, so no weight is ever off by
# more than half a scale. By hand, on one row, then with the library:

# %%
row = W[0]  # (hidden,)
scale = np.abs(row).max() / 127
codes = np.round(row / scale)  # (np.round rounds halves to even; llama.cpp's roundf away from zero)
qw8 = Q.quantize_int8(W)  # q: (out, in) int8; scales: (out, 1) float16
print("first weights :", np.round(row[:6], 4))
print("codes by hand :", codes[:6].astype(int), " scale", f"{scale:.6f}")
print("library codes :", qw8.q[0, :6], " scale", qw8.scales[0, 0], "(stored as float16)")
print("read back     :", np.round(qw8.dequantize()[0, :6], 4))
error = np.abs(qw8.dequantize() - W)
print(f"largest error over the matrix {error.max():.2e}, half the largest scale "
      f"{float(qw8.scales.astype(np.float32).max()) / 2:.2e}")
print(f"bytes: {W.nbytes:,} as float32, {qw8.nbytes:,} as int8 + one float16 scale per row")

# %% [markdown]
# ## int4, a scale per group of 32
#
# With 4 bits there are only 16 codes, so one scale for a whole row would make the steps far too
# coarse for the small weights whenever the row has one large weight. Q4_0 gives each **group of
# 32 consecutive weights** of a row its own scale (2 bytes per 32 weights: half a bit per weight).
#
# Its scale is signed: `d = m / -8` where `m` is the group's largest-magnitude weight, so `m`
# lands exactly on code 0 (`-8` steps), and the other side gets `+7` steps. A weight near `-m`
# is clipped to code 15 and may be off by a whole step `|d|`; everything else by at most `|d| / 2`.
# Two codes share one byte: a Q4_0 block is 2 + 16 = 18 bytes for 32 weights, 4.5 bits each.

# %%
group = W[0, :32]
m = group[np.argmax(np.abs(group))]
d = m / -8
by_hand = np.clip(np.floor(group / d + 8.5), 0, 15)
qw4 = Q.quantize_int4(W, group_size=32)  # q: (out, in // 2) uint8, two codes a byte; scales (out, in // 32)
print(f"m = {m:+.4f}, d = {d:+.5f}; library scale {qw4.scales[0, 0]}")
print("codes by hand :", by_hand[:12].astype(int))
print("library codes :", qw4.codes()[0, :12])
print("read back     :", np.round(qw4.dequantize()[0, :8], 4))
print("weights       :", np.round(group[:8], 4))
for size in (32, 64, c.hidden_size):
    q = Q.quantize_int4(W, group_size=size)
    err = np.abs(q.dequantize() - W)
    print(f"int4, groups of {size:4d}: {q.nbytes:8,} bytes ({8 * q.nbytes / W.size:.3f} bits/weight), "
          f"mean |error| {err.mean():.2e}, largest {err.max():.2e}")

# %% [markdown]
# ## The error of each scheme
#
# Each weight's error is `w - dequantized w`. For int8 it is spread evenly over ±half a step (the
# rounding error of a uniform grid); int4's steps are 16 times coarser (8 steps each side instead
# of 127), so its errors are about 16 times wider, and larger groups widen them again (one large
# weight sets the step for more neighbours).

# %%
schemes = {"int8 per row": Q.quantize_int8(W), "int8 groups of 32 (Q8_0)": Q.quantize_int8(W, 32),
           "int4 groups of 32 (Q4_0)": Q.quantize_int4(W, 32), "int4 groups of 64": Q.quantize_int4(W, 64)}
fig, axes = plt.subplots(1, 4, figsize=(14, 3), sharey=True)
for ax, (name, q) in zip(axes, schemes.items()):
    err = (W - q.dequantize()).ravel()
    ax.hist(err, bins=101, color="tab:red")
    ax.set_title(f"{name}\nrms error {np.sqrt(np.mean(err ** 2)):.1e}", fontsize=9)
    ax.set_xlabel("w - dequantized w")
plt.tight_layout()
plt.show()
print(f"for scale: the weights' std is {std:.1e}")

# %% [markdown]
# ## The dequantizing matmul
#
# A quantized layer computes `x @ W.T` with W given as codes and scales. `Q.quantized_linear`
# does the simplest thing: rebuild W in x's dtype, then one matmul, so its answer is exactly
# `x @ dequantize(W).T`. llama.cpp never rebuilds W: it quantizes x to Q8_0 as well, multiplies
# the integer codes block by block and applies the two scales to each block's sum, reading 4.5
# bits per weight from memory instead of 32. That is where the speed comes from; the result
# differs from ours only by the rounding of x.

# %%
x = np.random.default_rng(0).standard_normal((1, 4, c.hidden_size)).astype(np.float32)  # (batch, seq, hidden)
exact = F.linear(x, W)  # (1, 4, intermediate)
for name, q in schemes.items():
    y = Q.quantized_linear(x, q)
    assert np.allclose(y, x @ q.dequantize().T, atol=1e-5)
    print(f"{name:26s}: output {y.shape} {y.dtype}, relative error "
          f"{np.linalg.norm(y - exact) / np.linalg.norm(exact):.2e}")

# %% [markdown]
# ## What it costs the model
#
# `Q.quantize_model` quantizes the seven projections of every layer (q/k/v/o, gate/up/down), writes
# their dequantized values back into the model and reports the bytes of the quantized form. The
# embedding and the norms stay as they are; so does the LM head unless `lm_head=True` (its errors
# go straight into the logits, and llama.cpp gives it a more precise type). The model then runs
# its unchanged forward pass on weights that carry exactly the quantization error.
#
# Perplexity, `exp(mean cross-entropy)`, is measured on text the model never trained on: the end of
# the book of Revelation, inside the 5% of the King James Bible the demo model held out. The
# largest logit change is measured on one prompt.

# %%
text = gzip.open(os.path.join(_setup.HERE, "data", "kjv_heldout.txt.gz"), "rt", encoding="utf-8").read()
held_out = encode_corpus(text, tokenizer)  # BOS + ids of each chapter, as in training
if not _setup.using_demo_model():
    held_out = held_out[:1024]  # another (larger) model: a shorter measurement
prompt = np.asarray([tokenizer.encode("And God said, Let there be", bos=True)])
print(f"held-out text: {len(text):,} characters, {len(held_out):,} tokens")

reference_logits = np.asarray(model(prompt).logits)
reference_loss = evaluate(model, held_out, batch_size=8, seq_len=256)
rows = [("float32", model.num_parameters() * 4, 32.0, 0.0, reference_loss),
        ("float16", model.num_parameters() * 2, 16.0, None, None)]
for kind, group_size, lm_head in [("int8", None, False), ("int8", 32, False), ("int4", 32, False),
                                  ("int4", 64, False), ("int4", 32, True)]:
    quantized, report = Q.quantize_model(minillama.LlamaForCausalLM.from_pretrained(MODEL), kind, group_size, lm_head)
    diff = float(np.abs(np.asarray(quantized(prompt).logits) - reference_logits).max())
    loss = evaluate(quantized, held_out, batch_size=8, seq_len=256)
    label = f"{kind} {'per row' if group_size is None else f'g{group_size}'}" + (" + lm_head" if lm_head else "")
    rows.append((label, report.model_bytes(2), report.bits_per_weight, diff, loss))

print(f"{'weights':22s} {'model bytes':>12s} {'MiB':>6s} {'bits/w':>7s} {'max|Δlogit|':>12s} {'loss':>7s} {'perplexity':>10s}")
for label, nbytes, bits, diff, loss in rows:
    print(f"{label:22s} {nbytes:12,d} {nbytes / 2**20:6.2f} {bits:7.2f} "
          f"{'' if diff is None else f'{diff:.4f}':>12s} {'' if loss is None else f'{loss:.4f}':>7s} "
          f"{'' if loss is None else f'{np.exp(loss):.2f}':>10s}")
print("(bits/w: of the quantized projections; model bytes count everything left unquantized as float16;\n"
      " float16 loses nothing here: the demo model's file is float16, so its float32 weights are float16 values)")

# %% [markdown]
# The demo model ships in float16, so its float32 weights are float16 values exactly: float16
# costs nothing here. int8 is almost free as well, in logits and in perplexity; int4 halves the
# projections' bytes again at a visible but small cost, and quantizing the LM head as well costs
# more again. How much int4 costs depends on the model; llama.cpp's k-quants (Q4_K and friends)
# spend their bits more cleverly (a scale and a minimum per small block, themselves quantized
# against one float16 pair per 256 weights) to shrink it. Below: does greedy decoding notice?

# %%
greedy = {}
for label, kind in (("float32", None), ("int4 g32", "int4")):
    m_ = minillama.LlamaForCausalLM.from_pretrained(MODEL)
    if kind:
        Q.quantize_model(m_, kind, 32)
    out = m_.generate(prompt, max_new_tokens=16, do_sample=False)
    greedy[label] = tokenizer.decode(out[0].tolist())
    print(f"{label:9s}: {greedy[label]!r}")
print(f"notebook so far: {time.perf_counter() - START:.1f} s")

# %% [markdown]
# ## Exercises
#
# **1.** A 4096 × 4096 projection (Llama-2-7B's `q_proj`) is stored as int4 with groups of 64
# (codes packed two per byte, one float16 scale per group). How many bytes does it take?

# %%
answer_bytes_int4_g64 = _setup.TODO  # an integer number of bytes

# %%
_setup.check("int4, groups of 64", answer_bytes_int4_g64,
             lambda a: a == 4096 * 4096 // 2 + 4096 * (4096 // 64) * 2,
             "Count the codes (half a byte each) and the scales (how many groups in a row, how many rows, "
             "two bytes each) separately, then add them.")

# %% [markdown]
# **2.** A row's largest weight by magnitude is 0.254. It is quantized to int8 with one scale for
# the row. What is the largest possible |error| of one of its weights after dequantizing?

# %%
answer_int8_error = _setup.TODO  # a float

# %%
_setup.check("largest int8 error", answer_int8_error, lambda a: abs(float(a) - 0.254 / 127 / 2) < 1e-6,
             "First find the row's scale from its largest weight. Rounding to the nearest code can be off "
             "by at most what fraction of one step?")

# %% [markdown]
# **3.** How many bits per weight does Q8_0 (int8, groups of 32, float16 scales) take?

# %%
answer_q8_0_bits = _setup.TODO  # a float

# %%
_setup.check("Q8_0 bits per weight", answer_q8_0_bits, lambda a: abs(float(a) - (32 * 8 + 16) / 32) < 1e-9,
             "A block holds 32 codes of 8 bits and one scale: add the block's bits and divide by the "
             "weights it holds.")
