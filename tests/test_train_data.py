"""Training data: reading a corpus, training its tokenizer, token ids, the split and the batches."""

from __future__ import annotations

import os

import numpy as np
import pytest

from minillama.errors import ConfigError, TokenizerError
from minillama.train import data
from minillama import CorpusError

# ---- read_corpus -------------------------------------------------------------------------------


def write(path, content: bytes) -> str:
    with open(path, "wb") as f:
        f.write(content)
    return str(path)


def test_a_text_file_is_read_with_windows_line_ends_and_bom_removed(tmp_path):
    path = write(tmp_path / "a.txt", "\ufeffIn the beginning\r\nwas the word: caf\u00e9\r\n".encode("utf-8"))
    assert data.read_corpus(path) == "In the beginning\nwas the word: caf\u00e9\n"


def test_a_folder_joins_its_txt_files_sorted_by_name_with_blank_lines(tmp_path):
    write(tmp_path / "b.txt", b"second\n\n")
    write(tmp_path / "a.txt", b"first\nline two\n")
    write(tmp_path / "notes.md", b"not read")
    write(tmp_path / ".hidden.txt", b"not read either")
    os.mkdir(tmp_path / "sub")
    write(tmp_path / "sub" / "c.txt", b"nor this")
    assert data.read_corpus(tmp_path) == "first\nline two\n\nsecond\n"


def test_a_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        data.read_corpus(tmp_path / "nothing.txt")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    path = str(tmp_path / "pipe.txt")
    os.mkfifo(path)
    with pytest.raises(CorpusError, match=r"pipe\.txt: is not a regular file"):
        data.read_corpus(path)
    with pytest.raises(CorpusError, match=r"pipe\.txt: is not a regular file"):
        data.read_corpus(tmp_path)  # the folder's .txt files are checked the same way


@pytest.mark.parametrize("content", [b"", b"\n \n\t\n"])
def test_an_empty_file_is_refused(tmp_path, content):
    path = write(tmp_path / "empty.txt", content)
    with pytest.raises(CorpusError, match=r"empty\.txt: empty"):
        data.read_corpus(path)


def test_non_utf8_is_refused_at_its_byte_offset(tmp_path):
    path = write(tmp_path / "latin1.txt", "na\u00efve text".encode("utf-8") + b" then caf\xe9")
    with pytest.raises(CorpusError, match=r"latin1\.txt: not UTF-8 text \(byte 0xe9 at byte offset 20\)"):
        data.read_corpus(path)


def test_a_binary_file_is_refused_at_its_first_nul(tmp_path):
    path = write(tmp_path / "model.txt", b"abc\0def")
    with pytest.raises(CorpusError, match=r"model\.txt: a NUL byte at byte offset 3"):
        data.read_corpus(path)


def test_a_folder_without_txt_files_is_refused(tmp_path):
    write(tmp_path / "book.md", b"text")
    with pytest.raises(CorpusError, match=r"no \.txt files"):
        data.read_corpus(tmp_path)


def test_a_bad_file_in_a_folder_is_named(tmp_path):
    write(tmp_path / "a.txt", b"fine")
    write(tmp_path / "b.txt", b"\xff")
    with pytest.raises(CorpusError, match=r"b\.txt: not UTF-8 text \(byte 0xff at byte offset 0\)"):
        data.read_corpus(tmp_path)


def test_the_size_limit_is_checked_before_reading(tmp_path):
    path = write(tmp_path / "big.txt", b"x" * 101)
    assert data.read_corpus(path, limit=101) == "x" * 101 + "\n"
    with pytest.raises(CorpusError, match=r"big\.txt: 101 bytes is too large for a corpus \(at most 100\)"):
        data.read_corpus(path, limit=100)
    write(tmp_path / "more.txt", b"y" * 50)
    with pytest.raises(CorpusError, match=r"its \.txt files: 151 bytes is too large"):
        data.read_corpus(tmp_path, limit=150)
    assert data.CORPUS_LIMIT == 2 * 2**30


def test_corpus_error_is_a_value_error():
    assert issubclass(CorpusError, ValueError)


# ---- train_tokenizer ---------------------------------------------------------------------------

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
LLAMA2_MODEL = os.path.join(SHARED, "models", "llama2-tokenizer", "tokenizer.model")
WORDS = ("the king said unto them that his people went forth into the land of plenty and "
         "a small dog ran over hills while children sang songs about rivers stones bread wine").split()


def small_text(n_paragraphs: int = 40, seed: int = 0) -> str:
    """A few KB of made-up English: paragraphs of sentences, some numbers, separated by blank lines."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_paragraphs):
        sentences = []
        for _ in range(int(rng.integers(2, 5))):
            words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=int(rng.integers(4, 12)))]
            sentences.append(" ".join(words).capitalize() + (f" in {1000 + 37 * p}." if p % 3 == 0 else "."))
        out.append("\n".join(sentences))
    return "\n\n".join(out) + "\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 400-piece tokenizer trained on small_text(): (folder, text)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    text = small_text()
    path = data.train_tokenizer(text, folder, 400)
    assert path == os.path.join(str(folder), "tokenizer.model")
    return str(folder), text


def test_training_is_deterministic_byte_for_byte(trained, tmp_path):
    folder, text = trained
    again = data.train_tokenizer(text, tmp_path / "again", 400, seed=0)
    first = open(os.path.join(folder, "tokenizer.model"), "rb").read()
    assert open(again, "rb").read() == first
    assert not os.path.exists(again + ".partial")
    assert 3000 < len(text.encode()) < 20000  # "a few KB"


def test_the_trained_tokenizer_loads_and_round_trips(trained):
    from minillama import LlamaTokenizer
    folder, text = trained
    tok = LlamaTokenizer.from_pretrained(folder)
    assert tok.vocab_size == 400
    assert [tok.convert_ids_to_tokens(i) for i in (0, 1, 2, 3, 258)] == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]
    sample = "The king said 2026 times: caf\u00e9 \u20ac!"
    ids = tok.encode(sample, bos=False)
    assert tok.decode(ids) == sample
    pieces = tok.convert_ids_to_tokens(ids)
    assert [p for p in pieces if p.strip("\u2581").isdigit()] == ["2", "0", "2", "6"]  # split_digits
    assert "<0xE2>" in pieces and "<0x82>" in pieces and "<0xAC>" in pieces  # the euro sign by byte fallback
    assert tok.encode("the king", bos=True)[0] == 1 and len(tok.encode(text)) < len(text) / 2  # it learned merges


def test_the_trained_tokenizer_agrees_with_transformers(trained):
    transformers = pytest.importorskip("transformers")
    from minillama import LlamaTokenizer
    folder, text = trained
    ours, theirs = LlamaTokenizer.from_pretrained(folder), transformers.LlamaTokenizer.from_pretrained(folder)
    # (runs of spaces and leading spaces are tokenized differently by transformers: test_tokenizer_vs_transformers)
    for sample in (text[:500], "and a line 42\u20ac\nnext", "Rivers of bread"):
        assert theirs.encode(sample) == ours.encode(sample)


def trainer_settings(path: str) -> dict:
    model_pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    model = model_pb2.ModelProto()
    model.ParseFromString(open(path, "rb").read())
    spec, norm = model.trainer_spec, model.normalizer_spec
    fields = ("model_type", "byte_fallback", "split_digits", "allow_whitespace_only_pieces", "character_coverage",
              "unk_id", "bos_id", "eos_id", "pad_id", "split_by_unicode_script", "split_by_number",
              "split_by_whitespace", "treat_whitespace_as_suffix", "max_sentencepiece_length",
              "hard_vocab_limit", "unk_piece", "bos_piece", "eos_piece")
    settings = {name: getattr(spec, name) for name in fields}
    settings.update(normalizer=norm.name, add_dummy_prefix=norm.add_dummy_prefix,
                    remove_extra_whitespaces=norm.remove_extra_whitespaces, charsmap=norm.precompiled_charsmap)
    return settings


def test_the_settings_are_llama_2s(trained):
    ours = trainer_settings(os.path.join(trained[0], "tokenizer.model"))
    assert ours["model_type"] == 2 and ours["byte_fallback"] and ours["normalizer"] == "identity"  # 2 = BPE
    assert ours["pad_id"] == -1 and not ours["remove_extra_whitespaces"] and ours["charsmap"] == b""
    if not os.path.exists(LLAMA2_MODEL):
        pytest.skip("../shared/models/llama2-tokenizer is absent")
    assert ours == trainer_settings(LLAMA2_MODEL)


def test_a_vocab_size_the_text_cannot_support_is_refused_in_one_line(tmp_path):
    text = small_text(5)
    with pytest.raises(TokenizerError, match=r"^vocab_size 8000 is too large for this text \(at most \d+\)$"):
        data.train_tokenizer(text, tmp_path, 8000)
    with pytest.raises(TokenizerError, match=r"^vocab_size 100 is too small for this text \(at least \d+: 3 special"):
        data.train_tokenizer(text, tmp_path, 100)
    assert not os.path.exists(tmp_path / "tokenizer.model")


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=0), "vocab_size must be between 1 and"), (dict(vocab_size=400.0), "vocab_size must be an integer"),
    (dict(vocab_size=10**12), "vocab_size must be between 1 and 2147483647, got 1000000000000"),
    (dict(vocab_size=True), "vocab_size must be an integer"), (dict(vocab_size=400, seed=-1), "seed must be between"),
])
def test_bad_arguments_are_config_errors(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        data.train_tokenizer("some text", tmp_path, **kwargs)


def test_text_without_lines_is_refused(tmp_path):
    with pytest.raises(TokenizerError, match="every line is empty"):
        data.train_tokenizer("\n  \n", tmp_path, 400)


def test_the_folder_has_a_tokenizer_config_adding_bos(trained):
    import json
    config = json.load(open(os.path.join(trained[0], "tokenizer_config.json")))
    assert config["add_bos_token"] is True and config["add_eos_token"] is False and config["bos_token"] == "<s>"


# ---- encode_corpus, split_train_val ------------------------------------------------------------


class CharTokenizer:
    """A stand-in tokenizer: BOS = 1, each character its code point + 10."""

    def encode(self, text, bos=True, eos=False):
        return ([1] if bos else []) + [ord(c) + 10 for c in text] + ([2] if eos else [])


def test_paragraphs_are_the_blocks_between_blank_lines():
    text = "\n\nfirst line\nsecond line\n\n\n  \nnext  \n \t\nlast\n"
    assert data.paragraphs(text) == ["first line\nsecond line", "next  ", "last"]


def test_each_paragraph_starts_with_bos():
    ids = data.encode_corpus("ab\ncd\n\n\nef\n", CharTokenizer())
    assert ids.dtype == np.int32
    assert ids.tolist() == [1, 107, 108, 20, 109, 110, 1, 111, 112]
    with pytest.raises(CorpusError, match="every paragraph is empty"):
        data.encode_corpus("\n \n", CharTokenizer())


def test_encode_corpus_with_a_trained_tokenizer(trained):
    from minillama import LlamaTokenizer
    folder, text = trained
    tok = LlamaTokenizer.from_pretrained(folder)
    ids = data.encode_corpus(text, tok)
    blocks = text.strip("\n").split("\n\n")
    assert len(blocks) == 40 and int((ids == 1).sum()) == 40
    expected = [i for block in blocks for i in [1] + tok.encode(block, bos=False)]
    assert ids.tolist() == expected


def test_the_validation_part_is_the_contiguous_tail():
    ids = np.arange(100, dtype=np.int32)
    train, val = data.split_train_val(ids)
    assert train.tolist() == list(range(95)) and val.tolist() == list(range(95, 100))
    train, val = data.split_train_val(ids[:10], val_fraction=0.01)  # at least one id held out
    assert train.tolist() == list(range(9)) and val.tolist() == [9]
    train, val = data.split_train_val(ids[:2], val_fraction=0.99)  # and at least one kept
    assert train.tolist() == [0] and val.tolist() == [1]


@pytest.mark.parametrize("ids, fraction, message", [
    (np.arange(10), 0.0, "val_fraction must be"), (np.arange(10), 1.0, "val_fraction must be"),
    (np.arange(10), True, "val_fraction must be"), (np.arange(10), "0.1", "val_fraction must be"),
    (np.arange(1), 0.5, "cannot split 1 token"), (np.zeros((2, 5), dtype=np.int32), 0.1, "1-D integer array"),
    (np.linspace(0, 1, 10), 0.1, "1-D integer array"),
])
def test_bad_splits_are_config_errors(ids, fraction, message):
    with pytest.raises(ConfigError, match=message):
        data.split_train_val(ids, fraction)


# ---- batches, val_batches ----------------------------------------------------------------------


def test_a_batch_is_windows_of_consecutive_ids_with_labels_equal_to_inputs():
    ids = np.arange(1000, 1300, dtype=np.int32)
    input_ids, labels = data.batches(ids, batch_size=4, seq_len=16, seed=3, step=7)
    assert input_ids.shape == labels.shape == (4, 16) and input_ids.dtype == labels.dtype == np.int64
    assert np.array_equal(labels, input_ids) and labels is not input_ids
    assert np.array_equal(input_ids - input_ids[:, :1], np.broadcast_to(np.arange(16), (4, 16)))
    assert input_ids.min() >= 1000 and input_ids.max() <= 1299


def test_batch_k_depends_only_on_seed_and_k():
    ids = np.arange(5000, dtype=np.int32)
    in_order = [data.batches(ids, 8, 32, seed=1, step=k)[0] for k in range(6)]
    resumed = data.batches(ids, 8, 32, seed=1, step=5)[0]  # no batch drawn before it
    assert np.array_equal(resumed, in_order[5])
    assert not np.array_equal(in_order[4], in_order[5])  # steps differ
    assert not np.array_equal(data.batches(ids, 8, 32, seed=2, step=5)[0], in_order[5])  # seeds differ
    np.random.seed(123)  # the global generator plays no part
    assert np.array_equal(data.batches(ids, 8, 32, seed=1, step=5)[0], in_order[5])


def test_offsets_cover_every_window_including_the_last():
    ids = np.arange(10, dtype=np.int32)
    starts = {int(row[0]) for k in range(200) for row in data.batches(ids, 4, 7, seed=0, step=k)[0]}
    assert starts == {0, 1, 2, 3}  # 10 - 7 + 1 offsets, each reachable


def scored_ids(ids, batch_size, seq_len):
    """The ids val_batches scores (labels[:, 1:] not ignored), in order, and the batch row counts."""
    scored, rows = [], []
    for input_ids, labels in data.val_batches(ids, batch_size, seq_len):
        assert input_ids.shape == labels.shape and input_ids.shape[1] == seq_len and labels.dtype == np.int64
        assert np.array_equal(input_ids - input_ids[:, :1], np.broadcast_to(np.arange(seq_len), input_ids.shape))
        kept = labels[:, 1:]
        assert np.all((kept == input_ids[:, 1:]) | (kept == data.IGNORE_INDEX))
        scored.extend(kept[kept != data.IGNORE_INDEX].tolist())
        rows.append(input_ids.shape[0])
    return scored, rows


@pytest.mark.parametrize("n, batch_size, seq_len", [(16, 2, 4), (17, 2, 4), (8, 3, 8), (100, 4, 9), (23, 1, 2)])
def test_val_batches_score_every_id_but_the_first_exactly_once(n, batch_size, seq_len):
    ids = np.arange(500, 500 + n, dtype=np.int32)
    scored, rows = scored_ids(ids, batch_size, seq_len)
    assert scored == ids[1:].tolist()
    assert all(r == batch_size for r in rows[:-1]) and 1 <= rows[-1] <= batch_size


def test_val_batches_reference_layout():
    batches = list(data.val_batches(np.arange(10, 20), batch_size=2, seq_len=4))  # windows at 0, 3 and 6
    assert [b[0].tolist() for b in batches] == [[[10, 11, 12, 13], [13, 14, 15, 16]], [[16, 17, 18, 19]]]
    last = list(data.val_batches(np.arange(10, 21), batch_size=4, seq_len=4))[0][1]  # windows at 0, 3, 6 and 7
    assert last[3].tolist() == [-100, -100, -100, 20]


@pytest.mark.parametrize("kwargs, message", [
    (dict(seq_len=11), "seq_len 11 is longer than the token ids \\(10\\)"), (dict(seq_len=1), "seq_len must be"),
    (dict(batch_size=0), "batch_size must be at least 1"), (dict(step=-1), "step must be at least 0"),
    (dict(seed=2**32), "seed must be between"), (dict(step=1.0), "step must be an integer"),
])
def test_bad_batch_arguments_are_config_errors(kwargs, message):
    arguments = {**dict(batch_size=2, seq_len=4, seed=0, step=0), **kwargs}
    with pytest.raises(ConfigError, match=message):
        data.batches(np.arange(10), **arguments)
    if "seed" not in kwargs and "step" not in kwargs:
        with pytest.raises(ConfigError, match=message):
            next(data.val_batches(np.arange(10), arguments["batch_size"], arguments["seq_len"]))


# ---- the demo corpus ---------------------------------------------------------------------------


def test_the_demo_corpus_script_writes_one_clean_paragraph_per_chapter(tmp_path):
    import shutil
    import subprocess
    if shutil.which("bible") is None:
        pytest.skip("Debian's bible-kjv is not installed (the script would install it)")
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "get_demo_corpus.sh")
    out = tmp_path / "kjv.txt"
    subprocess.run(["bash", script, str(out)], check=True, capture_output=True, timeout=120)
    text = data.read_corpus(out)
    chapters = data.paragraphs(text)
    assert len(chapters) == 1189 and all("\n" not in chapter for chapter in chapters)
    assert chapters[0].startswith("In the beginning God created the heaven and the earth. And the earth was")
    assert chapters[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    assert "Ge1:1" not in text and not any(c.isdigit() for c in text)
    assert 4_000_000 < len(text) < 4_300_000
    first = data.train_tokenizer(text, tmp_path / "a", 4096)  # the full-size training is deterministic too
    assert open(first, "rb").read() == open(data.train_tokenizer(text, tmp_path / "b", 4096), "rb").read()
