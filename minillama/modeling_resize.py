"""``model.resize_token_embeddings``: more (or fewer) vocabulary rows, with transformers 5's initialisation.

When tokens are added (``tokenizer.add_special_tokens``), the embedding table and an untied
LM head grow new rows at the end; shrinking drops the last rows. New rows are made as
transformers makes them:

* ``mean_resizing=True`` (the default): drawn from a normal distribution with the old rows'
  mean and 1e-9 times their covariance, so each new row is the mean row up to a tiny jitter
  and the next-token distribution barely changes (https://nlp.stanford.edu/~johnhew/vocab-expansion.html).
  When that covariance is not positive definite (fewer rows than columns, say) every new row
  is exactly the mean.
* ``mean_resizing=False``: normal with mean 0 and std ``config.initializer_range`` (from config.json,
  0.02 by default), transformers' default initialisation.

The draws come from ``numpy.random.default_rng(seed)`` (seed 0 unless given), the embedding's
first and then the LM head's, so a resize is the same on every run and every backend.
"""

from __future__ import annotations

import numpy as np

from .backend import namespace_of, to_backend, to_numpy
from .fast.fused import arrange_head

COVARIANCE_SCALE = 1e-9  # transformers' epsilon: new rows stay very close to the mean


def new_vocab_size(old: int, new_num_tokens, pad_to_multiple_of) -> int:
    """The row count asked for: ``new_num_tokens`` (or ``old``) rounded up to ``pad_to_multiple_of``."""
    if new_num_tokens is not None and (not isinstance(new_num_tokens, int) or isinstance(new_num_tokens, bool)
                                       or new_num_tokens < 1):
        raise ValueError(f"new_num_tokens must be a positive integer or None, got {new_num_tokens!r}")
    if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int)
                                           or isinstance(pad_to_multiple_of, bool) or pad_to_multiple_of < 1):
        raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of!r}")
    size = old if new_num_tokens is None else new_num_tokens
    if pad_to_multiple_of is not None:
        size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
    return size


def mean_rows(old: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` rows drawn from N(mean, 1e-9 * covariance) of the rows of ``old``, or the mean itself
    when that covariance is not positive definite. old: (rows, hidden) -> (count, hidden) float32."""
    table = np.ascontiguousarray(old, dtype=np.float32)  # one memory layout: the same sums on every backend
    mean = table.mean(axis=0)  # (hidden,)
    centered = table - mean
    covariance = centered.T @ centered / table.shape[0]  # (hidden, hidden)
    try:
        lower = np.linalg.cholesky(COVARIANCE_SCALE * covariance)  # fails unless positive definite
    except np.linalg.LinAlgError:
        return np.tile(mean, (count, 1))
    noise = rng.standard_normal((count, table.shape[1])).astype(np.float32)
    return mean + noise @ lower.T


def resized_table(table, size: int, mean_resizing: bool, std: float, rng: np.random.Generator):
    """The (vocab, hidden) ``table`` with ``size`` rows: the first ones kept, new ones initialised."""
    host = to_numpy(table)
    old = host.shape[0]
    if size <= old:
        rows = host[:size]
    elif mean_resizing:
        rows = np.concatenate([host, mean_rows(host, size - old, rng).astype(host.dtype)], axis=0)
    else:
        added = rng.normal(0.0, std, (size - old, host.shape[1])).astype(host.dtype)
        rows = np.concatenate([host, added], axis=0)
    return to_backend(np.ascontiguousarray(rows), namespace_of(table))


def resize_token_embeddings(model, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing: bool = True,
                            seed: int = 0):
    """Resize ``model``'s vocabulary (embedding, untied LM head, ``config.vocab_size``); return the embedding."""
    w, config = model.weights, model.config
    if new_num_tokens is None and pad_to_multiple_of is None:
        return w.embed_tokens
    size = new_vocab_size(w.embed_tokens.shape[0], new_num_tokens, pad_to_multiple_of)
    if w.lazy_dtype is not None:
        raise ValueError("resize_token_embeddings needs the weights in memory: load with lazy=False")
    if size == w.embed_tokens.shape[0]:
        config.vocab_size = size
        return w.embed_tokens
    rng = np.random.default_rng(seed)
    std = config.initializer_range
    tied = w.lm_head is w.embed_tokens
    w.embed_tokens = resized_table(w.embed_tokens, size, mean_resizing, std, rng)
    if tied:
        w.lm_head = w.embed_tokens
    elif w.lm_head is not None:
        w.lm_head = resized_table(w.lm_head, size, mean_resizing, std, rng)
        if model.assembly.arrange is not None:
            arrange_head(w, config)  # the speed layout the head had (column-major on NumPy)
    config.vocab_size = size
    if config.pad_token_id is not None and config.pad_token_id >= size:
        config.pad_token_id = None  # the pad token was among the rows dropped
    return w.embed_tokens
