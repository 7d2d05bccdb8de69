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
# # 10. Training a model from scratch
#
# Everything so far ran a model someone had trained. Here we train one: the library's `tiny`
# preset (a 4-layer Llama of width 128 with a 512-token vocabulary) on about 230 KB of Jane
# Austen, with `minillama.train.train`, the same loop as `minillama train --preset tiny`. Each step
# is the previous notebook's `loss_and_grads` on a batch of 16 windows of 128 tokens, gradient
# clipping, and an AdamW update.
#
# The preset runs 400 steps (about 3 minutes on two CPU cores). To keep this notebook short we
# run a shorter schedule of the same preset (see `STEPS` below; raise it to 400 for a better model).

# %%
import dataclasses
import gzip
import math
import os
import shutil
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np

import minillama
from minillama.train import evaluate, get_preset, init_model, model_config, train
from minillama.train.data import encode_corpus, read_corpus, split_train_val, train_tokenizer
from minillama.train.presets import count_parameters
from _setup import TODO, check

STEPS = 120  # the preset's schedule is 400 steps; 120 keep this notebook to about a minute and a half on two busy cores

# %% [markdown]
# ## The data
#
# The first 23 chapters of *Pride and Prejudice* ship with the notebooks, gzipped
# (`notebooks/data/README.md` says where they come from: the novel is in the public domain).
# `read_corpus` reads plain UTF-8 text files, so we decompress it into a temporary folder; nothing
# is written into the repository.

# %%
work = tempfile.mkdtemp(prefix="minillama-nb10-")
corpus = os.path.join(work, "austen.txt")
with gzip.open(os.path.join("data", "austen_pride_and_prejudice.txt.gz"), "rb") as packed, open(corpus, "wb") as f:
    shutil.copyfileobj(packed, f)
text = read_corpus(corpus)
print(f"{len(text.encode()):,} bytes, {len(text.split()):,} words, {text.count(chr(10) * 2) + 1:,} paragraphs")
print(text[:700])

# %% [markdown]
# ## The tokenizer
#
# A model trained from scratch gets its own vocabulary: `train_tokenizer` runs sentencepiece's BPE
# with Llama 2's settings (byte fallback, split digits) on the text, to the preset's 512 pieces.
# The first 3 are `<unk>`, `<s>`, `</s>`, the next 256 are the bytes (so any text can be encoded),
# and the rest are learned from Austen: first the merges, most frequent first (short words and
# word pieces: with only about 200 merges, "truth" is still four pieces), then the single
# characters the text uses.

# %%
preset = dataclasses.replace(get_preset("tiny"), steps=STEPS, eval_every=20, save_every=STEPS)
start = time.perf_counter()
tokenizer_path = train_tokenizer(text, os.path.join(work, "tokenizer"), preset.model["vocab_size"], seed=0)
tokenizer = minillama.LlamaTokenizer.from_pretrained(tokenizer_path)
print(f"trained a {tokenizer.vocab_size}-piece tokenizer in {time.perf_counter() - start:.1f} s")
learned = tokenizer.convert_ids_to_tokens(list(range(259, tokenizer.vocab_size)))
print("first merges:", learned[:16])
print("last pieces: ", learned[-16:])
sentence = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
print(tokenizer.tokenize(sentence))

ids = encode_corpus(text, tokenizer)
train_ids, val_ids = split_train_val(ids)
print(f"{len(ids):,} tokens ({len(text.encode()) / len(ids):.2f} bytes per token): {len(train_ids):,} to train on, "
      f"the last {len(val_ids):,} held out")

# %% [markdown]
# ## The model
#
# The preset's shape, with the tokenizer's vocabulary. Note how much of such a small model is the
# two vocabulary tables (the embedding and the LM head).

# %%
config = model_config(preset, tokenizer.vocab_size)
total = count_parameters(config)
tables = 2 * config.vocab_size * config.hidden_size
print(f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, MLP {config.intermediate_size}, "
      f"{config.num_attention_heads} query heads over {config.num_key_value_heads} key/value heads, vocab {config.vocab_size}")
print(f"{total:,} parameters, {tables:,} of them ({tables / total:.0%}) in the embedding and LM head")
print(f"one step: {preset.batch_size} x {preset.seq_len} = {preset.batch_size * preset.seq_len:,} tokens; "
      f"{STEPS} steps see {STEPS * preset.batch_size * preset.seq_len / len(train_ids):.1f} times the training text")

# %% [markdown]
# Before training: the initial weights (the same ones `train` starts from, seed 0) are small and
# random, so every token is about equally likely. The held-out loss is then close to
# ln(512) ≈ 6.24 nats, the loss of a uniform guess, and the samples are noise.

# %%
before = init_model(config, seed=0)
baseline = math.log(config.vocab_size)
val_before = evaluate(before, val_ids, preset.batch_size, preset.seq_len)
print(f"held-out loss at step 0: {val_before:.3f} nats (ln {config.vocab_size} = {baseline:.3f})")
prompts = ["It is a truth", "Mr. Darcy", "Elizabeth"]
sampling = dict(max_new_tokens=40, temperature=0.8, top_p=0.95, seed=0)
for prompt, out in zip(prompts, minillama.generate_text(before, tokenizer, prompts, **sampling).texts):
    print(repr(prompt + out))

# %% [markdown]
# ## Training
#
# `train` trains into a checkpoint folder (here a temporary one): the model, tokenizer, optimizer
# state and `trainer_state.json` with the losses. The learning rate warms up for 30 steps and then
# follows a cosine down to a tenth of its peak, over the schedule's length; the held-out tail is
# scored every 20 steps.

# %%
out = os.path.join(work, "run")
start = time.perf_counter()


def progress(p):
    if p.event == "eval":
        print(f"step {p.step:4d}  train loss {p.loss:.3f}  held-out {p.val_loss:.3f}  "
              f"{p.tokens_per_s:,.0f} tokens/s  {time.perf_counter() - start:.0f} s")


state = train(corpus, out, preset=preset, tokenizer=tokenizer_path, seed=0, progress=progress)
seconds = time.perf_counter() - start
final_val = state["val_losses"][-1][1]
print(f"{state['step']} steps in {seconds:.0f} s; held-out loss {final_val:.3f} nats vs ln {config.vocab_size} = "
      f"{baseline:.3f} ({final_val / baseline:.0%} of it; perplexity {math.exp(final_val):.1f} instead of {config.vocab_size})")

# %%
steps, val_losses = zip(*([(0, val_before)] + [tuple(v) for v in state["val_losses"]]))
losses = np.array(state["losses"])
smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(np.arange(1, len(losses) + 1), losses, color="C0", alpha=0.3, lw=1)
ax.plot(np.arange(10, len(losses) + 1), smooth, color="C0", label="training batch (10-step mean)")
ax.plot(steps, val_losses, "o-", color="C1", label="held-out text")
ax.axhline(baseline, color="gray", ls="--", lw=1, label=f"ln {config.vocab_size} (uniform guess)")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats per token)")
ax.set_title(f"Training the tiny preset on Austen ({STEPS} steps)")
ax.legend()
plt.show()

# %% [markdown]
# After training: the checkpoint folder loads like any model. The same prompts, sampled the same
# way, now look like English set out as Austen sets it out, if not yet sense: a 0.9M-parameter
# model that saw the text about twice has learnt the common short words ("of", "the", "to"), the
# names it met most ("Mr. Bennet"), spaces, commas and quotation marks, while many longer words are
# still invented from plausible pieces. The full 400-step preset gets further.

# %%
trained = minillama.load(out)
trained_tokenizer = minillama.LlamaTokenizer.from_pretrained(out)
for prompt, out_text in zip(prompts, minillama.generate_text(trained, trained_tokenizer, prompts, **sampling).texts):
    print(repr(prompt + out_text))

# %% [markdown]
# ## Exercises
#
# 1. What held-out loss, in nats per token, would a model get that gives every one of the
#    `config.vocab_size` tokens the same probability? (A number, to 2 decimals.)
# 2. How many tokens of text does one training step of this preset compute gradients on (before
#    the shift)?
# 3. The final held-out loss is `final_val`. What is the model's perplexity on the held-out text,
#    the size of a uniform choice that would be equally uncertain?

# %%
answer_1 = TODO
answer_2 = TODO
answer_3 = TODO
check("1. a uniform guess", answer_1, lambda a: abs(float(a) - math.log(config.vocab_size)) < 0.01,
      "A uniform guess gives each token probability 1 / vocab_size; the loss is -log of the probability of the right one.")
check("2. tokens per step", answer_2, lambda a: int(a) == preset.batch_size * preset.seq_len,
      "A batch is batch_size windows of seq_len tokens each.")
check("3. perplexity", answer_3, lambda a: abs(float(a) - math.exp(final_val)) < 0.01 * math.exp(final_val),
      "Perplexity undoes the log: which choice among n equal options has loss ln n?")
