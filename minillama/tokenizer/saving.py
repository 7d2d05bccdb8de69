"""Saving a tokenizer to a folder and reading ``tokenizer_config.json`` back."""

from __future__ import annotations

import json
import os
import shutil

from ..errors import TokenizerError


class SavingMixin:
    """``save_vocabulary``, ``save_pretrained`` and the reading of ``tokenizer_config.json``."""

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
