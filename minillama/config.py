"""LlamaConfig: every hyper-parameter that changes the math, read from an HF ``config.json``.

Field names and defaults are those of Hugging Face's ``LlamaConfig``, so a
``config.json`` written by ``transformers`` (4.x with ``rope_scaling`` and
``rope_theta``, or 5.x with ``rope_parameters``) or shipped with a Llama
checkpoint reads the same here. :meth:`LlamaConfig.validate` checks every field
and names the one that is wrong.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from .errors import ConfigError
from .files import read_json_object

POSITIVE_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "max_position_embeddings", "pretraining_tp", "num_labels")

# The rope scaling types minillama implements, with the keys each one needs.
ROPE_SCALING_KEYS = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (plain multi-head attention)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "linear" | "dynamic" | "llama3", "factor": ..., ...}
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    pretraining_tp: int = 1
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 2
    num_labels: int = 2  # for LlamaForSequenceClassification
    initializer_range: float = 0.02  # std of the normal init of new weights (resize_token_embeddings, training)
    architectures: list | None = None
    torch_dtype: str | None = None  # the dtype the checkpoint was saved in, for information only
    source: str = field(default="<dict>", repr=False, compare=False)  # where the config was read from, for errors

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and _is_int(self.hidden_size) and _is_int(self.num_attention_heads):
            if self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads == 0:
                self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    # ---- reading --------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<dict>") -> "LlamaConfig":
        """Build a config from the dict of a ``config.json``; unknown keys are ignored."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: a config must be a JSON object, got {type(raw).__name__}")
        raw = dict(raw)
        rope_theta = raw.get("rope_theta", 10000.0)
        rope_scaling = raw.get("rope_scaling")
        # transformers 5 writes one "rope_parameters" dict that holds rope_theta and the scaling.
        rope_parameters = raw.get("rope_parameters")
        if rope_parameters is not None and not isinstance(rope_parameters, dict):
            raise ConfigError(f"{source}: rope_parameters must be an object or null, got {_short(rope_parameters)}")
        if isinstance(rope_parameters, dict):
            rope_theta = rope_parameters.get("rope_theta", rope_theta)
            rope_scaling = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
        raw["rope_theta"] = rope_theta
        raw["rope_scaling"] = _normalise_rope_scaling(rope_scaling, source)
        if "id2label" in raw and "num_labels" not in raw:
            if not isinstance(raw["id2label"], (dict, list)):
                raise ConfigError(f"{source}: id2label must be an object, got {_short(raw['id2label'])}")
            raw["num_labels"] = len(raw["id2label"])
        if "torch_dtype" not in raw and "dtype" in raw:
            raw["torch_dtype"] = raw["dtype"]
        names = {f.name for f in dataclasses.fields(cls)} - {"source"}
        return cls(**{k: v for k, v in raw.items() if k in names}, source=source)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "LlamaConfig":
        path = os.fspath(path)
        return cls.from_dict(read_json_object(path, ConfigError), source=path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "LlamaConfig":
        """Read ``config.json`` from a checkpoint folder (or the file itself)."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        return cls.from_json_file(path)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        d["model_type"] = "llama"
        return d

    # ---- derived sizes --------------------------------------------------------------------

    @property
    def num_kv_groups(self) -> int:
        """How many query heads share one key/value head (1 for MHA, num_attention_heads for MQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    # ---- validation -----------------------------------------------------------------------

    def _fail(self, message: str):
        raise ConfigError(f"{self.source}: {message}")

    def _validate_token_ids(self) -> None:
        if self.pad_token_id is not None and (not _is_int(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size):
            self._fail(f"pad_token_id must be None or in [0, vocab_size={self.vocab_size}), got {_short(self.pad_token_id)}")
        if self.bos_token_id is not None and not _is_token_id(self.bos_token_id):
            self._fail(f"bos_token_id must be a non-negative integer or null, got {_short(self.bos_token_id)}")
        eos = self.eos_token_id
        if eos is not None and not (_is_token_id(eos) or (isinstance(eos, list) and all(_is_token_id(t) for t in eos))):
            self._fail(f"eos_token_id must be a non-negative integer, a list of them, or null, got {_short(eos)}")

    def validate(self) -> None:
        """Check every field; raise ConfigError naming the first bad one."""
        for name in POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                self._fail(f"{name} must be a positive integer, got {_short(value)}")
        if self.head_dim is None:
            self._fail(f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                       f"({self.num_attention_heads}); set head_dim explicitly")
        if not _is_int(self.head_dim) or self.head_dim < 2 or self.head_dim % 2:
            self._fail(f"head_dim must be a positive even integer (rotary embeddings rotate pairs), got {_short(self.head_dim)}")
        if self.num_attention_heads % self.num_key_value_heads:
            self._fail(f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                       f"num_key_value_heads ({self.num_key_value_heads})")
        if self.hidden_act != "silu":
            self._fail(f"hidden_act must be 'silu' for Llama, got {_short(self.hidden_act)}")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            if not _is_positive_number(getattr(self, name)):
                self._fail(f"{name} must be a finite positive number, got {_short(getattr(self, name))}")
        for name in ("attention_bias", "mlp_bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                self._fail(f"{name} must be true or false, got {_short(getattr(self, name))}")
        self._validate_token_ids()
        for name in ("torch_dtype", "architectures"):
            value = getattr(self, name)
            wanted = str if name == "torch_dtype" else list
            if value is not None and not (isinstance(value, wanted) and (wanted is str or all(isinstance(v, str) for v in value))):
                self._fail(f"{name} must be {'a string' if wanted is str else 'a list of strings'} or null, got {_short(value)}")
        if self.pretraining_tp > 1:
            for name in ("intermediate_size", "vocab_size"):
                if getattr(self, name) % self.pretraining_tp:
                    self._fail(f"pretraining_tp ({self.pretraining_tp}) must divide {name} ({getattr(self, name)})")
            if (self.num_attention_heads * self.head_dim) % self.pretraining_tp or \
               (self.num_key_value_heads * self.head_dim) % self.pretraining_tp:
                self._fail(f"pretraining_tp ({self.pretraining_tp}) must divide the q/k/v projection sizes")
        self.rope_scaling = _normalise_rope_scaling(self.rope_scaling, self.source)
        # Plain Python numbers from here on: a NumPy float64 (a subclass of float) would turn
        # float32 arithmetic into float64 wherever it meets an array (NumPy 2 promotion).
        self.rms_norm_eps, self.rope_theta = float(self.rms_norm_eps), float(self.rope_theta)
        self.initializer_range = float(self.initializer_range)
        if self.rope_scaling is not None:
            self.rope_scaling = {k: float(v) if _is_number(v) and not isinstance(v, int) else v
                                 for k, v in self.rope_scaling.items()}

    # ---- writing --------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``config.json`` into ``save_directory`` (made if missing); return its path.

        The file holds :meth:`to_dict` laid out as transformers 5 writes it (``rope_parameters``,
        ``dtype``, ``id2label`` for a classifier's labels) and also the keys transformers 4 reads
        (``rope_theta``, ``rope_scaling``, ``torch_dtype``), which transformers 5 reads consistently.
        The file is written under a temporary name and renamed, so it is never half-written.
        """
        import json
        import tempfile
        folder = os.fspath(save_directory)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise NotADirectoryError(f"{folder}: is a file; save_pretrained needs a folder")
        os.makedirs(folder, exist_ok=True)
        d = self.to_dict()
        d["rope_parameters"] = {"rope_theta": self.rope_theta, **(self.rope_scaling or {"rope_type": "default"})}
        if self.torch_dtype is not None:
            d["dtype"] = self.torch_dtype
        else:
            d.pop("torch_dtype")
        if self.architectures is None:
            d.pop("architectures")
        labels = d.pop("num_labels")
        if labels != 2:  # transformers keeps the label count as id2label / label2id
            d["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
            d["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
        path = os.path.join(folder, "config.json")
        fd, partial = tempfile.mkstemp(prefix="config.json.partial-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(dict(sorted(d.items())), f, indent=2)
                f.write("\n")
            os.chmod(partial, 0o644)  # mkstemp made it private
            os.replace(partial, path)
        except BaseException:
            os.unlink(partial)
            raise
        return path


def _normalise_rope_scaling(scaling, source: str) -> dict | None:
    """Return None for plain RoPE, else a dict with "rope_type" and the keys that type needs."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ConfigError(f"{source}: rope_scaling must be a dict or null, got {_short(scaling)}")
    scaling = dict(scaling)
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    if rope_type == "default":
        return None
    if not isinstance(rope_type, str) or rope_type not in ROPE_SCALING_KEYS:
        raise ConfigError(f"{source}: unknown rope_scaling type {_short(rope_type)}; "
                          f"minillama supports {sorted(ROPE_SCALING_KEYS)}")
    for key in ROPE_SCALING_KEYS[rope_type]:
        if not _is_positive_number(scaling.get(key)):
            raise ConfigError(f"{source}: rope_scaling type {rope_type!r} needs a finite positive number "
                              f"rope_scaling[{key!r}], got {_short(scaling.get(key))}")
    if rope_type == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ConfigError(f"{source}: rope_scaling['high_freq_factor'] must exceed rope_scaling['low_freq_factor']")
    return {"rope_type": rope_type, **scaling}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_positive_number(value) -> bool:
    """A finite number above zero (not a bool, not NaN, not infinity: JSON's 1e999 reads as infinity)."""
    return _is_number(value) and (isinstance(value, int) or math.isfinite(value)) and value > 0


def _is_token_id(value) -> bool:
    return _is_int(value) and value >= 0


def _short(value, limit: int = 60) -> str:
    """repr(value), cut to ``limit`` characters: a message stays one short line whatever a file holds."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
