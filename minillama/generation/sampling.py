"""Choosing the next token: small functions that reshape a row of logits, then one draw.

Each function takes logits (batch, vocab) and returns new logits, with the
semantics of the transformers logits processor of the same name; removed tokens
get -inf. :func:`process_logits` casts the logits to float32, then applies them
in transformers' order: repetition penalty, temperature, top-k, top-p, min-p. The draw itself happens on
the host with a seeded NumPy generator, so one seed gives the same tokens on
NumPy and on CuPy (only one vocabulary row per sequence crosses to the host; with a
repetition penalty, generation also sends the seen-token mask, one bool per vocabulary
entry, to the device each step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backend import namespace_of, to_numpy
from ..functional import softmax

NEG_INF = -math.inf


def tokens_seen(previous_ids: np.ndarray, vocab: int) -> np.ndarray:
    """Host-side (batch, vocab) bool mask of the ids each row has seen, for :func:`repetition_penalty`.

    previous_ids: (batch, n) NumPy ids of the prompt and the tokens generated so far.
    """
    seen = np.zeros((previous_ids.shape[0], vocab), dtype=bool)
    np.put_along_axis(seen, previous_ids, True, axis=1)
    return seen


def repetition_penalty(logits, seen, penalty: float):
    """Make tokens already seen less likely: positive logits divided by ``penalty``, negative multiplied.

    logits: (batch, vocab); seen: (batch, vocab) bool, True for ids in the prompt or generated so far.
    """
    xp = namespace_of(logits)
    penalised = xp.where(logits < 0, logits * penalty, logits / penalty)
    return xp.where(seen, penalised, logits)


def temperature(logits, value: float):
    """Divide by the temperature: below 1 sharpens the distribution, above 1 flattens it."""
    return logits / value


def top_k(logits, k: int):
    """Keep the k highest logits of each row (ties with the k-th are kept too)."""
    xp = namespace_of(logits)
    k = min(k, logits.shape[-1])
    kth = xp.sort(logits, axis=-1, descending=True)[:, k - 1:k]  # (batch, 1)
    return xp.where(logits < kth, NEG_INF, logits)


def top_p(logits, p: float, min_tokens_to_keep: int = 1):
    """Nucleus, as transformers' TopPLogitsWarper: drop the least likely tokens while their total is <= 1 - p.

    The tokens are sorted ascending by a stable sort (equal logits keep their index order, so of
    two tied tokens the lower id goes first) and a prefix of that order is removed: those whose
    cumulative probability is <= 1 - p. The ``min_tokens_to_keep`` most likely always stay.
    For four equal logits and p = 0.5, the cumulative sums are .25 .5 .75 1: ids 0 and 1 go.
    """
    xp = namespace_of(logits)
    vocab = logits.shape[-1]
    order = xp.argsort(logits, axis=-1, stable=True)  # (batch, vocab): ids from least to most likely
    ascending = xp.sort(logits, axis=-1, stable=True)
    cumulative = xp.cumulative_sum(softmax(ascending, axis=-1), axis=-1)  # (batch, vocab), never decreasing
    removed = xp.sum(xp.astype(cumulative <= 1 - p, xp.int64), axis=-1, keepdims=True)  # (batch, 1) prefix length
    removed = xp.clip(removed, max=vocab - min_tokens_to_keep)
    rank = xp.argsort(order, axis=-1)  # (batch, vocab): each id's place in the ascending order
    return xp.where(rank < removed, NEG_INF, logits)


def min_p(logits, p: float):
    """Keep tokens whose probability is at least p times that of the most likely token."""
    xp = namespace_of(logits)
    probs = softmax(logits, axis=-1)
    floor = p * xp.max(probs, axis=-1, keepdims=True)
    return xp.where(probs < floor, NEG_INF, logits)


def process_logits(logits, seen=None, temperature_value: float = 1.0, top_k_value: int = 0,
                   top_p_value: float = 1.0, min_p_value: float = 0.0, repetition: float = 1.0):
    """All of the above, in transformers' order, on float32 logits; a value that changes nothing is skipped.

    logits of any float dtype are cast to float32 first, as transformers and Meta's
    generate do: a float16 model's logits would otherwise be divided, summed and
    compared in float16, whose cumulative sum over a 32000-token vocabulary stalls.
    seen: the (batch, vocab) mask of :func:`tokens_seen`, needed when repetition != 1.
    """
    xp = namespace_of(logits)
    logits = xp.astype(logits, xp.float32, copy=False)  # (batch, vocab) float32
    if repetition != 1.0:
        logits = repetition_penalty(logits, seen, repetition)
    if temperature_value not in (0.0, 1.0):
        logits = temperature(logits, temperature_value)
    if top_k_value > 0:
        logits = top_k(logits, top_k_value)
    if top_p_value < 1.0:
        logits = top_p(logits, top_p_value)
    if min_p_value > 0.0:
        logits = min_p(logits, min_p_value)
    return logits


def check_sampling_args(temperature_value, top_k_value, top_p_value, min_p_value, repetition) -> None:
    if not isinstance(temperature_value, (int, float)) or not 0 <= temperature_value < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature_value!r}")
    if not isinstance(top_k_value, int) or top_k_value < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 turns it off), got {top_k_value!r}")
    if not isinstance(top_p_value, (int, float)) or not 0 < top_p_value <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p_value!r}")
    if not isinstance(min_p_value, (int, float)) or not 0 <= min_p_value <= 1:
        raise ValueError(f"min_p must be in [0, 1], got {min_p_value!r}")
    if not isinstance(repetition, (int, float)) or not 0 < repetition < math.inf:
        raise ValueError(f"repetition_penalty must be a finite number > 0, got {repetition!r}")


def choose(logits, rng: np.random.Generator | None, greedy: bool) -> np.ndarray:
    """One token per row: the argmax when greedy, else a draw from softmax(logits) on the host.

    logits: (batch, vocab) on the backend -> (batch,) int64 NumPy array.
    """
    xp = namespace_of(logits)
    if greedy:
        return to_numpy(xp.argmax(logits, axis=-1)).astype(np.int64)
    rows = to_numpy(logits).astype(np.float64)  # one row per sequence crosses to the host
    probs = softmax(rows, axis=-1)  # float64, so each row sums to 1 as closely as rng.choice asks
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs], dtype=np.int64)


@dataclass
class Sampling:
    """How to pick each token; temperature 0 is greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty)
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {self.seed!r}")
        # Plain Python numbers, so a NumPy float64 argument cannot upcast float32 logits.
        self.temperature, self.top_p, self.min_p = float(self.temperature), float(self.top_p), float(self.min_p)
        self.repetition_penalty, self.top_k = float(self.repetition_penalty), int(self.top_k)
