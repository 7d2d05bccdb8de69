"""The key/value cache: what generation keeps so each new token costs one position, not the whole sequence.

Attention at a new position needs the keys and values of every earlier position.
They do not change once computed, so each layer stores them, preallocated for
the longest sequence requested, and a decoding step only computes and appends
the new token's. With grouped-query attention only the key/value heads are
stored (``kv_heads``, not ``heads``), which is where GQA saves its memory.
"""

from __future__ import annotations


class KVCache:
    """Per layer, keys and values of shape (batch, kv_heads, max_len, head_dim), filled up to ``length``."""

    def __init__(self, config, batch: int, max_len: int, xp, dtype):
        shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        self.keys = [xp.zeros(shape, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [xp.zeros(shape, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.length = 0  # positions filled so far, the same for every layer

    def update(self, layer: int, k, v):
        """Store the new positions' k, v (batch, kv_heads, new, head_dim); return all positions so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions; {end} were asked for")
        self.keys[layer][:, :, start:end, :] = k
        self.values[layer][:, :, start:end, :] = v
        return self.keys[layer][:, :, :end, :], self.values[layer][:, :, :end, :]

    def advance(self, new: int) -> None:
        """Called once every layer has stored ``new`` positions."""
        self.length += new
