"""The demo model: a small Llama trained by minillama itself, shipped inside the package.

``minillama train --preset demo`` trained it on the King James Bible (public domain, from
Debian's bible-kjv; docs/demo_model.md is its model card). It is a Hugging Face folder
(config.json, model.safetensors in float16, tokenizer.model and its config), so
``minillama.load(demo_model_path())`` and transformers' ``from_pretrained`` both read it, offline.
"""

from __future__ import annotations

import os

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model")


def demo_model_path() -> str:
    """The folder of the bundled demo model."""
    if not os.path.isfile(os.path.join(FOLDER, "config.json")):
        raise FileNotFoundError(f"the demo model is not installed at {FOLDER} (reinstall minillama)")
    return FOLDER
