"""The vocabulary and special tokens of a Llama tokenizer, with Hugging Face's names for them."""

from __future__ import annotations

import numpy as np

from ..errors import TokenizerError


class SpecialTokensMixin:
    """Ids and pieces, BOS/EOS/UNK/PAD, and tokens added beyond the model's vocabulary."""

    def __len__(self) -> int:
        return self.vocab_size + len(self.added_tokens)

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            if tokens in self.added_tokens:
                return self.added_tokens[tokens]
            token_id = self._piece_to_id(tokens)
            return self.unk_token_id if token_id is None else token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, (int, np.integer)):
            self._check_ids([int(ids)])
            if ids >= self.vocab_size:
                return {v: k for k, v in self.added_tokens.items()}[int(ids)]
            return self._id_to_piece(int(ids))
        return [self.convert_ids_to_tokens(i) for i in ids]

    def _token_id(self, token):
        return None if token is None else self.convert_tokens_to_ids(token)

    @property
    def bos_token_id(self):
        return self._token_id(self.bos_token)

    @property
    def eos_token_id(self):
        return self._token_id(self.eos_token)

    @property
    def unk_token_id(self):
        return self._piece_to_id(self.unk_token)

    @property
    def pad_token_id(self):
        return self._token_id(self.pad_token)

    @property
    def all_special_tokens(self) -> list[str]:
        return [t for t in (self.bos_token, self.eos_token, self.unk_token, self.pad_token) if t is not None]

    @property
    def all_special_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]

    def add_special_tokens(self, special_tokens: dict) -> int:
        """Set special tokens, e.g. ``{"pad_token": "<pad>"}``; returns how many new ids were added.

        A token that is not in the vocabulary gets the next free id (32000 for Llama 2):
        then call ``model.resize_token_embeddings(len(tokenizer))``.
        """
        added = 0
        for key, token in special_tokens.items():
            if key not in ("bos_token", "eos_token", "unk_token", "pad_token"):
                raise TokenizerError(f"unknown special token kind {key!r}; use bos_token, eos_token, unk_token or pad_token")
            if not isinstance(token, str) or not token:
                raise TokenizerError(f"{key} must be a non-empty string, got {token!r}")
            if self._piece_to_id(token) is None and token not in self.added_tokens:
                self.added_tokens[token] = len(self)
                self._register_added(token)
                added += 1
            setattr(self, key, token)
        return added

    def _check_ids(self, ids) -> None:
        for i in ids:
            if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self):
                raise TokenizerError(f"token id {i!r} is outside the vocabulary [0, {len(self)})")
