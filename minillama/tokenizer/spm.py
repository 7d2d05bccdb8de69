"""LlamaTokenizer: the Llama tokenizer on sentencepiece, from a ``tokenizer.model``."""

from __future__ import annotations

import os

from ..errors import TokenizerError
from .base import LlamaTokenizerBase


class LlamaTokenizer(LlamaTokenizerBase):
    """The Llama tokenizer on sentencepiece, from a ``tokenizer.model``."""

    file_name = "tokenizer.model"

    def __init__(self, path: str):
        super().__init__(path)
        import sentencepiece
        if not os.path.isfile(path):
            raise TokenizerError(f"tokenizer file not found: {path}")
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=path)
        except (RuntimeError, OSError) as error:
            raise TokenizerError(f"{path}: not a sentencepiece model ({str(error).strip().splitlines()[0]})") from None
        if self.sp.get_piece_size() == 0:
            raise TokenizerError(f"{path}: not a sentencepiece model (no pieces)")
        self.vocab_size = self.sp.get_piece_size()

    def _encode_plain(self, text):
        return self.sp.encode(text)

    def _decode_plain(self, ids):
        return self.sp.decode(ids)

    def _id_to_piece(self, token_id):
        return self.sp.id_to_piece(token_id)

    def _piece_to_id(self, piece):
        token_id = self.sp.piece_to_id(piece)
        return None if token_id == self.sp.unk_id() and piece != self.sp.id_to_piece(token_id) else token_id

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens)
        return vocab
