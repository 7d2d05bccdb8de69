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
# # 8. Checking the numbers against transformers
#
# A reference implementation earns trust by agreeing with the established one. This notebook runs
# the same checkpoint through minillama and Hugging Face `transformers` (torch, float32) and
# compares the logits. It needs the test extra (`pip install -e ".[test]"`).
#
# Runs on the Hugging Face folder in `MINILLAMA_MODEL`, or on a small random stand-in.

# %%
import numpy as np
import torch
import transformers

import minillama
from _setup import pick_model

TOLERANCE = 1e-4  # max abs difference of float32 logits
model_path, description = pick_model()
print("running on", description)

ours = minillama.load(model_path, dtype="float32")
theirs = transformers.LlamaForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
ids = np.random.default_rng(0).integers(3, ours.config.vocab_size, size=(2, 24))

with torch.no_grad():
    expected = theirs(torch.as_tensor(ids)).logits.numpy()
got = ours(ids).logits
diff = float(np.abs(got - expected).max())
print(f"logits {got.shape}, largest |logit| {np.abs(expected).max():.2f}, max abs difference {diff:.2e}")

# %%
greedy_ours = minillama.generate(ours, ids[:1, :8], max_new_tokens=16, eos_token_id=[]).sequences
with torch.no_grad():
    greedy_theirs = theirs.generate(torch.as_tensor(ids[:1, :8]), do_sample=False, max_new_tokens=16,
                                    min_new_tokens=16, eos_token_id=None, pad_token_id=0).numpy()
print("greedy tokens equal:", np.array_equal(greedy_ours, greedy_theirs))

# %%
assert diff <= TOLERANCE, f"logits differ by {diff:.2e} > {TOLERANCE}"
assert np.array_equal(greedy_ours, greedy_theirs), "greedy generation differs"
print("cross-check passed")
