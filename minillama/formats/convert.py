"""``minillama convert``: a Meta folder or a llama2.c ``.bin`` into a Hugging Face folder.

Every tensor is read, merged and permuted on its own and written straight to its shard
(see ``hf.write_hf_folder``), so memory holds about one tensor at a time (Hugging Face's
own script holds the whole model).
"""

from __future__ import annotations

import os

from .detect import open_checkpoint
from .hf import write_hf_folder


def convert(src: str, out: str, max_shard_bytes: int = 5 * 2**30, progress=None) -> list[str]:
    """Convert a Meta folder or a llama2.c .bin (or re-shard an HF folder) into a Hugging Face folder."""
    config, tensors, fmt = open_checkpoint(src)
    folder = src if os.path.isdir(src) else os.path.dirname(src)
    tokenizer = os.path.join(folder, "tokenizer.model")
    return write_hf_folder(config, tensors, out, max_shard_bytes,
                           tokenizer if os.path.exists(tokenizer) else None, progress)
