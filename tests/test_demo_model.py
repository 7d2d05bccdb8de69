"""The demo model shipped in the package: its shape, its size, transformers' logits, and real English out."""

from __future__ import annotations

import gzip
import os
import re

import numpy as np
import pytest

import minillama
from minillama.cli import main
from minillama.generation import generate_text
from minillama.tokenizer import LlamaTokenizer
from reference_cases import FIXTURES

PROMPTS = ["And God said", "The king of Israel", "In the beginning", "Blessed are the", "And the LORD spake unto"]


@pytest.fixture(scope="module")
def demo():
    folder = minillama.demo_model_path()
    return folder, minillama.load(folder), LlamaTokenizer.from_pretrained(folder)


def english_words() -> set:
    """Every word of the training corpus (the King James Bible), lower-cased."""
    with gzip.open(os.path.join(FIXTURES, "kjv_words.txt.gz"), "rt", encoding="utf-8") as f:
        return set(f.read().split())


def test_shape_and_size(demo):
    folder, model, tokenizer = demo
    c = model.config
    assert (c.num_attention_heads, c.num_key_value_heads) == (8, 4)  # grouped-query attention
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size) == (256, 6, 4096) and len(tokenizer) == 4096
    size = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    assert size <= 16 * 2**20
    from minillama.formats.safetensors import read_safetensors
    assert {t.dtype for t in read_safetensors(os.path.join(folder, "model.safetensors")).values()} == {"F16"}


def test_greedy_continuations_are_english_words(demo):
    _, model, tokenizer = demo
    known = english_words()
    texts = generate_text(model, tokenizer, PROMPTS, max_new_tokens=24, temperature=0).texts
    for prompt, text in zip(PROMPTS, texts):
        words = re.findall(r"[A-Za-z]+", text)
        assert len(words) >= 8, (prompt, text)
        unknown = [w for w in words if w.lower() not in known]
        assert len(unknown) <= len(words) // 10, (prompt, text, unknown)  # a rare invented word at most


def test_logits_equal_transformers(demo):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder, model, tokenizer = demo
    reference = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = np.array([tokenizer.encode("And God said unto Moses, Go down")])
    with torch.no_grad():
        expected = reference(torch.as_tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(model(ids).logits) - expected).max() < 1e-4


def test_generate_without_model_uses_the_demo(capsys):
    assert main(["generate", "--prompt", "And God said", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("And God said") and len(re.findall(r"[A-Za-z]+", out)) >= 6
