"""``model.generate`` with transformers' arguments and defaults, and the ``GenerationConfig`` they come from.

A checkpoint's ``generation_config.json`` holds its generation defaults (Llama 2 chat ships
``do_sample``, ``temperature``, ``top_p``, ``max_length``); without one they come from the
model config (BOS, EOS, pad), as transformers does. ``generate`` merges, as transformers:
the arguments given win over the file, the file wins over transformers' global defaults
(``max_length`` 20, ``do_sample`` False, ``temperature`` 1.0, ``top_k`` 50, ``top_p`` 1.0),
and ``do_sample`` False is greedy whatever temperature, top-k or top-p say. A max_length
that nobody set counts new tokens (20 after the prompt, within the context), as in
transformers 5; one that is set counts the prompt too. The token loop itself is
:func:`minillama.generation.generate`.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .backend import to_numpy
from .errors import ConfigError
from .files import read_json_object
from .generation import generate as generate_ids  # the token loop

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


# transformers' global defaults for the settings minillama implements (GenerationConfig._get_default_generation_params).
DEFAULTS = {"max_length": 20, "max_new_tokens": None, "do_sample": False, "temperature": 1.0, "top_k": 50,
            "top_p": 1.0, "min_p": None, "repetition_penalty": 1.0, "eos_token_id": None, "pad_token_id": None}
# transformers arguments accepted only at the value that asks for what minillama does (no beams, ids returned).
ONLY_DEFAULT = {"num_beams": 1, "num_return_sequences": 1, "return_dict_in_generate": False, "use_cache": True,
                "output_scores": False, "output_logits": False, "output_attentions": False,
                "output_hidden_states": False}


def _set_values(values) -> dict:
    """The settings a generation config (ours, transformers', a dict or None) sets, None ones left out."""
    if values is None:
        return {}
    raw = values if isinstance(values, dict) else values.to_dict()
    return {k: v for k, v in raw.items() if k in DEFAULTS and v is not None}


def merged_settings(model, generation_config, arguments: dict) -> tuple[dict, bool]:
    """Each setting from the arguments, else ``generation_config``, else the model's, else transformers'
    default; and whether max_length is that default (then it counts new tokens, as transformers does)."""
    for name, value in arguments.pop("extra").items():
        if name not in ONLY_DEFAULT:
            raise ValueError(f"generate() got an unsupported argument {name!r}")
        if value != ONLY_DEFAULT[name]:
            raise ValueError(f"generate() supports only {name}={ONLY_DEFAULT[name]!r}, got {value!r}")
    layers = [_set_values(model.generation_config), _set_values(generation_config),
              {k: v for k, v in arguments.items() if v is not None}]
    settings = dict(DEFAULTS)
    for layer in layers:
        settings.update(layer)
    return settings, not any("max_length" in layer for layer in layers)


def new_token_count(settings: dict, default_length: bool, prompt_length: int, max_positions: int) -> int:
    """How many tokens to make: max_new_tokens, else max_length minus the prompt (transformers' rules)."""
    if settings["max_new_tokens"] is not None:
        return settings["max_new_tokens"]
    total = settings["max_length"]
    if default_length:  # by default transformers makes 20 new tokens, within the model's context
        total = min(total + prompt_length, max_positions)
    if not isinstance(total, int) or isinstance(total, bool) or prompt_length >= total:
        raise ValueError(f"input_ids has {prompt_length} tokens, but max_length is {total!r}: "
                         "increase max_length or, better, set max_new_tokens")
    return total - prompt_length


def stop_and_pad_ids(settings: dict) -> tuple[list, int | None]:
    """The EOS ids (a list, maybe empty) and the pad id: pad_token_id, else the first EOS (as transformers)."""
    eos = settings["eos_token_id"]
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    pad = settings["pad_token_id"]
    return eos, (pad if pad is not None else (eos[0] if eos else None))


def default_attention_mask(ids: np.ndarray, pad, eos: list) -> np.ndarray:
    """transformers' mask when none is given: 0 at pad ids, if the pad id is in the input and is not an EOS."""
    if pad is not None and pad not in eos and bool((ids == pad).any()):
        return (ids != pad).astype(np.int64)
    return np.ones(ids.shape, dtype=np.int64)


def sampling_settings(settings: dict) -> dict:
    """The keyword arguments of ``minillama.generation.generate`` that say how to choose each token."""
    if not settings["do_sample"]:  # greedy: the argmax, whatever temperature or top-k/top-p say
        return {"temperature": 0.0, "repetition_penalty": settings["repetition_penalty"]}
    if not isinstance(settings["temperature"], (int, float)) or not settings["temperature"] > 0:
        raise ValueError(f"temperature must be > 0 when do_sample is true (do_sample=False is greedy), "
                         f"got {settings['temperature']!r}")
    return {"temperature": settings["temperature"], "top_k": settings["top_k"], "top_p": settings["top_p"],
            "min_p": settings["min_p"] or 0.0, "repetition_penalty": settings["repetition_penalty"]}


def generate(model, input_ids, attention_mask=None, generation_config=None, seed=None, **arguments) -> np.ndarray:
    """transformers' ``model.generate`` on a minillama model: (batch, prompt + new) ids, a NumPy array.

    arguments: max_new_tokens, max_length, do_sample, temperature, top_k, top_p, min_p,
    repetition_penalty, eos_token_id, pad_token_id (None: from ``generation_config``, then the
    model's generation config, then transformers' defaults); ``extra``: other transformers arguments.
    """
    settings, default_length = merged_settings(model, generation_config, arguments)
    ids = input_ids if isinstance(input_ids, (list, tuple, np.ndarray)) else to_numpy(input_ids)
    ids = np.asarray(ids, dtype=np.int64)
    ids = ids[None, :] if ids.ndim == 1 else ids
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape (batch, seq) with seq >= 1, got {tuple(ids.shape)}")
    eos, pad = stop_and_pad_ids(settings)
    if attention_mask is None:
        attention_mask = default_attention_mask(ids, pad, eos)
    count = new_token_count(settings, default_length, ids.shape[1], model.config.max_position_embeddings)
    out = generate_ids(model, ids, attention_mask=attention_mask, max_new_tokens=count, eos_token_id=eos,
                       pad_token_id=pad if pad is not None else 0, seed=seed, **sampling_settings(settings))
    return out.sequences
