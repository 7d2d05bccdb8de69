"""Saving a tokenizer to a folder, and reading ``tokenizer_config.json`` and its companions back.

``save_pretrained`` writes the files transformers reads: the vocabulary (``tokenizer.model``
or ``tokenizer.json``), ``tokenizer_config.json`` (special tokens, ``add_bos_token`` /
``add_eos_token``, ``added_tokens_decoder``, the chat template) and ``special_tokens_map.json``.
Reading checks every field it uses and names the file and the field when one is malformed.
"""

from __future__ import annotations

import json
import os
import reprlib
import shutil

from ..errors import TokenizerError
from ..files import MiB, read_json_object, read_limited

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
TEMPLATE_LIMIT = MiB  # a chat template is a few KiB
MAX_ADDED = 2**16  # added tokens beyond the vocabulary (Llama 3 reserves 256; every one joins the special-token pattern)


class SavingMixin:
    """``save_vocabulary``, ``save_pretrained`` and the reading of ``tokenizer_config.json``."""

    chat_template: str | None = None  # a Jinja chat template from tokenizer_config.json, if any

    def save_vocabulary(self, save_directory, filename_prefix: str | None = None) -> tuple[str]:
        """Copy the vocabulary file into ``save_directory``; returns its path."""
        os.makedirs(save_directory, exist_ok=True)
        name = (filename_prefix + "-" if filename_prefix else "") + os.path.basename(self.path)
        target = os.path.join(save_directory, name)
        if os.path.abspath(target) != os.path.abspath(self.path):
            shutil.copyfile(self.path, target)
        return (target,)

    def save_pretrained(self, save_directory) -> tuple[str, ...]:
        """The vocabulary, ``tokenizer_config.json`` and ``special_tokens_map.json``, as transformers
        writes them: ``transformers.LlamaTokenizer.from_pretrained`` reads the folder and encodes alike."""
        save_directory = os.fspath(save_directory)
        (vocab,) = self.save_vocabulary(save_directory)
        specials = {key: getattr(self, key) for key in SPECIAL_KEYS if getattr(self, key) is not None}
        decoder = {}
        for token in [self.unk_token, self.bos_token, self.eos_token, self.pad_token, *self.added_tokens]:
            if token is not None:
                decoder[str(self.convert_tokens_to_ids(token))] = {
                    "content": token, "lstrip": False, "normalized": False, "rstrip": False,
                    "single_word": False, "special": True}
        config = {"add_bos_token": self.add_bos_token, "add_eos_token": self.add_eos_token,
                  "added_tokens_decoder": dict(sorted(decoder.items(), key=lambda item: int(item[0]))),
                  **specials, "clean_up_tokenization_spaces": False, "legacy": False,
                  "padding_side": self.padding_side, "tokenizer_class": type(self).__name__}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        paths = [vocab]
        for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
            paths.append(os.path.join(save_directory, name))
            with open(paths[-1], "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, ensure_ascii=False)
        return tuple(paths)

    def _load_tokenizer_config(self, folder: str) -> None:
        """Apply the added tokens of ``tokenizer_config.json``, the tokens of ``special_tokens_map.json``,
        the rest of ``tokenizer_config.json``, then ``chat_template.jinja``; each file is optional."""
        files = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = os.path.join(folder, name)
            if os.path.lexists(path):
                files[name] = (read_json_object(path, TokenizerError), path)
        config, config_path = files.get("tokenizer_config.json", ({}, ""))
        for token, token_id in _added_tokens(config, config_path, self.vocab_size):
            if self._piece_to_id(token) is None and token not in self.added_tokens:
                self.added_tokens[token] = token_id
                self._register_added(token)
        if "special_tokens_map.json" in files:
            self._apply_special_tokens(*files["special_tokens_map.json"])
        if config:
            self._apply_config(config, config_path)
        path = os.path.join(folder, "chat_template.jinja")  # where transformers 5 saves the template
        if os.path.lexists(path):
            try:
                self.chat_template = read_limited(path, TEMPLATE_LIMIT, TokenizerError, "chat template").decode("utf-8")
            except UnicodeDecodeError:
                raise TokenizerError(f"{path}: not UTF-8 text") from None

    def _apply_config(self, config: dict, path: str) -> None:
        self._apply_special_tokens(config, path)
        for key in ("add_bos_token", "add_eos_token"):
            value = config.get(key)
            if value is not None and not isinstance(value, bool):
                raise TokenizerError(f"{path}: {key} must be true or false, got {_show(value)}")
            if value is not None:
                setattr(self, key, value)
        side = config.get("padding_side")
        if side is not None and side not in ("left", "right"):
            raise TokenizerError(f"{path}: padding_side must be 'left' or 'right', got {_show(side)}")
        self.padding_side = side or self.padding_side
        if config.get("chat_template") is not None:
            self.chat_template = _chat_template(config["chat_template"], path)

    def _apply_special_tokens(self, config: dict, path: str) -> None:
        for key in SPECIAL_KEYS:
            if key not in config or config[key] is None:
                continue
            value = config[key]
            if isinstance(value, dict):  # transformers writes AddedToken objects as dicts
                value = value.get("content")
            if not isinstance(value, str) or not value:
                raise TokenizerError(f"{path}: {key} must be a token string or {{\"content\": string}}, "
                                     f"got {_show(config[key])}")
            if self._piece_to_id(value) is None and value not in self.added_tokens:
                self.added_tokens[value] = len(self)
                self._register_added(value)
            setattr(self, key, value)


def _added_tokens(config: dict, path: str, vocab_size: int) -> list[tuple[str, int]]:
    """Tokens beyond the vocabulary, from ``added_tokens_decoder`` (transformers: {"32000":
    {"content": "<pad>", ...}}) or ``added_tokens`` (older minillama: {"<pad>": 32000}), in id order.
    Their ids must follow the vocabulary without a gap."""
    found = {}
    decoder = config.get("added_tokens_decoder")
    if decoder is not None:
        if not isinstance(decoder, dict):
            raise TokenizerError(f"{path}: added_tokens_decoder must be an object, got {_show(decoder)}")
        for key, entry in decoder.items():
            content = entry.get("content") if isinstance(entry, dict) else None
            if not (key.isascii() and key.isdigit()) or not isinstance(content, str) or not content:
                raise TokenizerError(f"{path}: added_tokens_decoder[{_show(key)}] must map an id to "
                                     f"{{\"content\": string}}, got {_show(entry)}")
            found[int(key)] = content
    legacy = config.get("added_tokens")
    if legacy is not None:
        if not isinstance(legacy, dict) or not all(
                isinstance(t, str) and t and type(i) is int and i >= 0 for t, i in legacy.items()):
            raise TokenizerError(f"{path}: added_tokens must map token strings to ids, got {_show(legacy)}")
        found.update({i: t for t, i in legacy.items()})
    beyond = sorted((i, t) for i, t in found.items() if i >= vocab_size)
    if len(beyond) > MAX_ADDED:
        raise TokenizerError(f"{path}: {len(beyond)} added tokens is too many (at most {MAX_ADDED})")
    for expected, (token_id, token) in enumerate(beyond, start=vocab_size):
        if token_id != expected:
            raise TokenizerError(f"{path}: added token {token!r} has id {token_id}, but added ids must "
                                 f"follow the vocabulary of {vocab_size} without a gap (expected {expected})")
    return [(t, i) for i, t in beyond]


def _chat_template(value, path: str) -> str:
    """A template string, or the "default" one of a list of {"name", "template"} (transformers' named templates)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise TokenizerError(f"{path}: chat_template must be a string or a list of {{\"name\", \"template\"}} "
                         f"with a \"default\", got {_show(value)}")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 2, 40, 40, 4, 4


def _show(value) -> str:
    """A short one-line rendering of a bad value for an error message (nesting cut at two levels)."""
    return _SHORT.repr(value)
