"""Shared first-cell helpers for the notebooks: which model to run on, and the exercise checks.

Every notebook runs on the demo model that ships in the package (a 6.8M-parameter Llama trained by
minillama on the King James Bible: real words, real attention patterns), or on the checkpoint
that ``MINILLAMA_MODEL`` points at (Hugging Face, Meta or llama2.c; real Llama 2 weights
included). Each notebook prints which one it is using. Executing a notebook writes nothing into
the repository: figures are shown inline.
"""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_TOKENIZER = os.path.join(HERE, "..", "..", "shared", "models", "llama2-tokenizer", "tokenizer.model")


def pick_model(layers: int | None = None) -> tuple[str, str]:
    """(model folder, description): MINILLAMA_MODEL if set, else the bundled demo model."""
    path = os.environ.get("MINILLAMA_MODEL", "")
    if path:
        return path, f"the model at {path}"
    import minillama
    return minillama.demo_model_path(), ("minillama's demo model (6.8M parameters, 6 layers, 8 query heads "
                                        "over 4 key/value heads, trained on the King James Bible)")


def using_demo_model() -> bool:
    """True when the notebook runs on the bundled demo model (its cells may then point at known heads)."""
    return not os.environ.get("MINILLAMA_MODEL", "")


def pick_tokenizer(model_folder: str):
    """The model's own tokenizer, else MINILLAMA_TOKENIZER (a tokenizer.model or a folder holding one)."""
    import minillama
    for candidate in (model_folder, os.environ.get("MINILLAMA_TOKENIZER", "")):
        if candidate and (os.path.isfile(candidate) or os.path.exists(os.path.join(candidate, "tokenizer.model"))):
            return minillama.LlamaTokenizer.from_pretrained(candidate)
    raise FileNotFoundError(f"no tokenizer.model in {model_folder}: set MINILLAMA_TOKENIZER to one")


def real_llama2_tokenizer():
    """The real Llama 2 tokenizer when one is available (MINILLAMA_LLAMA2_TOKENIZER or ../shared), else None."""
    import minillama
    for candidate in (os.environ.get("MINILLAMA_LLAMA2_TOKENIZER", ""), SHARED_TOKENIZER):
        if candidate and os.path.isfile(candidate):
            return minillama.LlamaTokenizer.from_pretrained(candidate)
    return None


class NotAnswered:
    """The placeholder an exercise starts with; ``check`` reports it instead of failing."""

    def __repr__(self) -> str:
        return "NotAnswered"


TODO = NotAnswered()


def check(name: str, answer, is_right, explain: str) -> bool:
    """Check the reader's answer to one exercise without ever showing the expected value.

    ``answer`` is what the reader computed (``TODO`` until they do); ``is_right(answer)`` returns
    True or False; ``explain`` says what a wrong answer usually means. A wrong answer raises an
    AssertionError carrying ``explain``, never the answer itself. An unanswered exercise prints a
    line and passes, so the notebook still runs top to bottom.
    """
    if isinstance(answer, NotAnswered):
        print(f"{name}: not answered yet (replace TODO with your answer and run this cell again)")
        return False
    try:
        right = bool(is_right(answer))
    except Exception as error:  # a wrong shape or type in the answer is a wrong answer, said plainly
        raise AssertionError(f"{name}: your answer could not be checked ({type(error).__name__}: {error}). "
                             f"{explain}") from None
    assert right, f"{name}: not yet. {explain}"
    print(f"{name}: correct")
    return True


# --- transitional: removed once every notebook is rebuilt on the demo model -----------------------
def save(fig, name: str) -> None:  # figures are shown inline now; nothing is written
    return None


def stand_in(layers: int = 4) -> str:
    import tempfile
    from minillama.formats.synthetic import write_random_checkpoint
    folder = os.path.join(tempfile.mkdtemp(prefix="minillama-stand-in-"), "model")
    write_random_checkpoint(folder, dict(num_hidden_layers=layers), seed=0, tokenizer=True)
    return folder
