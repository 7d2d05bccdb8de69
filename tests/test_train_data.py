"""Training data: reading a corpus, training its tokenizer, token ids, the split and the batches."""

from __future__ import annotations

import os

import numpy as np
import pytest

from minillama.errors import ConfigError, TokenizerError
from minillama.train import data
from minillama.train.data import CorpusError

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
