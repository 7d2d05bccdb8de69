"""Shared first-cell helper for the notebooks: which model and tokenizer to run on.

Every notebook runs on the real model when MINILLAMA_MODEL points at its folder (Hugging Face,
Meta or llama2.c), and otherwise on a small random stand-in made here in seconds, so that the
notebooks run anywhere and identically in CI. Each notebook prints which one it is using.
"""

from __future__ import annotations

import os
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_TOKENIZER = os.path.join(HERE, "..", "..", "shared", "models", "llama2-tokenizer", "tokenizer.model")
FIGURES = os.environ.get("MINILLAMA_FIGURES", os.path.join(HERE, "..", "docs", "images"))


def stand_in(layers: int = 4) -> str:
    """A small random Llama checkpoint with a stand-in tokenizer, written to a temporary folder."""
    from minillama.formats.synthetic import write_random_checkpoint
    folder = os.path.join(tempfile.mkdtemp(prefix="minillama-stand-in-"), "model")
    write_random_checkpoint(folder, dict(num_hidden_layers=layers), seed=0, tokenizer=True)
    return folder


def pick_model(layers: int = 4) -> tuple[str, str]:
    """(model folder, description): the real model if MINILLAMA_MODEL is set, else the stand-in."""
    path = os.environ.get("MINILLAMA_MODEL", "")
    if path:
        return path, f"the model at {path}"
    return stand_in(layers), f"a small random stand-in ({layers} layers, hidden 64): numbers, not language"


def pick_tokenizer(model_folder: str):
    """The model's own tokenizer, MINILLAMA_TOKENIZER, or the real Llama 2 tokenizer from ../shared."""
    import minillama
    for candidate in (os.environ.get("MINILLAMA_TOKENIZER", ""), model_folder):
        if candidate and (os.path.isfile(candidate) or os.path.exists(os.path.join(candidate, "tokenizer.model"))):
            return minillama.LlamaTokenizer.from_pretrained(candidate)
    raise FileNotFoundError("no tokenizer: set MINILLAMA_TOKENIZER to a tokenizer.model")


def save(fig, name: str) -> str:
    os.makedirs(FIGURES, exist_ok=True)
    path = os.path.join(FIGURES, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
