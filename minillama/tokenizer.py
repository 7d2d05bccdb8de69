"""LlamaTokenizer: sentencepiece with the Hugging Face interface, streaming decode and the Llama 2 chat format.

The encoding itself is sentencepiece's (``bpe.py`` shows, in plain Python, what it
does). This module adds what a user of Hugging Face's ``LlamaTokenizer`` expects:
special tokens, a pad token Llama lacks, batching with padding and truncation,
``apply_chat_template``, and a streaming decoder whose pieces add up to exactly
the text that decoding the whole sequence gives.

Choices (see docs/tokenizer.md for the comparison with transformers):

* ``encode`` gives sentencepiece's ids: literal ``"<s>"`` in text is text, not the
  BOS id, unless ``parse_special_tokens=True``.
* ``decode`` skips special tokens by default, as Meta's and sentencepiece's decoders
  do, so ``decode(encode(s)) == s``; ``skip_special_tokens=False`` shows them.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

SPACE = "\u2581"
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
CHAT_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")


class TokenizerError(ValueError):
    """A tokenizer file is missing or unreadable, or a request cannot be met."""


class BatchEncoding(dict):
    """The result of calling a tokenizer: ``input_ids`` and ``attention_mask``, as keys or attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _LlamaTokenizerBase:
    """Everything that does not depend on the encoding engine (sentencepiece or tokenizers)."""

    padding_side = "left"
    truncation_side = "right"

    def __init__(self, path: str):
        self.path = path
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = "<s>", "</s>", "<unk>", None
        self.added_tokens: dict[str, int] = {}  # tokens added beyond the model's vocabulary

    file_name = ""  # the vocabulary file a checkpoint folder holds

    @classmethod
    def from_pretrained(cls, path):
        """A folder holding the vocabulary file (and optionally ``tokenizer_config.json``), or the file itself."""
        path = os.fspath(path)
        folder = path if os.path.isdir(path) else None
        tokenizer = cls(os.path.join(path, cls.file_name) if folder else path)
        if folder:
            tokenizer._load_tokenizer_config(folder)
        return tokenizer

    # ---- the engine: subclasses provide these -----------------------------------------------

    def _encode_plain(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode_plain(self, ids: list[int]) -> str:
        """Decode ordinary pieces; drops the dummy-prefix space of a word-initial first piece."""
        raise NotImplementedError

    def _id_to_piece(self, token_id: int) -> str:
        raise NotImplementedError

    def _piece_to_id(self, piece: str) -> int | None:
        raise NotImplementedError

    def _register_added(self, token: str) -> None:
        """Tell the engine about a token added beyond its vocabulary (sentencepiece needs nothing)."""

    # ---- vocabulary and special tokens ------------------------------------------------------

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

    def tokenize(self, text: str) -> list[str]:
        """The pieces of ``text`` (no BOS/EOS)."""
        return self.convert_ids_to_tokens(self.encode(text, bos=False))

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

    # ---- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, bos: bool = True, eos: bool = False, add_special_tokens: bool | None = None,
               parse_special_tokens: bool = False) -> list[int]:
        """Text -> ids, with BOS in front (``bos``) and EOS at the end (``eos``).

        add_special_tokens=False (the Hugging Face spelling) turns both off.
        parse_special_tokens=True makes literal special-token text such as "<s>" become
        its id, as transformers does; by default it is text, as in sentencepiece.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"text must be a str, got {type(text).__name__}")
        if add_special_tokens is False:
            bos = eos = False
        if parse_special_tokens:
            ids = self._encode_parsing_specials(text)
        else:
            ids = self._encode_plain(text)
        return ([self.bos_token_id] if bos else []) + ids + ([self.eos_token_id] if eos else [])

    def _encode_parsing_specials(self, text: str) -> list[int]:
        specials = sorted(set(self.all_special_tokens) | set(self.added_tokens), key=len, reverse=True)
        ids = []
        for part in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
            if part in specials:
                ids.append(self.convert_tokens_to_ids(part))
            elif part:
                ids.extend(self._encode_plain(part))
        return ids

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None) -> list[int]:
        """BOS + ids_0 (+ BOS + ids_1), as transformers' LlamaTokenizer (add_bos_token=True, add_eos_token=False)."""
        out = [self.bos_token_id] + list(token_ids_0)
        return out if token_ids_1 is None else out + [self.bos_token_id] + list(token_ids_1)

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False) -> list[int]:
        """1 where build_inputs_with_special_tokens puts a special token, 0 elsewhere."""
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [1 if i in special else 0 for i in token_ids_0]
        mask = [1] + [0] * len(token_ids_0)
        return mask if token_ids_1 is None else mask + [1] + [0] * len(token_ids_1)

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None) -> list[int]:
        """0 for the first sequence (with its BOS), 1 for the second."""
        first = [0] * (len(token_ids_0) + 1)
        return first if token_ids_1 is None else first + [1] * (len(token_ids_1) + 1)

    def __call__(self, texts, padding=False, padding_side: str | None = None, truncation: bool = False,
                 max_length: int | None = None, return_tensors: str | None = None,
                 add_special_tokens: bool = True) -> BatchEncoding:
        """Encode one text or a batch: ``input_ids`` and ``attention_mask``.

        padding: False, True / "longest", or "max_length". padding_side: "left" (default
        for Llama, what generation needs) or "right". truncation cuts at max_length.
        return_tensors: None (lists), "np" (NumPy), or a backend name ("numpy", "cupy", "strict").
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise TokenizerError(f"padding_side must be 'left' or 'right', got {side!r}")
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise TokenizerError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        if (truncation or padding == "max_length") and (not isinstance(max_length, int) or max_length < 1):
            raise TokenizerError(f"truncation and padding='max_length' need a positive max_length, got {max_length!r}")
        rows = [self.encode(t, bos=add_special_tokens) for t in batch]
        if truncation:
            rows = [r[:max_length] if self.truncation_side == "right" else r[-max_length:] for r in rows]
        masks = [[1] * len(r) for r in rows]
        if padding not in (False, "do_not_pad"):
            if self.pad_token is None:
                raise TokenizerError("padding needs a pad token, and Llama has none: call "
                                     "tokenizer.add_special_tokens({'pad_token': '<pad>'}) and "
                                     "model.resize_token_embeddings(len(tokenizer)), or set tokenizer.pad_token = tokenizer.unk_token")
            width = max_length if padding == "max_length" else max(len(r) for r in rows)
            width = max(width, max(len(r) for r in rows))
            for r, m in zip(rows, masks):
                fill = width - len(r)
                if side == "left":
                    r[:0], m[:0] = [self.pad_token_id] * fill, [0] * fill
                else:
                    r.extend([self.pad_token_id] * fill)
                    m.extend([0] * fill)
        if return_tensors is not None:
            if len({len(r) for r in rows}) > 1:
                raise TokenizerError("the texts encode to different lengths: pass padding=True to make a tensor")
            rows, masks = _to_tensor(rows, return_tensors), _to_tensor(masks, return_tensors)
        elif single:
            rows, masks = rows[0], masks[0]
        return BatchEncoding(input_ids=rows, attention_mask=masks)

    # ---- decoding ---------------------------------------------------------------------------

    def _check_ids(self, ids) -> None:
        for i in ids:
            if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self):
                raise TokenizerError(f"token id {i!r} is outside the vocabulary [0, {len(self)})")

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Ids -> text. Special tokens are skipped by default; with skip_special_tokens=False
        they appear as their text ("<s>"). Only the very start of the text loses the
        dummy-prefix space."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        self._check_ids(ids)
        special = set(self.all_special_ids) | set(self.added_tokens.values())
        if skip_special_tokens:
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

    # ---- the Llama 2 chat format --------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], tokenize: bool = True):
        """The Llama 2 chat format of Meta's ``generation.py``.

        messages: an optional {"role": "system"} first, then alternating "user" and
        "assistant" turns. Each user/assistant exchange is encoded on its own as
        BOS + "[INST] {user} [/INST] {answer} " + EOS; an unanswered last user turn as
        BOS + "[INST] {user} [/INST]", the prompt to generate from. The system prompt
        is wrapped in <<SYS>> tags inside the first user turn.
        Returns ids, or with tokenize=False the same conversation as text, with "<s>" and
        "</s>" standing for BOS and EOS (encoding that text again does not give the ids:
        in sentencepiece "<s>" is text, and each turn gets its own dummy prefix).
        """
        turns = _chat_turns(messages)
        ids, text = [], ""
        for user, answer in turns:
            if answer is None:
                body = f"{B_INST} {user.strip()} {E_INST}"
                ids += self.encode(body, bos=True, eos=False)
                text += self.bos_token + body
            else:
                body = f"{B_INST} {user.strip()} {E_INST} {answer.strip()} "
                ids += self.encode(body, bos=True, eos=True)
                text += self.bos_token + body + self.eos_token
        return ids if tokenize else text

    # ---- saving -----------------------------------------------------------------------------

    def save_vocabulary(self, save_directory, filename_prefix: str | None = None) -> tuple[str]:
        """Copy the vocabulary file into ``save_directory``; returns its path."""
        os.makedirs(save_directory, exist_ok=True)
        name = (filename_prefix + "-" if filename_prefix else "") + os.path.basename(self.path)
        target = os.path.join(save_directory, name)
        if os.path.abspath(target) != os.path.abspath(self.path):
            shutil.copyfile(self.path, target)
        return (target,)

    def save_pretrained(self, save_directory) -> tuple[str, ...]:
        """The vocabulary plus ``tokenizer_config.json`` with the special tokens and added tokens."""
        (vocab,) = self.save_vocabulary(save_directory)
        config = {"bos_token": self.bos_token, "eos_token": self.eos_token, "unk_token": self.unk_token,
                  "pad_token": self.pad_token, "padding_side": self.padding_side, "added_tokens": self.added_tokens,
                  "add_bos_token": True, "add_eos_token": False, "tokenizer_class": type(self).__name__}
        config_path = os.path.join(save_directory, "tokenizer_config.json")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        return vocab, config_path

    def _load_tokenizer_config(self, folder: str) -> None:
        path = os.path.join(folder, "tokenizer_config.json")
        if not os.path.exists(path):
            return
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TokenizerError(f"{path}: not valid JSON ({error})") from None
        for token, token_id in (config.get("added_tokens") or {}).items():
            if isinstance(token_id, int) and self._piece_to_id(token) is None:
                self.added_tokens[token] = token_id
                self._register_added(token)
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = config.get(key)
            if isinstance(value, dict):  # transformers writes AddedToken objects as dicts
                value = value.get("content")
            if isinstance(value, str):
                if self._piece_to_id(value) is None and value not in self.added_tokens:
                    self.added_tokens[value] = len(self)
                    self._register_added(value)
                setattr(self, key, value)
        if config.get("padding_side") in ("left", "right"):
            self.padding_side = config["padding_side"]


def _to_tensor(rows, return_tensors):
    host = np.asarray(rows, dtype=np.int64)
    if return_tensors == "np":
        return host
    from .backend import get_namespace, to_backend
    try:
        return to_backend(host, get_namespace(return_tensors))
    except ValueError:
        raise TokenizerError(f"return_tensors must be None, 'np', 'numpy', 'cupy' or 'strict', got {return_tensors!r}") from None


def _chat_turns(messages) -> list[tuple[str, str | None]]:
    """Check a conversation and pair it into (user, answer-or-None) turns, the system prompt folded in."""
    if not messages:
        raise TokenizerError("a chat needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant"):
            raise TokenizerError(f"message {i} must be a dict with role system/user/assistant and str content, got {m!r}")
        for tag in CHAT_TAGS:
            if tag in m["content"]:
                raise TokenizerError(f"message {i} contains the chat tag {tag!r}, which would break the format")
    messages = list(messages)
    if messages[0]["role"] == "system":
        if len(messages) < 2:
            raise TokenizerError("a system prompt must be followed by a user message")
        system = messages[0]["content"]
        messages = [{"role": messages[1]["role"], "content": B_SYS + system + E_SYS + messages[1]["content"]}] + messages[2:]
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise TokenizerError(f"chat roles must alternate user/assistant (after an optional system), "
                                 f"but turn {i} is {m['role']!r}")
    users, answers = messages[0::2], messages[1::2]
    return [(u["content"], answers[i]["content"] if i < len(answers) else None) for i, u in enumerate(users)]


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


class LlamaTokenizer(_LlamaTokenizerBase):
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


class LlamaTokenizerFast(_LlamaTokenizerBase):
    """The same interface on the ``tokenizers`` library, for checkpoints that ship only ``tokenizer.json``.

    Needs ``pip install tokenizers``. The encoding is whatever the file's pipeline says;
    for Llama 2 files converted by transformers it differs from sentencepiece on text that
    starts with a space (see docs/tokenizer.md).
    """

    file_name = "tokenizer.json"

    def __init__(self, path: str):
        super().__init__(path)
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerError("LlamaTokenizerFast needs the tokenizers package: pip install tokenizers") from None
        if not os.path.isfile(path):
            raise TokenizerError(f"tokenizer file not found: {path}")
        try:
            self.tk = Tokenizer.from_file(path)
        except Exception as error:
            raise TokenizerError(f"{path}: not a tokenizers JSON file ({error})") from None
        self.tk.encode_special_tokens = True  # literal "<s>" is text unless parse_special_tokens=True
        self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)

    def _encode_plain(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids if text else []

    def _decode_plain(self, ids):
        return self.tk.decode(ids, skip_special_tokens=False)

    def _encode_parsing_specials(self, text):
        # The tokenizers library matches its own special tokens in text; let it.
        self.tk.encode_special_tokens = False
        try:
            return self.tk.encode(text, add_special_tokens=False).ids
        finally:
            self.tk.encode_special_tokens = True

    def _register_added(self, token):
        from tokenizers import AddedToken
        self.tk.add_special_tokens([AddedToken(token, special=True)])

    def _id_to_piece(self, token_id):
        return self.tk.id_to_token(token_id)

    def _piece_to_id(self, piece):
        return self.tk.token_to_id(piece)

    def get_vocab(self) -> dict[str, int]:
        return {**self.tk.get_vocab(with_added_tokens=True), **self.added_tokens}
