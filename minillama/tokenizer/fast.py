"""LlamaTokenizerFast: the same interface on the ``tokenizers`` library, for a ``tokenizer.json``."""

from __future__ import annotations

import os

from ..errors import TokenizerError
from ..files import MiB, read_limited
from .base import LlamaTokenizerBase

JSON_LIMIT = 256 * MiB  # Llama 2's tokenizer.json is 1.8 MB, Llama 3's 9 MB


class LlamaTokenizerFast(LlamaTokenizerBase):
    """The same interface on the ``tokenizers`` library, for checkpoints that ship only ``tokenizer.json``.

    Needs ``pip install tokenizers``. The encoding is whatever the file's pipeline says;
    for Llama 2 files converted by transformers it differs from sentencepiece on text that
    starts with a space (see docs/tokenizer.md).
    """

    file_name = "tokenizer.json"

    def __init__(self, path: str):
        super().__init__(path)
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerError("LlamaTokenizerFast needs the tokenizers package: pip install tokenizers") from None
        if not os.path.lexists(path):
            raise TokenizerError(f"tokenizer file not found: {path}")
        data = read_limited(path, JSON_LIMIT, TokenizerError, "tokenizer.json")
        try:
            self.tk = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as error:  # the tokenizers library raises its own Exception subclass
            message = (str(error).strip().splitlines() or ["unreadable"])[0]
            raise TokenizerError(f"{path}: not a tokenizers JSON file ({message})") from None
        self.tk.encode_special_tokens = True  # literal "<s>" is text unless parse_special_tokens=True
        self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)

    def _encode_plain(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids if text else []

    def _decode_plain(self, ids):
        return self.tk.decode(ids, skip_special_tokens=False)

    def _pieces_plain(self, text):
        return self.tk.encode(text, add_special_tokens=False).tokens if text else []

    def _encode_parsing_specials(self, text):
        return self._encoding_parsing_specials(text).ids

    def _pieces_parsing_specials(self, text):
        return self._encoding_parsing_specials(text).tokens

    def _encoding_parsing_specials(self, text):
        # The tokenizers library matches its own special tokens in text (and handles the
        # space after them as its pipeline says); let it.
        self.tk.encode_special_tokens = False
        try:
            return self.tk.encode(text, add_special_tokens=False)
        finally:
            self.tk.encode_special_tokens = True

    def _register_added(self, token):
        from tokenizers import AddedToken
        self.tk.add_special_tokens([AddedToken(token, special=True)])

    def _id_to_piece(self, token_id):
        return self.tk.id_to_token(token_id)

    def _piece_to_id(self, piece):
        return self.tk.token_to_id(piece)

    def get_vocab(self) -> dict[str, int]:
        return {**self.tk.get_vocab(with_added_tokens=True), **self.added_tokens}
