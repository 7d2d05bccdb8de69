"""LlamaTokenizer: the Llama tokenizer on sentencepiece, from a ``tokenizer.model``."""

from __future__ import annotations

import os

from ..errors import TokenizerError
from ..files import MiB, read_limited
from .base import LlamaTokenizerBase
from .bpe import parse_model_proto, without_dummy_prefix

MODEL_LIMIT = 64 * MiB  # Llama 2's tokenizer.model is 0.5 MB; the largest sentencepiece models a few MB


class LlamaTokenizer(LlamaTokenizerBase):
    """The Llama tokenizer on sentencepiece, from a ``tokenizer.model``.

    Two processors are loaded from the same model: ``sp`` as the file says (a "▁" put in
    front of the text, the dummy prefix), and ``sp_after_special`` without the dummy prefix,
    for text that follows a special token parsed out of the middle of a prompt.
    """

    file_name = "tokenizer.model"
    renders_unknown = True  # sentencepiece decodes <unk> to " ⁇ "

    def __init__(self, path: str):
        super().__init__(path)
        import sentencepiece
        if not os.path.lexists(path):
            raise TokenizerError(f"tokenizer file not found: {path}")
        data = read_limited(path, MODEL_LIMIT, TokenizerError, "sentencepiece model")
        try:
            self.model_proto = parse_model_proto(data)  # checks every piece is UTF-8 text, here at load
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=data)
            self.sp_after_special = sentencepiece.SentencePieceProcessor(model_proto=without_dummy_prefix(data))
        except (ValueError, RuntimeError, OSError) as error:
            message = (str(error).strip().splitlines() or ["unreadable"])[0]
            raise TokenizerError(f"{path}: not a sentencepiece model ({message})") from None
        if self.sp.get_piece_size() == 0:
            raise TokenizerError(f"{path}: not a sentencepiece model (no pieces)")
        self.vocab_size = self.sp.get_piece_size()

    def _encode_plain(self, text):
        return self.sp.encode(text)

    def _encode_after_special(self, text):
        return self.sp_after_special.encode(text)

    def _pieces_plain(self, text):
        return self.sp.encode(text, out_type=str)

    def _pieces_after_special(self, text):
        return self.sp_after_special.encode(text, out_type=str)

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
