"""Llama tokenizers with Hugging Face's interface, and the readable BPE lesson.

* ``spm.LlamaTokenizer``: sentencepiece, from a ``tokenizer.model`` (the reference encoding).
* ``fast.LlamaTokenizerFast``: the ``tokenizers`` library, for checkpoints with only ``tokenizer.json``.
* ``base.LlamaTokenizerBase``: the interface both share (special tokens, batching, decoding,
  streaming with ``decoding.StreamDecoder``, the Llama 2 chat format, saving).
* ``bpe``: sentencepiece's BPE written out in plain Python, identical to it on the test corpus.
"""

from ..errors import TokenizerError
from .base import LlamaTokenizerBase
from .decoding import StreamDecoder
from .encoding import BatchEncoding
from .fast import LlamaTokenizerFast
from .spm import LlamaTokenizer

__all__ = ["LlamaTokenizer", "LlamaTokenizerFast", "LlamaTokenizerBase", "StreamDecoder", "BatchEncoding",
           "TokenizerError"]
