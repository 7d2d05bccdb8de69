"""Decoding ids to text, whole or as a stream of pieces that add up to the whole."""

from __future__ import annotations

SPACE = "\u2581"


class DecodingMixin:
    """``decode``, ``batch_decode`` and streaming decode."""

    renders_unknown = False  # whether the engine decodes <unk> to visible text (sentencepiece: " ⁇ ")

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Ids -> text. Special tokens are skipped by default; with skip_special_tokens=False
        they appear as their text ("<s>"). Only the very start of the text loses the
        dummy-prefix space. Where the engine renders the unknown piece (sentencepiece's
        " ⁇ "), skipping keeps it, as sentencepiece and Meta's decoder do."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        self._check_ids(ids)
        special = set(self.all_special_ids) | set(self.added_tokens.values())
        if skip_special_tokens:
            if self.renders_unknown and self.unk_token_id not in (self.bos_token_id, self.eos_token_id, self.pad_token_id):
                special.discard(self.unk_token_id)  # unless <unk> doubles as padding
            return self._decode_plain([i for i in ids if i not in special])
        text, run = "", []
        for i in ids + [None]:
            if i is not None and i not in special:
                run.append(i)
                continue
            if run:
                piece = self._decode_plain(run)
                starts_word = self._id_to_piece(run[0]).startswith(SPACE)
                text += (" " if text and starts_word else "") + piece
                run = []
            if i is not None:
                text += self.convert_ids_to_tokens(i)
        return text

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    def stream_decoder(self, skip_special_tokens: bool = True) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens)

    def decode_stream(self, ids, skip_special_tokens: bool = True):
        """Yield text pieces as ids arrive; their concatenation equals ``decode(ids)``."""
        stream = StreamDecoder(self, skip_special_tokens)
        for i in ids:
            piece = stream.step(i)
            if piece:
                yield piece
        rest = stream.flush()
        if rest:
            yield rest


class StreamDecoder:
    """Turn ids into text one id at a time, emitting only text that will not change.

    Decoding one id alone is wrong twice over: sentencepiece drops the leading space
    of a word-initial first piece, and a character split over several byte-fallback
    pieces is not complete until its last byte arrives. So the decoder decodes a
    short window of recent ids twice, without and with the new id, and emits the
    difference once it does not end in an incomplete character (U+FFFD).
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # the window starts here
        self.read = 0  # ids before this are already emitted

    def prime(self, context_ids, window: int = 8) -> None:
        """Start after ``context_ids`` (a prompt) without emitting them, so the first new
        piece is decoded in context: a word-initial piece then keeps its space."""
        self.ids = [int(i) for i in context_ids]
        self.read = len(self.ids)
        self.prefix = max(0, self.read - window)

    def step(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._emit(final=False)

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character is emitted as U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=self.skip)
        after = decode(self.ids[self.prefix:], skip_special_tokens=self.skip)
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]
