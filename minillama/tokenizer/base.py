"""The Hugging Face interface shared by both Llama tokenizers, whatever engine encodes.

The encoding itself is sentencepiece's (``spm.LlamaTokenizer``) or the ``tokenizers`` library's
(``fast.LlamaTokenizerFast``); ``bpe.py`` shows, in plain Python, what sentencepiece does. The base
class adds what a user of Hugging Face's ``LlamaTokenizer`` expects, one topic per mixin: special
tokens (``special``), encoding and batching (``encoding``), decoding and streaming (``decoding``),
the Llama 2 chat format (``chat``), saving (``saving``).

Choices (see docs/tokenizer.md for the comparison with transformers):

* ``encode`` gives sentencepiece's ids: literal ``"<s>"`` in text is text, not the
  BOS id, unless ``parse_special_tokens=True``.
* ``decode`` skips special tokens by default, as Meta's and sentencepiece's decoders
  do, so ``decode(encode(s)) == s``; ``skip_special_tokens=False`` shows them. ``<unk>``
  decodes to sentencepiece's " ⁇ ".
* ``add_bos_token`` / ``add_eos_token`` decide what ``encode`` and ``__call__`` add, as in transformers.
"""

from __future__ import annotations

import os

from .chat import ChatMixin
from .decoding import DecodingMixin
from .encoding import EncodingMixin
from .saving import SavingMixin
from .special import SpecialTokensMixin


class LlamaTokenizerBase(SpecialTokensMixin, EncodingMixin, DecodingMixin, ChatMixin, SavingMixin):
    """Everything that does not depend on the encoding engine (sentencepiece or tokenizers)."""

    padding_side = "left"
    truncation_side = "right"

    def __init__(self, path: str):
        self.path = path
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = "<s>", "</s>", "<unk>", None
        self.added_tokens: dict[str, int] = {}  # tokens added beyond the model's vocabulary

    file_name = ""  # the vocabulary file a checkpoint folder holds

    @classmethod
    def from_pretrained(cls, path):
        """A folder holding the vocabulary file (and optionally ``tokenizer_config.json``), or the file itself."""
        path = os.fspath(path)
        folder = path if os.path.isdir(path) else None
        tokenizer = cls(os.path.join(path, cls.file_name) if folder else path)
        if folder:
            tokenizer._load_tokenizer_config(folder)
        return tokenizer

    # ---- the engine: subclasses provide these -----------------------------------------------

    def _encode_plain(self, text: str) -> list[int]:
        raise NotImplementedError

    def _encode_after_special(self, text: str) -> list[int]:
        """Encode text that follows a special token: without the dummy prefix where the engine has one."""
        return self._encode_plain(text)

    def _pieces_plain(self, text: str) -> list[str]:
        """The pieces ``_encode_plain`` gives, as text (an unknown character as itself where the engine can)."""
        return [self._id_to_piece(i) for i in self._encode_plain(text)]

    def _pieces_after_special(self, text: str) -> list[str]:
        return [self._id_to_piece(i) for i in self._encode_after_special(text)]

    def _decode_plain(self, ids: list[int]) -> str:
        """Decode ordinary pieces; drops the dummy-prefix space of a word-initial first piece."""
        raise NotImplementedError

    def _id_to_piece(self, token_id: int) -> str:
        raise NotImplementedError

    def _piece_to_id(self, piece: str) -> int | None:
        raise NotImplementedError

    def _register_added(self, token: str) -> None:
        """Tell the engine about a token added beyond its vocabulary (sentencepiece needs nothing)."""
