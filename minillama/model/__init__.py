"""The reference assembly of a Llama model: weights, the forward pass and the KV cache.

* ``weights``: ``LayerWeights`` / ``Weights`` (named projections, eager or lazy), ``LoraAdapter`` and ``load_weights``.
* ``forward``: ``project`` (one projection, with its LoRA adapter if any), ``self_attention``, ``mlp``,
  ``decoder_layer``, ``llama_forward``, and the ``Assembly`` record through which ``minillama.fast``
  replaces a block with a faster equivalent.
* ``cache``: ``KVCache``.

Nothing here imports ``minillama.fast``; the classes users call (``LlamaForCausalLM``, ...) live in
``minillama.modeling``.
"""

from .cache import KVCache
from .forward import (REFERENCE, Assembly, attention_heads, decoder_layer, last_token_index, llama_forward, mlp,
                      output_projection, project, rotary_tables, self_attention)
from .weights import LayerWeights, LoraAdapter, Weights, load_weights, state_dict_names

__all__ = ["KVCache", "Assembly", "REFERENCE", "attention_heads", "output_projection", "project", "self_attention",
           "mlp", "decoder_layer", "rotary_tables", "llama_forward", "last_token_index", "LayerWeights", "LoraAdapter",
           "Weights", "load_weights", "state_dict_names"]
