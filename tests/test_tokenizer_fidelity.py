"""Fidelity to sentencepiece and transformers in the corners: text after a special token, <unk>,
models without byte fallback, and the readable BPE decoder on control and byte pieces.

Reference values are literal (taken from sentencepiece 0.2 and transformers 5.24 with the real
Llama 2 tokenizer.model); where those libraries are installed they are also compared live.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import given, settings, strategies as st

from conftest import SHARED
from minillama.tokenizer import LlamaTokenizer, TokenizerError, bpe
from minillama.tokenizer.bpe import BPETokenizer, decode_bytes

MODEL = os.path.join(SHARED, "models", "llama2-tokenizer", "tokenizer.model")
pytestmark = pytest.mark.skipif(not os.path.exists(MODEL), reason="../shared/models/llama2-tokenizer is absent")


@pytest.fixture(scope="module")
def tok():
    return LlamaTokenizer.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def sp():
    import sentencepiece
    return sentencepiece.SentencePieceProcessor(model_file=MODEL)


@pytest.fixture(scope="module")
def readable():
    return BPETokenizer.from_file(MODEL)


def byte_id(value: int) -> int:
    return 3 + value  # Llama 2 keeps <0x00> ... <0xFF> at ids 3 ... 258


# ---- (a) text after a special token gets no dummy prefix ----------------------------------

PARSED = {  # text -> ids with add_special_tokens=False, as transformers 5.24 gives them
    "<s>hi</s>": [1, 2918, 2],  # "hi" after <s>: 2918 "hi", not 7251 "▁hi"
    "<s> Hello<s>how": [1, 15043, 1, 3525],  # " Hello" -> "▁Hello"; "how" -> 3525, not 920 "▁how"
    "Hello<s>how": [15043, 1, 3525],  # text at the very start keeps its dummy prefix
    "a</s> b": [263, 2, 289],
    "<s>": [1],
}


@pytest.mark.parametrize("text", PARSED)
def test_no_dummy_prefix_after_a_special_token(tok, text):
    assert tok.encode(text, parse_special_tokens=True, add_special_tokens=False) == PARSED[text]
    assert tok.encode(text, parse_special_tokens=True) == [1] + PARSED[text]  # add_bos_token=True, as Llama-2-hf
    assert tok.convert_tokens_to_ids(tok.tokenize(text, parse_special_tokens=True)) == PARSED[text]


def test_literal_special_text_stays_text_by_default(tok, sp):
    assert tok.encode("<s>hi</s>", bos=False) == sp.encode("<s>hi</s>") == [529, 29879, 29958, 2918, 829, 29879, 29958]


def test_after_special_encoding_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")
    shutil.copy(MODEL, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text('{"add_bos_token": true, "add_eos_token": false}')
    hf = transformers.LlamaTokenizer.from_pretrained(tmp_path)
    ours = LlamaTokenizer.from_pretrained(tmp_path)
    texts = list(PARSED) + ["<s>[INST] Hi [/INST] Hello </s><s>[INST] again [/INST]", "x</s>\n<s>y", "é<unk>日本</s>🙂"]
    for text in texts:
        assert ours.encode(text, parse_special_tokens=True) == hf.encode(text), repr(text)
        assert ours.encode(text, parse_special_tokens=True, add_special_tokens=False) == \
            hf.encode(text, add_special_tokens=False), repr(text)
        assert ours.tokenize(text, parse_special_tokens=True) == hf.tokenize(text), repr(text)


def test_without_dummy_prefix_changes_only_that_flag(sp):
    import sentencepiece
    data = open(MODEL, "rb").read()
    changed = bpe.parse_model_proto(bpe.without_dummy_prefix(data))
    original = bpe.parse_model_proto(data)
    assert original.add_dummy_prefix and not changed.add_dummy_prefix
    assert (changed.pieces, changed.scores, changed.types) == (original.pieces, original.scores, original.types)
    plain = sentencepiece.SentencePieceProcessor(model_proto=bpe.without_dummy_prefix(data))
    assert plain.encode("hi") == [2918] and sp.encode("hi") == [7251]


# ---- (b) <unk> decodes to " ⁇ " ------------------------------------------------------------

UNK = {(0,): " \u2047 ", (1, 0, 2): " \u2047 ", (15043, 0, 3186): "Hello \u2047  world", (0, 15043): " \u2047  Hello"}


@pytest.mark.parametrize("ids", UNK)
def test_unknown_decodes_as_sentencepiece(tok, sp, readable, ids):
    assert tok.decode(list(ids)) == UNK[ids] == sp.decode(list(ids)) == readable.decode(list(ids))
    assert "".join(tok.decode_stream(list(ids))) == UNK[ids]


def test_unknown_shown_as_its_text_when_not_skipping(tok):
    # transformers' rendering: "<s><unk></s>", "Hello<unk> world"
    assert tok.decode([1, 0, 2], skip_special_tokens=False) == "<s><unk></s>"
    assert tok.decode([15043, 0, 3186], skip_special_tokens=False) == "Hello<unk> world"


def test_unknown_used_as_padding_is_skipped():
    tok = LlamaTokenizer.from_pretrained(MODEL)
    tok.pad_token = tok.unk_token
    assert tok.decode([0, 0, 1, 15043]) == "Hello"


# ---- (c) a model without byte fallback -----------------------------------------------------

def rewrite_pieces(data: bytes, change) -> bytes:
    """The serialized model with ``change(piece message bytes)`` applied to every piece (field 1)."""
    out, pos = bytearray(), 0
    while pos < len(data):
        start = pos
        key, pos = bpe._read_varint(data, pos)
        pos = bpe._skip_value(data, pos, key & 7)
        field = data[start:pos]
        if key == (1 << 3) | 2:
            _, body = bpe._read_varint(data, start + 1)
            message = change(data[body:pos])
            field = bpe._varint(key) + bpe._varint(len(message)) + message
        out += field
    return bytes(out)


def without_byte_fallback(data: bytes) -> bytes:
    """Llama 2's model with byte fallback off and its 256 byte pieces made UNUSED (type 5)."""
    def unused(piece):
        return piece + b"\x18\x05" if dict(bpe._fields(piece)).get(3) == bpe.BYTE else piece
    return bpe.with_spec_flag(rewrite_pieces(data, unused), spec=2, flag=35, value=0)


@pytest.fixture(scope="module")
def no_fallback(tmp_path_factory):
    folder = tmp_path_factory.mktemp("no-byte-fallback")
    (folder / "tokenizer.model").write_bytes(without_byte_fallback(open(MODEL, "rb").read()))
    return folder / "tokenizer.model"


def test_tokenize_shows_unknown_surface_text(no_fallback):
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=str(no_fallback))
    tok = LlamaTokenizer.from_pretrained(no_fallback)
    text = "hi 🙂 there"
    assert sp.encode(text) == tok.encode(text, bos=False) == [7251, 29871, 0, 727]
    assert tok.tokenize(text) == sp.encode(text, out_type=str) == ["\u2581hi", "\u2581", "🙂", "\u2581there"]
    assert tok.tokenize("<s>🙂x", parse_special_tokens=True) == ["<s>", "🙂", "x"]
    assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text)) == "hi  \u2047  there"


# ---- (d) and (e) the readable decoder ---------------------------------------------------

READABLE = {
    (1, 15043): "Hello",  # the first piece after BOS loses its dummy-prefix space
    (2, 2, 15043): "Hello",
    (15043, 2, 15043): "Hello Hello",  # only at the start
    (1, 29871, 15043): " Hello",  # a lone "▁" carries the dummy prefix
    (259, 15043): "  Hello",  # "▁▁": one space dropped
    (byte_id(0x41), 15043): "A Hello",
    (byte_id(0xE2), byte_id(0x82), 15043): "\ufffd\ufffd Hello",  # one U+FFFD per byte of a cut "€"
    (byte_id(0xE2), byte_id(0xE2), byte_id(0x82), byte_id(0xAC)): "\ufffd€",
    (byte_id(0xED), byte_id(0xA0), byte_id(0x80)): "\ufffd" * 3,  # a surrogate is no character
    (byte_id(0xC0), byte_id(0x80)): "\ufffd" * 2,  # nor an overlong encoding
}


@pytest.mark.parametrize("ids", READABLE)
def test_readable_decode_reference_values(readable, sp, ids):
    assert readable.decode(list(ids)) == READABLE[ids] == sp.decode(list(ids))


def test_decode_bytes():
    assert decode_bytes("€🙂a".encode()) == "€🙂a"
    assert decode_bytes(b"\xe2\x82") == "\ufffd\ufffd"
    assert decode_bytes(b"\xf0\x9f\x99") == "\ufffd" * 3
    assert b"\xe2\x82".decode("utf-8", errors="replace") == "\ufffd"  # why Python's own replace will not do


ANY_IDS = st.lists(st.one_of(st.integers(0, 258), st.sampled_from([29871, 259, 15043, 3186]), st.integers(0, 31999)),
                   max_size=12)


@settings(max_examples=400, deadline=None)
@given(ANY_IDS)
def test_property_readable_decode_of_any_ids(readable, sp, ids):
    assert readable.decode(ids) == sp.decode(ids)


# ---- the model file is checked at load --------------------------------------------------

def test_non_utf8_piece_refused_at_load(tmp_path):
    data = open(MODEL, "rb").read()
    needle = b"\x0a\x08\xe2\x96\x81Hello\x15"  # the piece message of "▁Hello": field 1, 8 bytes, then its score
    assert data.count(needle) == 1
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(data.replace(needle, b"\x0a\x08\xe2\x96\x81\xffello\x15"))
    with pytest.raises(TokenizerError, match=r"tokenizer.model: not a sentencepiece model \(piece 15043 is not UTF-8"):
        LlamaTokenizer.from_pretrained(bad)


def test_fifo_model_refused_at_once(tmp_path):
    fifo = tmp_path / "tokenizer.model"
    os.mkfifo(fifo)
    with pytest.raises(TokenizerError, match="tokenizer.model: is not a regular file"):
        LlamaTokenizer.from_pretrained(tmp_path)


def test_model_folder_refused(tmp_path):
    (tmp_path / "tokenizer.model").mkdir()
    with pytest.raises(TokenizerError, match="tokenizer.model: is a folder"):
        LlamaTokenizer.from_pretrained(tmp_path)
