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
# # 1. Tokenization: from text to ids
#
# Llama 2 reads token ids, not characters. Its tokenizer is a sentencepiece **BPE** model of
# 32,000 pieces. This notebook uses sentencepiece through `minillama.LlamaTokenizer`, then repeats
# the encoding step by step with `minillama.tokenizer.bpe.BPETokenizer`, a readable Python version that
# gives the same ids.
#
# **Which tokenizer.** The real Llama 2 `tokenizer.model` when it is found (`MINILLAMA_TOKENIZER`,
# the model folder in `MINILLAMA_MODEL`, or the project's `../shared`); otherwise a small stand-in
# trained on a paragraph, with the same settings.

# %%
import os

import minillama
from minillama.tokenizer.bpe import BPETokenizer
from _setup import SHARED_TOKENIZER, stand_in

path = os.environ.get("MINILLAMA_TOKENIZER") or (os.path.join(os.environ["MINILLAMA_MODEL"], "tokenizer.model")
                                                 if os.environ.get("MINILLAMA_MODEL") else SHARED_TOKENIZER)
if not os.path.exists(path):
    path = os.path.join(stand_in(), "tokenizer.model")
    print("running on a small stand-in tokenizer (the real one was not found)")
else:
    print("running on", path)
tokenizer = minillama.LlamaTokenizer.from_pretrained(path)
bpe = BPETokenizer.from_file(path)
print(len(tokenizer), "pieces; special:", tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token)

# %% [markdown]
# ## sentencepiece through the Hugging Face-style interface

# %%
text = "Hello world! Llamas live in the Andes 🦙"
ids = tokenizer.encode(text)
print(ids)
print(tokenizer.convert_ids_to_tokens(ids))
print(repr(tokenizer.decode(ids)))

# %% [markdown]
# ## The same, step by step
# **1. Normalise**: a space in front (the *dummy prefix*), every space written as "▁".

# %%
normalised = bpe.normalize(text)
print(repr(normalised))

# %% [markdown]
# **2. Merge**: start from characters; repeatedly merge the neighbouring pair whose concatenation
# is the highest-scoring piece in the vocabulary.

# %%
symbols = list(normalised)
print(len(symbols), "characters:", symbols[:12], "...")
step = 0
while True:
    candidates = [(bpe.mergeable[a + b][0], i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))
                  if a + b in bpe.mergeable]
    if not candidates:
        break
    score, i = max(candidates, key=lambda c: (c[0], -c[1]))  # best score, leftmost on a tie
    symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    step += 1
    if step <= 6:
        print(f"merge {step}: {symbols[i]!r} (score {score:.1f}) -> {symbols}")
print(f"... {step} merges in all ->", symbols)
assert symbols == bpe.merge(normalised)  # the fast version in minillama.tokenizer.bpe does the same

# %% [markdown]
# **3. Ids, with byte fallback**: a symbol that is not a piece (the llama emoji) becomes its UTF-8
# bytes, each a piece `<0x..>`, so no text is ever unknown.

# %%
print(bpe.encode(text))
assert bpe.encode(text) == tokenizer.encode(text, bos=False)
print([tokenizer.convert_ids_to_tokens(i) for i in bpe.encode("🦙")])

# %% [markdown]
# ## The prefix-space quirk
# Decoding drops the dummy-prefix space of a first piece that starts a word. So decoding one token
# at a time loses spaces, and a character split over byte pieces is incomplete until its last byte.
# `decode_stream` handles both: its pieces add up to exactly the whole decode.

# %%
ids = tokenizer.encode(" two  spaces 🦙 then text", bos=False)
naive = "".join(tokenizer.decode([i]) for i in ids)
streamed = list(tokenizer.decode_stream(ids))
print("token by token:", repr(naive))
print("streamed:      ", repr("".join(streamed)), streamed)
assert "".join(streamed) == tokenizer.decode(ids)

# %% [markdown]
# ## The Llama 2 chat format
# Each exchange is `<s>[INST] user [/INST] answer </s>`; a system prompt sits in `<<SYS>>` tags
# inside the first user turn; the last user turn is left open for the model to answer.

# %%
messages = [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "What do llamas eat?"},
            {"role": "assistant", "content": "Grass."},
            {"role": "user", "content": "And alpacas?"}]
print(tokenizer.apply_chat_template(messages, tokenize=False))
print(tokenizer.apply_chat_template(messages)["input_ids"])
