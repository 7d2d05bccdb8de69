"""Checkpoint formats: reading every supported layout as Hugging Face-named lazy tensors, and writing HF folders.

* ``detect``: ``detect_format`` / ``open_checkpoint``, the one way in for any format.
* ``tensors``: ``StoredTensor`` / ``DerivedTensor`` (lazy, memory-mapped), bfloat16 widening, page advice.
* ``safetensors``: the safetensors reader and writer. ``hf``: Hugging Face folders (one file or shards).
* ``pth``: ``torch.save`` zip files read without torch and without running code. ``meta``: Meta's release.
* ``llama2c``: llama2.c ``.bin`` checkpoints and ``tokenizer.bin``.
* ``names``: the HF tensor names and the shape the config gives each.
* ``convert``, ``report`` (``minillama inspect``), ``synthetic`` (random checkpoints for tests and demos).
"""

from .detect import FORMATS, detect_format, open_checkpoint

__all__ = ["FORMATS", "detect_format", "open_checkpoint"]
