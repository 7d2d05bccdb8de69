"""The components of a Llama block, each a small pure function: arrays in, arrays out.

One file per idea, each matching a notebook; the backward of each forward sits beside it:

* ``basics``: ``embedding``, ``linear`` (and ``linear_sliced`` for ``pretraining_tp``), ``silu``, ``softmax``,
  and the backwards ``embedding_backward``, ``linear_backward``, ``silu_backward``
* ``norm``: ``rms_norm`` and ``rms_norm_backward``
* ``rope``: rotary position embedding (``inverse_frequencies``, ``rope_cos_sin``, ``apply_rotary``, ...)
  and ``apply_rotary_backward`` (the inverse rotation)
* ``attention``: ``attention_mask`` (causal + padding), grouped-query ``attention`` and ``attention_backward``
* ``mlp``: ``swiglu_mlp`` and ``swiglu_mlp_backward``
* ``loss``: ``cross_entropy``, ``causal_lm_loss`` (transformers' shifted LM loss) and their backwards
* ``lora``: ``lora_delta`` (a LoRA adapter's low-rank update of a projection) and ``lora_delta_backward``

Every function is written against the array namespace of its inputs (``xp``), so it runs on
NumPy, CuPy and the strict Array API stand-in alike. ``from minillama import functional as F``
gives them all. Nothing here knows about speed arrangements (``minillama.fast``).
"""

from .attention import attention, attention_backward, attention_mask
from .basics import embedding, embedding_backward, linear, linear_backward, linear_sliced, silu, silu_backward, softmax
from .lora import lora_delta, lora_delta_backward
from .loss import causal_lm_loss, causal_lm_loss_backward, cross_entropy, cross_entropy_backward
from .mlp import swiglu_mlp, swiglu_mlp_backward
from .norm import rms_norm, rms_norm_backward
from .rope import (apply_rotary, apply_rotary_backward, apply_rotary_interleaved, apply_rotary_interleaved_backward,
                   inverse_frequencies, positions_from_mask, rope_cos_sin, rotate_half)

__all__ = [
    "embedding", "linear", "linear_sliced", "silu", "softmax", "rms_norm", "swiglu_mlp", "attention_mask",
    "attention", "inverse_frequencies", "rope_cos_sin", "rotate_half", "apply_rotary", "apply_rotary_interleaved",
    "positions_from_mask",
    "embedding_backward", "linear_backward", "silu_backward", "rms_norm_backward", "swiglu_mlp_backward",
    "apply_rotary_backward", "apply_rotary_interleaved_backward", "attention_backward",
    "cross_entropy", "cross_entropy_backward", "causal_lm_loss", "causal_lm_loss_backward",
    "lora_delta", "lora_delta_backward",
]
