"""Training presets: a model shape and the hyperparameters that train it, by name.

* ``tiny``: learns a ~200 KB English text in a few minutes on two CPU cores
  (0.9M parameters, vocabulary 512, 4 layers of width 128; 400 steps of 16 x 128 tokens:
  on the first 200 KB of the King James Bible the held-out loss is below 0.7 ln(512) by step
  100 and near its best by step 400; beyond that so small a text is overfit).
* ``demo``: the demo model (6.8M parameters, vocabulary 4096, 6 layers of width 256, 8 query
  heads over 4 key/value heads); 2000 steps of 8 x 256 tokens, about 4 passes over the King
  James Bible, about 45 minutes on two CPU cores (docs/demo_model.md).

The learning-rate schedule (linear warmup, cosine down to ``min_lr``) always runs over the
preset's ``steps``: ``--steps`` says only where a run stops, so a run stopped at step 200 and
resumed to 400 takes exactly the steps of one uninterrupted run to 400.

:func:`memory_needed` estimates what a training step holds (weights, gradients, AdamW's two
moments, one batch's activations), so that a preset too large for this machine is refused
before anything is allocated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import LlamaConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class TrainPreset:
    """A model shape (LlamaConfig fields, the vocabulary included) and how to train it."""

    name: str
    model: dict = field(default_factory=dict)  # LlamaConfig fields; vocab_size is also the tokenizer's size
    seq_len: int = 128  # positions per training window
    batch_size: int = 16  # windows per step
    steps: int = 400  # the schedule's length, and the default number of steps to run
    lr: float = 2e-3  # peak learning rate
    min_lr: float = 2e-4  # where the cosine ends
    warmup_steps: int = 30
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # maximum global gradient norm
    eval_every: int = 100  # steps between validation losses
    save_every: int = 200  # steps between checkpoints (and one at the end)


PRESETS = {
    "tiny": TrainPreset(
        name="tiny",
        model=dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
        seq_len=128, batch_size=16, steps=400, lr=2e-3, min_lr=2e-4, warmup_steps=30,
        eval_every=100, save_every=200),
    "demo": TrainPreset(
        name="demo",
        model=dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512),
        seq_len=256, batch_size=8, steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
        eval_every=200, save_every=250),
}

COMMON_MODEL_FIELDS = dict(rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                           initializer_range=0.02, bos_token_id=1, eos_token_id=2)


def get_preset(name: str) -> TrainPreset:
    """The preset called ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


def model_config(preset: TrainPreset, vocab_size: int | None = None) -> LlamaConfig:
    """The LlamaConfig of a preset's model; ``vocab_size`` (a given tokenizer's) replaces the preset's."""
    fields = {**COMMON_MODEL_FIELDS, **preset.model}
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    fields["max_position_embeddings"] = max(fields["max_position_embeddings"], preset.seq_len)
    return LlamaConfig(**fields, architectures=["LlamaForCausalLM"])


def count_parameters(config: LlamaConfig) -> int:
    """Parameters of a LlamaForCausalLM of this config (biases left out: presets have none)."""
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_layer = 2 * c.hidden_size + 2 * q * c.hidden_size + 2 * kv * c.hidden_size + 3 * c.intermediate_size * c.hidden_size
    tables = 1 if c.tie_word_embeddings else 2
    return tables * c.vocab_size * c.hidden_size + c.num_hidden_layers * per_layer + c.hidden_size


def memory_needed(config: LlamaConfig, batch_size: int, seq_len: int, itemsize: int = 4) -> int:
    """Bytes a training step holds, roughly: 4 copies of the parameters (weights, gradients, two
    moments) and the activations the backward keeps (per layer: the layer input, norms, q, k, v,
    merged heads, MLP intermediates and the attention probabilities; then the logits and their gradient)."""
    c = config
    tokens = batch_size * seq_len
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_layer = tokens * (4 * c.hidden_size + 2 * q + 2 * kv + 3 * c.intermediate_size)
    per_layer += batch_size * c.num_attention_heads * seq_len * seq_len * 2  # probabilities and their gradient
    activations = c.num_hidden_layers * per_layer + 3 * tokens * c.vocab_size
    return itemsize * (4 * count_parameters(config) + activations)


def available_memory() -> int | None:
    """Bytes this machine can still give: MemAvailable from /proc/meminfo, else os.sysconf's free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(config: LlamaConfig, batch_size: int, seq_len: int, name: str) -> int:
    """The estimate of :func:`memory_needed`, refused with a ConfigError when above 90% of available memory."""
    needed = memory_needed(config, batch_size, seq_len)
    available = available_memory()
    if available is not None and needed > 0.9 * available:
        raise ConfigError(f"preset {name!r} needs about {needed / 2**30:.2f} GiB to train (batch {batch_size} x "
                          f"{seq_len} positions), but only {available / 2**30:.2f} GiB of memory is available")
    return needed
