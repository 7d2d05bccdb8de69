"""``model.generate`` with transformers' arguments and defaults, and the ``GenerationConfig`` they come from.

A checkpoint's ``generation_config.json`` holds its generation defaults (Llama 2 chat ships
``do_sample``, ``temperature``, ``top_p``, ``max_length``); without one they come from the
model config (BOS, EOS, pad), as transformers does. ``generate`` merges, as transformers:
the arguments given win over the file, the file wins over transformers' global defaults
(``max_length`` 20, ``do_sample`` False, ``temperature`` 1.0, ``top_k`` 50, ``top_p`` 1.0),
and ``do_sample`` False is greedy whatever temperature, top-k or top-p say. The token loop
itself is :func:`minillama.generation.generate`.
"""

from __future__ import annotations

import json
import os
import tempfile

from .errors import ConfigError
from .files import read_json_object

GENERATION_CONFIG = "generation_config.json"


class GenerationConfig:
    """The generation defaults of a model: every key of ``generation_config.json`` as an attribute.

    Keys the file does not set read as None (``generation_config.top_k``), as in transformers,
    where None means "use the global default".
    """

    def __init__(self, **values):
        self.__dict__.update(values)

    def __getattr__(self, name):  # only called for attributes not set
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    def __eq__(self, other):
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"GenerationConfig({self.to_dict()})"

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_model_config(cls, config) -> "GenerationConfig":
        """What transformers derives from a config.json when a checkpoint has no generation_config.json."""
        values = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
        if config.pad_token_id is not None:
            values["pad_token_id"] = config.pad_token_id
        return cls(_from_model_config=True, **{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_pretrained(cls, folder) -> "GenerationConfig":
        """Read ``generation_config.json`` from a folder (or the file itself)."""
        path = os.fspath(folder)
        if os.path.isdir(path):
            path = os.path.join(path, GENERATION_CONFIG)
        return cls(**read_json_object(path, ConfigError))

    def save_pretrained(self, save_directory) -> str:
        """Write ``generation_config.json`` into ``save_directory`` (made if missing); return its path."""
        folder = os.fspath(save_directory)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, GENERATION_CONFIG)
        fd, partial = tempfile.mkstemp(prefix=GENERATION_CONFIG + ".partial-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
            os.chmod(partial, 0o644)
            os.replace(partial, path)
        except BaseException:
            os.unlink(partial)
            raise
        return path


def generation_config_for(path, config) -> GenerationConfig:
    """The checkpoint's generation_config.json when its folder has one, else the config's defaults."""
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, GENERATION_CONFIG)):
        return GenerationConfig.from_pretrained(path)
    return GenerationConfig.from_model_config(config)
