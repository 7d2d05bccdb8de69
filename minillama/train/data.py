"""Training data: read a text corpus, train its tokenizer, turn it into token ids and batches.

The path from a text file to what a training step eats:

1. ``read_corpus(path)``: a UTF-8 text file, or a folder of ``.txt`` files joined with blank lines.
2. ``train_tokenizer(text, out_dir, vocab_size)``: a sentencepiece BPE ``tokenizer.model``
   trained with Llama 2's own settings (byte fallback, split digits, no normalization).
3. ``encode_corpus(text, tokenizer)``: one 1-D array of ids, each paragraph (a block of text
   between blank lines: a document) starting with BOS, as llama2.c's pretokenizer does per story.
4. ``split_train_val(ids)``: the last 5% of the ids, one contiguous tail, is held out for validation.
5. ``batches(ids, batch_size, seq_len, seed, step)``: the training batch of step ``step``, windows
   at random offsets drawn from a generator seeded by ``(seed, step)`` alone, so a resumed run
   sees exactly the batches an uninterrupted one would. ``val_batches`` walks the held-out ids
   once, in order, so that every token is scored exactly once.

Labels equal the inputs, as in transformers: the loss shifts them (position t predicts t + 1).
This is host-side bookkeeping, so it uses NumPy directly; the trainer moves batches to ``xp``.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np

from ..errors import ConfigError, CorpusError, TokenizerError
from ..files import check_regular_file, read_limited
from ..tokenizer import LlamaTokenizer

GiB = 2**30
CORPUS_LIMIT = 2 * GiB  # the most text read_corpus reads: 2 GiB of UTF-8 (about 400 million words)
IGNORE_INDEX = -100  # a label the loss skips (transformers' convention): val_batches' already-scored tokens
SPECIAL_PIECES = 3  # <unk>, <s>, </s>
BYTE_PIECES = 256  # byte fallback: <0x00> ... <0xFF>


# ---- 1. reading the corpus ---------------------------------------------------------------------


def read_corpus(path, limit: int = CORPUS_LIMIT) -> str:
    """The text of a UTF-8 file, or of a folder's ``.txt`` files (sorted by name, joined by a blank line).

    Only the ``.txt`` files directly in the folder are read (not its subfolders, not hidden
    files). Windows line ends become ``\\n`` and a leading byte-order mark is dropped. A missing
    path is a ``FileNotFoundError``; anything else wrong (not a regular file, empty, not UTF-8,
    a NUL byte, more than ``limit`` bytes in all) is a :class:`CorpusError` naming the file.
    """
    path = os.fspath(path)
    paths = _corpus_files(path) if os.path.isdir(path) else [path]
    sizes = [check_regular_file(p, CorpusError) for p in paths]
    if sum(sizes) > limit:
        where = path if len(paths) == 1 else f"{path}: its .txt files"
        raise CorpusError(f"{where}: {sum(sizes)} bytes is too large for a corpus (at most {limit})")
    texts = [_decode_text(read_limited(p, limit, CorpusError, "corpus"), p) for p in paths]
    return "\n\n".join(text.strip("\n") for text in texts) + "\n"


def _corpus_files(folder: str) -> list[str]:
    """The ``.txt`` files directly in ``folder``, sorted by name; none is an error."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".txt") and not n.startswith("."))
    except OSError as problem:
        raise CorpusError(f"{folder}: cannot list the folder ({problem.strerror or problem})") from None
    if not names:
        raise CorpusError(f"{folder}: no .txt files in this folder")
    return [os.path.join(folder, name) for name in names]


def _decode_text(data: bytes, path: str) -> str:
    """UTF-8 bytes -> text, refusing empty, non-UTF-8 and binary (NUL-holding) content."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as problem:
        bad = data[problem.start]
        raise CorpusError(f"{path}: not UTF-8 text (byte 0x{bad:02x} at byte offset {problem.start})") from None
    if "\0" in text:
        offset = data.index(b"\0")
        raise CorpusError(f"{path}: a NUL byte at byte offset {offset}: a binary file, not text")
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    if not text.strip():
        raise CorpusError(f"{path}: empty (no text to train on)")
    return text


# ---- 2. training the tokenizer -----------------------------------------------------------------

# Llama 2's trainer and normalizer settings, as its tokenizer.model records them
# (sentencepiece defaults left out: split_by_unicode_script, split_by_number, max_sentencepiece_length=16, ...).
LLAMA2_TRAINER_SETTINGS = dict(
    model_type="bpe", byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
    character_coverage=0.99995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
)


def train_tokenizer(text: str, out_dir, vocab_size: int, seed: int = 0) -> str:
    """Train a sentencepiece BPE tokenizer on ``text``; the path of the ``tokenizer.model`` written.

    ``out_dir`` then holds ``tokenizer.model`` and the ``tokenizer_config.json`` of a Llama
    tokenizer (BOS added, no EOS), a folder both minillama and transformers load.

    Each non-empty line is one sentence of the training input (every line is used, none is
    cut: ``max_sentence_length`` is the longest line). The same text, vocab_size and seed give
    a byte-identical model (two threads, a seeded generator; the seed is sentencepiece's global
    one). A vocab_size the text cannot support is a :class:`TokenizerError` saying the range.
    """
    import sentencepiece

    _check_int("vocab_size", vocab_size, 1, 2**31 - 1)  # sentencepiece keeps it in an int32
    _check_int("seed", seed, 0, 2**32 - 1)
    if not isinstance(text, str):
        raise TokenizerError(f"text must be a str, got {type(text).__name__}")
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        raise TokenizerError("no text to train a tokenizer on (every line is empty)")
    longest = max(len(line.encode("utf-8")) for line in lines)
    model = io.BytesIO()
    sentencepiece.set_random_generator_seed(seed)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, num_threads=2, minloglevel=2,
            max_sentence_length=min(max(4192, longest), 2**31 - 1), **LLAMA2_TRAINER_SETTINGS)
    except (RuntimeError, ValueError) as problem:  # sentencepiece's failed checks and bad flags
        raise TokenizerError(_explain_training_error(str(problem), vocab_size)) from None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(os.fspath(out_dir), "tokenizer.model")
    partial = path + ".partial"
    with open(partial, "wb") as f:
        f.write(model.getvalue())
    os.replace(partial, path)  # a reader never sees half a model
    LlamaTokenizer(path).save_pretrained(out_dir)  # tokenizer_config.json: transformers then adds BOS too
    return path


def _explain_training_error(message: str, vocab_size: int) -> str:
    """sentencepiece's failure (a C++ check and its source line) as one plain sentence."""
    too_large = re.search(r"value <= (\d+)", message)
    if too_large:
        return f"vocab_size {vocab_size} is too large for this text (at most {too_large.group(1)})"
    too_small = re.search(r"required_chars\. \d+ vs (\d+)", message)
    if too_small:
        return (f"vocab_size {vocab_size} is too small for this text (at least {too_small.group(1)}: "
                f"{SPECIAL_PIECES} special pieces, {BYTE_PIECES} bytes and the text's characters)")
    first_line = (message.strip().splitlines() or ["unknown error"])[0]
    return f"sentencepiece could not train on this text ({first_line})"


# ---- 3. token ids, the split, batches ----------------------------------------------------------


def paragraphs(text: str) -> list[str]:
    """The blocks of ``text`` between blank lines (lines of only spaces count as blank)."""
    blocks = re.split(r"\n[ \t]*(?:\n[ \t]*)*\n", text)
    return [block.strip("\n") for block in blocks if block.strip()]


def encode_corpus(text: str, tokenizer) -> np.ndarray:
    """All of ``text`` as one 1-D int32 array of ids: BOS, then the ids of a paragraph, for each paragraph.

    A paragraph (see :func:`paragraphs`) is a document: BOS marks where one begins, as in
    llama2.c's pretokenizer (no EOS). ``tokenizer`` is any minillama tokenizer.
    """
    pieces = [np.asarray(tokenizer.encode(block, bos=True, eos=False), dtype=np.int64) for block in paragraphs(text)]
    if not pieces:
        raise CorpusError("no text to encode (every paragraph is empty)")
    ids = np.concatenate(pieces)  # (n_tokens,)
    if int(ids.min()) < 0 or int(ids.max()) >= 2**31:
        raise TokenizerError("the tokenizer gave ids outside 0 .. 2**31 - 1")
    return ids.astype(np.int32)


def split_train_val(ids, val_fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, validation ids): the last ``val_fraction`` of the ids, one contiguous tail, is held out.

    A tail rather than random documents: nothing of the held-out text leaks into training
    through overlapping windows, and the split needs no seed. Both parts hold at least one id.
    """
    ids = _check_ids(ids)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be a number between 0 and 1 (exclusive), got {val_fraction!r}")
    if ids.shape[0] < 2:
        raise ConfigError(f"cannot split {ids.shape[0]} token id(s) into a training and a validation part")
    n_val = min(max(1, round(ids.shape[0] * val_fraction)), ids.shape[0] - 1)
    return ids[:-n_val], ids[-n_val:]


def batches(ids, batch_size: int, seq_len: int, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The training batch of step ``step``: (input_ids (batch_size, seq_len), labels (batch_size, seq_len)) int64.

    Each row is a window of ``seq_len`` consecutive ids at an offset drawn uniformly from a
    generator seeded by ``(seed, step)`` alone (``step`` is the spawn key of ``seed``'s
    SeedSequence), so batch k is the same whichever batches were drawn before it.
    Labels are a copy of the inputs; the loss shifts them.
    """
    ids = _check_ids(ids)
    _check_window(ids, batch_size, seq_len)
    _check_int("seed", seed, 0, 2**32 - 1)
    _check_int("step", step, 0)
    generator = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(step,)))
    offsets = generator.integers(0, ids.shape[0] - seq_len + 1, size=batch_size)  # (batch_size,)
    rows = offsets[:, None] + np.arange(seq_len)[None, :]  # (batch_size, seq_len)
    input_ids = ids[rows].astype(np.int64)
    return input_ids, input_ids.copy()


def val_windows(n_ids: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, first scored position) of each validation window, so that ids 1 .. n_ids - 1 are scored once.

    Position t of a window predicts the id at t + 1, so windows overlap by one id: start k
    is k * (seq_len - 1). The last window is aligned to the end of the ids, and its positions
    that earlier windows already scored are skipped (their labels become IGNORE_INDEX).
    """
    stride = seq_len - 1
    windows = [(start, 0) for start in range(0, n_ids - seq_len + 1, stride)]
    scored = windows[-1][0] + stride  # the last id scored so far
    if scored < n_ids - 1:
        start = n_ids - seq_len
        windows.append((start, scored - start + 1))
    return windows


def val_batches(ids, batch_size: int, seq_len: int):
    """Yield (input_ids, labels), each (rows, seq_len) int64, covering the validation ids once, in order.

    Every id but the first is a label exactly once (see :func:`val_windows`); label positions
    already scored hold IGNORE_INDEX (-100), which the loss skips. The last batch may have
    fewer than ``batch_size`` rows.
    """
    ids = _check_ids(ids)
    _check_window(ids, batch_size, seq_len)
    windows = val_windows(ids.shape[0], seq_len)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first:first + batch_size]
        starts = np.asarray([start for start, _ in chunk], dtype=np.int64)  # (rows,)
        input_ids = ids[starts[:, None] + np.arange(seq_len)[None, :]].astype(np.int64)  # (rows, seq_len)
        labels = input_ids.copy()
        for row, (_, skip) in enumerate(chunk):
            labels[row, :skip] = IGNORE_INDEX
        yield input_ids, labels


# ---- argument checks ---------------------------------------------------------------------------


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    """Refuse a non-integer (bools included) or an integer outside low .. high with a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(f"{name} must be {bound}, got {value}")


def _check_ids(ids) -> np.ndarray:
    """``ids`` as a 1-D NumPy integer array; anything else is a ConfigError."""
    array = np.asarray(ids)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"token ids must be a 1-D integer array, got shape {array.shape} of {array.dtype}")
    return array


def _check_window(ids: np.ndarray, batch_size: int, seq_len: int) -> None:
    """batch_size >= 1, seq_len >= 2 (one prediction needs two ids) and no longer than the ids."""
    _check_int("batch_size", batch_size, 1)
    _check_int("seq_len", seq_len, 2)
    if seq_len > ids.shape[0]:
        raise ConfigError(f"seq_len {seq_len} is longer than the token ids ({ids.shape[0]})")
