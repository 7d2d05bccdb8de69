"""Encoding text to ids: special tokens around it, batches with padding and truncation."""

from __future__ import annotations

import re

import numpy as np

from ..errors import TokenizerError


class BatchEncoding(dict):
    """The result of calling a tokenizer: ``input_ids`` and ``attention_mask``, as keys or attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class EncodingMixin:
    """``encode``, ``__call__`` (batches, text pairs), and the Hugging Face helpers for special-token layout.

    ``add_bos_token`` (default True) and ``add_eos_token`` (default False) say what ``encode``
    and ``__call__`` put around a text, as in transformers; ``tokenizer_config.json`` can set them.
    """

    _add_bos_token, _add_eos_token = True, False

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = _flag("add_bos_token", value)
        self.update_post_processor()

    @property
    def add_eos_token(self) -> bool:
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = _flag("add_eos_token", value)
        self.update_post_processor()

    def update_post_processor(self) -> None:
        """transformers rebuilds its post-processor here; minillama reads add_bos_token and
        add_eos_token at every encode, so only the rule remains: no BOS/EOS token, none added."""
        if self.bos_token is None:
            self._add_bos_token = False
        if self.eos_token is None:
            self._add_eos_token = False

    def encode(self, text: str, bos: bool | None = None, eos: bool | None = None,
               add_special_tokens: bool | None = None, parse_special_tokens: bool = False) -> list[int]:
        """Text -> ids, with BOS in front (``bos``) and EOS at the end (``eos``).

        bos and eos default to add_bos_token and add_eos_token; add_special_tokens=False (the
        Hugging Face spelling) turns both off. parse_special_tokens=True makes literal
        special-token text such as "<s>" become its id, as transformers does; by default it is
        text, as in sentencepiece.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"text must be a str, got {type(text).__name__}")
        if add_special_tokens is False:
            bos = eos = False
        bos = self.add_bos_token if bos is None else bos
        eos = self.add_eos_token if eos is None else eos
        if parse_special_tokens:
            ids = self._encode_parsing_specials(text)
        else:
            ids = self._encode_plain(text)
        return ([self.bos_token_id] if bos else []) + ids + ([self.eos_token_id] if eos else [])

    def tokenize(self, text: str, parse_special_tokens: bool = False) -> list[str]:
        """The pieces of ``text`` (no BOS/EOS), as sentencepiece's ``encode_as_pieces`` shows them:
        a character the vocabulary lacks (in a model without byte fallback) shows as itself, not "<unk>"."""
        if not isinstance(text, str):
            raise TokenizerError(f"text must be a str, got {type(text).__name__}")
        if parse_special_tokens:
            return self._pieces_parsing_specials(text)
        return self._pieces_plain(text)

    def _special_segments(self, text: str) -> list[tuple[str, str]]:
        """Split text at special-token text: ("special", token), ("start", text at the very
        start) and ("after", text that follows a special token), in order."""
        specials = sorted(set(self.all_special_tokens) | set(self.added_tokens), key=len, reverse=True)
        if not specials:
            return [("start", text)] if text else []
        segments, after = [], False
        for part in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
            if part in specials:
                segments.append(("special", part))
                after = True
            elif part:
                segments.append(("after" if after else "start", part))
        return segments

    def _encode_parsing_specials(self, text: str) -> list[int]:
        """Special-token text becomes its id. Text after a special token gets no dummy prefix,
        as in transformers: ``"<s>hi"`` is ``[<s>, hi]``, not ``[<s>, ▁hi]``."""
        ids = []
        for kind, part in self._special_segments(text):
            if kind == "special":
                ids.append(self.convert_tokens_to_ids(part))
            else:
                ids.extend(self._encode_plain(part) if kind == "start" else self._encode_after_special(part))
        return ids

    def _pieces_parsing_specials(self, text: str) -> list[str]:
        pieces = []
        for kind, part in self._special_segments(text):
            if kind == "special":
                pieces.append(part)
            else:
                pieces.extend(self._pieces_plain(part) if kind == "start" else self._pieces_after_special(part))
        return pieces

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None) -> list[int]:
        """``[BOS] ids_0 [EOS] ([BOS] ids_1 [EOS])``, each per add_bos_token / add_eos_token, as transformers' Llama."""
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = bos + list(token_ids_0) + eos
        return out if token_ids_1 is None else out + bos + list(token_ids_1) + eos

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False) -> list[int]:
        """1 where build_inputs_with_special_tokens puts a special token, 0 elsewhere."""
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [1 if i in special else 0 for i in token_ids_0]
        bos, eos = [1] * self.add_bos_token, [1] * self.add_eos_token
        mask = bos + [0] * len(token_ids_0) + eos
        return mask if token_ids_1 is None else mask + bos + [0] * len(token_ids_1) + eos

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None) -> list[int]:
        """0 for the first sequence (with its BOS/EOS), 1 for the second."""
        specials = int(self.add_bos_token) + int(self.add_eos_token)
        first = [0] * (len(token_ids_0) + specials)
        return first if token_ids_1 is None else first + [1] * (len(token_ids_1) + specials)

    def __call__(self, text, text_pair=None, padding=False, padding_side: str | None = None,
                 truncation: bool = False, max_length: int | None = None, return_tensors: str | None = None,
                 add_special_tokens: bool = True, parse_special_tokens: bool = False) -> BatchEncoding:
        """Encode one text, a batch, or text pairs: ``input_ids`` and ``attention_mask``.

        text_pair: a second text (or a batch of them, one per text), joined as transformers'
        Llama does: ``[BOS] a [EOS] [BOS] b [EOS]`` per add_bos_token / add_eos_token.
        padding: False, True / "longest", or "max_length". padding_side: "left" (default
        for Llama, what generation needs) or "right". truncation cuts each row at max_length.
        return_tensors: None (lists), "np" (NumPy), or a backend name ("numpy", "cupy", "strict").
        """
        single = isinstance(text, str)
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise TokenizerError(f"padding_side must be 'left' or 'right', got {side!r}")
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise TokenizerError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        if (truncation or padding == "max_length") and (not isinstance(max_length, int) or max_length < 1):
            raise TokenizerError(f"truncation and padding='max_length' need a positive max_length, got {max_length!r}")
        rows = self._encode_rows(text, text_pair, add_special_tokens, parse_special_tokens)
        if truncation:
            rows = [r[:max_length] if self.truncation_side == "right" else r[-max_length:] for r in rows]
        masks = [[1] * len(r) for r in rows]
        if padding not in (False, "do_not_pad"):
            self._pad(rows, masks, max_length if padding == "max_length" else 0, side)
        if return_tensors is not None:
            if len({len(r) for r in rows}) > 1:
                raise TokenizerError("the texts encode to different lengths: pass padding=True to make a tensor")
            rows, masks = _to_tensor(rows, return_tensors), _to_tensor(masks, return_tensors)
        elif single:
            rows, masks = rows[0], masks[0]
        return BatchEncoding(input_ids=rows, attention_mask=masks)

    def _encode_rows(self, text, text_pair, add_special_tokens: bool, parse: bool) -> list[list[int]]:
        """One row of ids per text (or per pair of texts)."""
        single = isinstance(text, str)
        batch = [text] if single else list(text)
        if text_pair is None:
            return [self.encode(t, add_special_tokens=add_special_tokens, parse_special_tokens=parse) for t in batch]
        pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
        if single != isinstance(text_pair, str) or len(pairs) != len(batch):
            raise TokenizerError(f"text_pair must match text: one str for one str, or a list of {len(batch)} texts")
        rows = []
        for a, b in zip(batch, pairs):
            a, b = (self.encode(t, add_special_tokens=False, parse_special_tokens=parse) for t in (a, b))
            rows.append(self.build_inputs_with_special_tokens(a, b) if add_special_tokens else a + b)
        return rows

    def _pad(self, rows: list[list[int]], masks: list[list[int]], width: int, side: str) -> None:
        """Pad every row (in place) to the longest row, or to ``width`` if that is longer."""
        if self.pad_token is None:
            raise TokenizerError("padding needs a pad token, and Llama has none: call "
                                 "tokenizer.add_special_tokens({'pad_token': '<pad>'}) and "
                                 "model.resize_token_embeddings(len(tokenizer)), or set tokenizer.pad_token = tokenizer.unk_token")
        width = max(width, max(len(r) for r in rows))
        for r, m in zip(rows, masks):
            fill = width - len(r)
            if side == "left":
                r[:0], m[:0] = [self.pad_token_id] * fill, [0] * fill
            else:
                r.extend([self.pad_token_id] * fill)
                m.extend([0] * fill)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TokenizerError(f"{name} must be True or False, got {value!r}")
    return value


def _to_tensor(rows, return_tensors):
    host = np.asarray(rows, dtype=np.int64)
    if return_tensors == "np":
        return host
    from ..backend import get_namespace, to_backend
    try:
        return to_backend(host, get_namespace(return_tensors))
    except ValueError:
        raise TokenizerError(f"return_tensors must be None, 'np', 'numpy', 'cupy' or 'strict', got {return_tensors!r}") from None
