"""A readable byte-pair-encoding tokenizer that reproduces sentencepiece's Llama encoding exactly.

The Llama 2 ``tokenizer.model`` is a sentencepiece BPE model: 32000 pieces, each
a string with a score. Encoding a text takes three steps.

1. **Normalise.** Put a space in front (the "dummy prefix", so that a word at the
   start looks like a word anywhere else) and write every space as "▁" (U+2581).
   ``"Hello world"`` becomes ``"▁Hello▁world"``.
2. **Merge.** Start from single characters. Among all neighbouring pairs whose
   concatenation is a piece of the vocabulary, merge the one with the highest
   score (the leftmost on a tie). Repeat until no pair can merge.
   ``▁ H e l l o`` -> ... -> ``▁Hello``.
3. **Map to ids, with byte fallback.** A symbol left over that is not a piece (a
   rare character such as an emoji) is written as its UTF-8 bytes, each one a
   piece of its own, ``<0xF0>`` ``<0x9F>`` ...; no text is ever "unknown".

Decoding reverses it: pieces are joined, byte pieces are turned back into bytes,
"▁" becomes a space, and the dummy-prefix space of the first piece with any text is dropped.

The model file is a protocol buffer; :func:`parse_model_proto` reads the few
fields needed, with a dozen lines of wire-format parsing and no protobuf library, and
:func:`with_spec_flag` rewrites one setting (``without_dummy_prefix`` turns the dummy
prefix off, for text that follows a special token).
"""

from __future__ import annotations

import heapq
import os
import struct
from dataclasses import dataclass

SPACE = "\u2581"  # "▁", how sentencepiece writes a space inside a piece

# sentencepiece piece types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# ---- reading the model file -----------------------------------------------------------------

def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A protobuf variable-length integer: 7 bits per byte, low bits first, high bit = more."""
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes):
    """Yield (field number, value) for each field of a protobuf message.

    A field starts with a key = (field number << 3) | wire type. Wire type 0 is a
    varint, 1 eight bytes, 2 a length-prefixed byte string, 5 four bytes.
    """
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("message runs past the end of the data")
        yield number, value


@dataclass
class SentencePieceModel:
    pieces: list  # piece strings, indexed by id
    scores: list  # float score of each piece
    types: list  # NORMAL, CONTROL, BYTE, ... of each piece
    model_type: int  # 1 unigram, 2 BPE
    byte_fallback: bool
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    normalizer: str


def read_model_proto(path: str | os.PathLike) -> SentencePieceModel:
    """Read the pieces and the settings the Llama encoding depends on from a ``tokenizer.model``."""
    with open(path, "rb") as f:
        return parse_model_proto(f.read())


def parse_model_proto(data: bytes) -> SentencePieceModel:
    """The pieces and settings of a serialized sentencepiece ModelProto.

    ModelProto fields used: 1 = pieces (1 piece, 2 score, 3 type); 2 = trainer spec
    (3 model type, 35 byte_fallback); 3 = normalizer spec (1 name, 3 add_dummy_prefix,
    4 remove_extra_whitespaces). A piece that is not UTF-8 text is refused here, at
    load, rather than when it is first decoded.
    """
    pieces, scores, types = [], [], []
    model_type, byte_fallback = 1, False
    normalizer, add_dummy_prefix, remove_extra_whitespaces = "nmt_nfkc", True, True
    for number, value in _fields(data):
        if number == 1:
            piece, score, kind = "", 0.0, NORMAL
            for n, v in _fields(_bytes(value)):
                if n == 1:
                    piece = _text(v, f"piece {len(pieces)}")
                elif n == 2:
                    if not isinstance(v, bytes) or len(v) != 4:
                        raise ValueError(f"piece {len(pieces)} has a malformed score")
                    (score,) = struct.unpack("<f", v)
                elif n == 3:
                    kind = v
            pieces.append(piece)
            scores.append(score)
            types.append(kind)
        elif number == 2:
            for n, v in _fields(_bytes(value)):
                if n == 3:
                    model_type = v
                elif n == 35:
                    byte_fallback = bool(v)
        elif number == 3:
            for n, v in _fields(_bytes(value)):
                if n == 1:
                    normalizer = _text(v, "normalizer name")
                elif n == 3:
                    add_dummy_prefix = bool(v)
                elif n == 4:
                    remove_extra_whitespaces = bool(v)
    if not pieces:
        raise ValueError("no pieces found")
    return SentencePieceModel(pieces, scores, types, model_type, byte_fallback,
                              add_dummy_prefix, remove_extra_whitespaces, normalizer)


def _bytes(value) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("a sub-message field holds a number, not bytes")
    return value


def _text(value, what: str) -> str:
    try:
        return _bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8 text: {value[:16]!r}") from None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def without_dummy_prefix(data: bytes) -> bytes:
    """The same serialized ModelProto with normalizer_spec.add_dummy_prefix = false.

    sentencepiece puts "▁" in front of every text it encodes; text that follows a special
    token in the middle of a prompt must not get one (transformers' encoding of "<s>hi" is
    ``[<s>, hi]``, not ``[<s>, ▁hi]``). A second processor loaded from this proto encodes such text.
    """
    return with_spec_flag(data, spec=3, flag=3, value=0)  # normalizer spec, add_dummy_prefix


def with_spec_flag(data: bytes, spec: int, flag: int, value: int) -> bytes:
    """The serialized ModelProto ``data`` with varint field ``flag`` of sub-message ``spec``
    (2 trainer spec, 3 normalizer spec) set to ``value``.

    Protobuf lets a later occurrence of a field override an earlier one, so appending
    the field to the sub-message is enough; every other byte is copied as it is.
    """
    setting = _varint(flag << 3) + _varint(value)
    out, pos, seen = bytearray(), 0, False
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        if key != (spec << 3) | 2:  # any other field: copy it as it is
            pos = _skip_value(data, pos, key & 7)
            out += data[start:pos]
            continue
        length, pos = _read_varint(data, pos)
        message, pos, seen = data[pos:pos + length] + setting, pos + length, True
        out += _varint(key) + _varint(len(message)) + message
    if not seen:  # no such sub-message at all: add one holding just the setting
        out += _varint((spec << 3) | 2) + _varint(len(setting)) + setting
    return bytes(out)


def _skip_value(data: bytes, pos: int, wire: int) -> int:
    """The position after a field value of wire type ``wire`` that starts at ``pos``."""
    if wire == 0:
        return _read_varint(data, pos)[1]
    if wire == 2:
        length, pos = _read_varint(data, pos)
        return pos + length
    if wire in (1, 5):
        return pos + (8 if wire == 1 else 4)
    raise ValueError(f"unsupported protobuf wire type {wire}")


# ---- the tokenizer --------------------------------------------------------------------------

class BPETokenizer:
    """Encode and decode with a sentencepiece BPE model, in plain Python."""

    def __init__(self, model: SentencePieceModel):
        if model.model_type != 2:
            raise ValueError("not a BPE sentencepiece model (model_type != BPE)")
        if model.normalizer != "identity" or model.remove_extra_whitespaces:
            raise ValueError(f"unsupported normalizer {model.normalizer!r}: Llama's is 'identity', keeping all spaces")
        self.model = model
        # Only normal pieces take part in merges; control pieces such as "<s>" never match text.
        self.mergeable = {p: (s, i) for i, (p, s, t) in enumerate(zip(model.pieces, model.scores, model.types))
                          if t in (NORMAL, USER_DEFINED)}
        self.byte_ids = {int(p[3:5], 16): i for i, (p, t) in enumerate(zip(model.pieces, model.types)) if t == BYTE}
        self.unk_id = model.types.index(UNKNOWN)

    @classmethod
    def from_file(cls, path) -> "BPETokenizer":
        return cls(read_model_proto(path))

    def normalize(self, text: str) -> str:
        """Step 1: dummy prefix, spaces to "▁"."""
        if not text:
            return ""
        if self.model.add_dummy_prefix:
            text = " " + text
        return text.replace(" ", SPACE)

    def merge(self, text: str) -> list[str]:
        """Step 2: merge neighbouring symbols, highest score first, until nothing merges.

        Symbols form a linked list (``prev``/``next`` indices), and candidate merges
        wait in a heap ordered by (-score, position), so each merge costs a few heap
        operations instead of a rescan of the whole text. A candidate is stale when
        one of its two symbols has since been merged into something else.
        """
        symbols = list(text)  # one symbol per character; "" marks a symbol merged away
        prev = list(range(-1, len(symbols) - 1))
        next_ = list(range(1, len(symbols) + 1))  # len(symbols) means "no next symbol"
        candidates = []

        def consider(left: int) -> None:
            right = next_[left]
            if right < len(symbols):
                merged = symbols[left] + symbols[right]
                if merged in self.mergeable:
                    heapq.heappush(candidates, (-self.mergeable[merged][0], left, right, merged))

        for i in range(len(symbols) - 1):
            consider(i)
        while candidates:
            _, left, right, merged = heapq.heappop(candidates)
            if next_[left] != right or symbols[left] + symbols[right] != merged:
                continue  # stale: a neighbour was merged since this candidate was pushed
            symbols[left], symbols[right] = merged, ""
            next_[left] = next_[right]
            if next_[right] < len(symbols):
                prev[next_[right]] = left
            if prev[left] >= 0:
                consider(prev[left])
            consider(left)
        return [s for s in symbols if s]

    def encode(self, text: str) -> list[int]:
        """Text -> piece ids (no BOS/EOS): normalise, merge, then map with byte fallback."""
        ids = []
        for symbol in self.merge(self.normalize(text)):
            if symbol in self.mergeable:
                ids.append(self.mergeable[symbol][1])
            elif self.model.byte_fallback:
                ids.extend(self.byte_ids[b] for b in symbol.encode("utf-8"))  # step 3: byte fallback
            else:
                ids.append(self.unk_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        """Piece ids -> text, as sentencepiece decodes.

        Control pieces (<s>, </s>) decode to nothing and unknown ones to " ⁇ ". Runs of
        byte pieces become UTF-8 text, one U+FFFD per byte that does not form a character.
        The dummy-prefix space is dropped once, from the first piece that shows any text,
        so BOS in front changes nothing: ``[<s>, ▁Hello]`` is "Hello".
        """
        text, pending, at_start = [], bytearray(), True
        for i in ids + [None]:
            kind = None if i is None else self.model.types[i]
            if kind == BYTE:
                pending.append(int(self.model.pieces[i][3:5], 16))
                continue
            if pending:
                text.append(decode_bytes(bytes(pending)))
                pending.clear()
                at_start = False
            if kind is None or kind == CONTROL:
                continue
            if kind == UNKNOWN:
                text.append(" \u2047 ")
                at_start = False
                continue
            piece = self.model.pieces[i]
            if at_start and self.model.add_dummy_prefix and piece.startswith(SPACE):
                piece, at_start = piece[1:], False
            text.append(piece.replace(SPACE, " "))
            at_start = at_start and not piece
        return "".join(text)


def decode_bytes(data: bytes) -> str:
    """UTF-8 bytes -> text, as sentencepiece does it: each byte that does not start a
    complete, valid character becomes one U+FFFD, and decoding resumes at the next byte.
    (Python's ``errors="replace"`` would give one U+FFFD for a truncated sequence.)"""
    out, pos = [], 0
    while pos < len(data):
        for length in (1, 2, 3, 4):
            try:
                out.append(data[pos:pos + length].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            pos += length
            break
        else:
            out.append("\ufffd")
            pos += 1
    return "".join(out)
