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
# # 11. LoRA: fine-tuning the demo model on Austen
#
# The demo model learnt English from the King James Bible: ask it for anything and it answers in
# "thee", "thou" and "unto". Fine-tuning it on Jane Austen would normally mean training all 6.8M
# parameters, with gradients and two AdamW moments for each. LoRA (low-rank adaptation) freezes
# every weight and learns, for chosen projections $W$ (out, in), a low-rank update
#
# $$W x \;\to\; W x + \tfrac{\alpha}{r}\, B A x, \qquad A: (r, \text{in}),\ B: (\text{out}, r),\ r \ll \text{in}$$
#
# $B$ starts at zero, so the adapted model starts exactly as the base model. `add_lora` attaches
# the adapters and returns their arrays; `loss_and_grads` then returns gradients for those arrays
# only (the backward still passes the gradient *through* every frozen weight, but skips computing
# the frozen weights' own gradients); AdamW updates them. This is what
# `minillama train --from DIR --lora-r R` does; here we write the few lines of the loop out.

# %%
import gzip
import math
import re
import time

import matplotlib.pyplot as plt
import numpy as np

import minillama
from minillama.train import AdamW, add_lora, clip_grad_norm, evaluate, load_trainable, loss_and_grads, lr_at, merge_lora
from minillama.train.data import batches, encode_corpus, split_train_val
from _setup import TODO, check, pick_model, pick_tokenizer

model_path, description = pick_model()
print("running on", description)
model = load_trainable(model_path)  # float32, in memory, writable: the form training needs
tokenizer = pick_tokenizer(model_path)
c = model.config

# %% [markdown]
# ## The data, through the base model's tokenizer
#
# We fine-tune on the first 100 KB of the *Pride and Prejudice* excerpt that ships with the
# notebooks (`notebooks/data/README.md`). The demo model keeps its own tokenizer, trained on the
# Bible: Austen's words it never saw as a whole ("acknowledged", "neighbourhood", "Netherfield")
# fall apart into several pieces, so the same text costs more tokens than Bible text does. That
# is a cost of fine-tuning on a different kind of text: the vocabulary is fixed with the model.

# %%
with gzip.open("data/austen_pride_and_prejudice.txt.gz", "rt", encoding="utf-8") as f:
    austen = f.read()[:100_000]
austen = austen[:austen.rindex("\n\n")]  # end at a paragraph
bible = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
         "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.")
sentence = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
print(tokenizer.tokenize(sentence))
print(tokenizer.tokenize('"My dear Mr. Bennet," said his lady'))  # the Bible has no double quotes
for name, sample in (("King James (Genesis 1)", bible), ("Austen (first 100 KB)", austen)):
    n = len(tokenizer.encode(sample))
    print(f"{name:24s} {len(sample.split()) and n / len(sample.split()):.2f} tokens per word, "
          f"{len(sample.encode()) / n:.2f} bytes per token")

ids = encode_corpus(austen, tokenizer)
train_ids, val_ids = split_train_val(ids, 0.1)
print(f"{len(ids):,} tokens: {len(train_ids):,} to train on, {len(val_ids):,} held out")

# %% [markdown]
# Before fine-tuning: the same prompts will be sampled again at the end. We count how often the
# Bible's words come out ("unto", "thee", "hath", ...), per 100 words generated, and how often
# Austen's forms of address do ("Mr.", "Mrs.", "Miss", "Lady", "Sir").

# %%
KJV_WORDS = {"unto", "thee", "thou", "thy", "thine", "hath", "shalt", "ye", "saith", "lord", "god", "israel"}
AUSTEN_WORDS = {"mr", "mrs", "miss", "lady", "sir", "elizabeth", "jane", "darcy", "bennet", "bingley"}
prompts = ["It is a truth", "My dear", "She said", "When he came", "And the", "I am sure"]
sampling = dict(max_new_tokens=40, temperature=0.8, top_p=0.95, seed=0)


def sample_and_count(model):
    texts = minillama.generate_text(model, tokenizer, prompts, **sampling).texts
    words = [w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t)]
    per_100 = lambda vocabulary: 100 * sum(w in vocabulary for w in words) / max(len(words), 1)
    return texts, per_100(KJV_WORDS), per_100(AUSTEN_WORDS)


start = time.perf_counter()
texts_before, kjv_before, austen_before = sample_and_count(model)
for prompt, text in zip(prompts, texts_before):
    print(repr(prompt + text))
print(f"per 100 words: King James words {kjv_before:.1f}, Austen's words {austen_before:.1f} "
      f"({time.perf_counter() - start:.1f} s)")

# %% [markdown]
# ## Adapters
#
# Rank-8 adapters (α = 16, so the update is scaled by 2) on all seven projections of every layer.
# Each adapter has r·(in + out) parameters instead of in·out.

# %%
params = add_lora(model, r=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj",
                                                          "gate_proj", "up_proj", "down_proj"), seed=0)
trainable = sum(p.size for p in params.values())
total = sum(p.size for p in model.state_dict().values())
print(f"{len(params)} adapter arrays, {trainable:,} trainable parameters; the base model has {total:,} "
      f"({trainable / total:.1%})")
for name in list(params)[:2]:
    print(f"  {name}: {params[name].shape}")
val_before = evaluate(model, val_ids, 8, 128)
print(f"held-out Austen loss before fine-tuning: {val_before:.3f} nats")

# %% [markdown]
# ## Fine-tuning
#
# The training loop of `minillama.train.loop`, written out: batch k from `batches` (random
# windows, seeded by the step), `loss_and_grads` (only the adapters' gradients come back),
# clipping, and AdamW at the step's learning rate (warmup, then cosine). 60 steps of 8 windows of
# 128 tokens see the 100 KB about twice: enough to move the style, and it stays within a minute or so.

# %%
STEPS, BATCH, SEQ, LR = 60, 8, 128, 3e-3
optimizer = AdamW(params, lr=LR, betas=(0.9, 0.95), weight_decay=0.0)
losses, start = [], time.perf_counter()
for k in range(STEPS):
    input_ids, labels = batches(train_ids, BATCH, SEQ, seed=0, step=k)
    loss, grads = loss_and_grads(model, input_ids, labels)
    assert set(grads) == set(params)  # the frozen weights get no gradient
    clip_grad_norm(grads, 1.0)
    optimizer.step(grads, lr_at(k, LR, warmup_steps=5, total_steps=STEPS, min_lr=LR / 10))
    losses.append(loss)
    if (k + 1) % 20 == 0:
        print(f"step {k + 1:3d}  loss {np.mean(losses[-20:]):.3f}  {time.perf_counter() - start:.0f} s")
val_after = evaluate(model, val_ids, 8, 128)
print(f"held-out Austen loss: {val_before:.3f} -> {val_after:.3f} nats ({STEPS} steps, "
      f"{time.perf_counter() - start:.0f} s)")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(np.arange(1, STEPS + 1), losses, alpha=0.4, label="training batch")
ax.plot(np.arange(5, STEPS + 1), np.convolve(losses, np.ones(5) / 5, mode="valid"), label="5-step mean")
ax.plot([0, STEPS], [val_before, val_after], "o--", label="held-out Austen")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats per token)")
ax.set_title(f"LoRA r=8 on the demo model: {trainable:,} trainable parameters")
ax.legend()
plt.show()

# %% [markdown]
# The same prompts, sampled the same way (same seed), with the adapters:

# %%
texts_after, kjv_after, austen_after = sample_and_count(model)
for prompt, text in zip(prompts, texts_after):
    print(repr(prompt + text))
print(f"per 100 words   King James words   Austen's words")
print(f"before          {kjv_before:17.1f}   {austen_before:14.1f}")
print(f"after LoRA      {kjv_after:17.1f}   {austen_after:14.1f}")

# %% [markdown]
# The Bible's vocabulary mostly goes and Austen's begins to come in; 60 steps on 100 KB buy a change
# of style, not fluency. The `�` marks are a lesson about the vocabulary being fixed with the model:
# the King James Bible has no double quotation marks, so the demo tokenizer has no piece for `"` and
# encodes it as the byte token `<0x22>` (see `tokenizer.tokenize` on a line of dialogue). Austen's
# dialogue is full of them, the adapters learn that byte tokens are common, and when the sampler
# picks a byte that does not complete a valid UTF-8 character, the decoded text shows `�`.

# %% [markdown]
# ## Merging
#
# For inference the adapters need not stay separate: `merge_lora` folds each one into its weight,
# $W \leftarrow W + \frac{\alpha}{r} B A$, and removes it. The merged model is an ordinary Llama of
# the base model's shape (no extra computation per token), and its logits are the adapted ones,
# up to float32 rounding.

# %%
probe = np.array([tokenizer.encode("Elizabeth was not sure that Mr. Darcy had ever")])
adapted = model(probe).logits
merge_lora(model)
merged = model(probe).logits
print("adapters left:", sum(bool(layer.lora) for layer in model.weights.layers))
print(f"max |logits adapted - logits merged| = {float(np.abs(adapted - merged).max()):.2e} "
      f"(logits range over {float(adapted.max() - adapted.min()):.1f})")

# %% [markdown]
# ## Exercises
#
# 1. How many parameters does one rank-8 adapter on layer 0's `k_proj` have, in this model?
#    (`k_proj` maps `c.hidden_size` inputs to `c.num_key_value_heads * c.head_dim` outputs.)
# 2. Just after `add_lora`, before any step, by how much do the adapted model's logits differ from
#    the base model's? (A number.)
# 3. The Austen text takes more tokens per word under the demo tokenizer than Bible text does.
#    Would training the adapters change that? Answer True or False.

# %%
answer_1 = TODO
answer_2 = TODO
answer_3 = TODO
check("1. adapter parameters", answer_1,
      lambda a: int(a) == 8 * (c.hidden_size + c.num_key_value_heads * c.head_dim),
      "An adapter is A (r, in) and B (out, r): count both, and remember k_proj has one output per key/value head dimension.")
check("2. logits at the start", answer_2, lambda a: abs(float(a)) == 0.0,
      "Look at how B starts: what is B A x then?")
check("3. does LoRA change the tokenization?", answer_3, lambda a: a is False or a == "False",
      "The tokenizer is a separate, fixed file; the adapters change only the projections' weights.")
