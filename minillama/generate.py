"""Generation: a prefill pass over the prompt fills the KV cache, then one token per step.

    prompt ids ─► forward(prompt, cache) ─► logits of the last position
                     └─ loop: process_logits ─► choose ─► forward(new token, cache) ─► ...

Rows of a batch are left-padded to one length; each row stops at EOS (later
positions are filled with the pad id) and generation ends when all rows have
stopped or ``max_new_tokens`` are made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .backend import to_backend
from .sampling import check_sampling_args, choose, process_logits


@dataclass
class GenerationOutput:
    sequences: np.ndarray  # (batch, prompt + generated) ids, the prompt included, as transformers returns
    new_tokens: list = field(default_factory=list)  # per row, the generated ids up to and including EOS
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else float("nan")

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else float("nan")


def generate(model, input_ids, attention_mask=None, max_new_tokens: int = 32, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
             eos_token_id: int | list | None = None, pad_token_id: int | None = None, seed: int | None = None,
             on_token=None) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` after each prompt row.

    input_ids: (batch, seq) or (seq,) ids, left-padded with attention_mask 0 where padded.
    temperature 0 is greedy (the default); otherwise the logits pass through repetition
    penalty, temperature, top-k, top-p and min-p, and a token is drawn with ``seed``.
    on_token(step, tokens): called with each step's (batch,) new ids, for streaming.
    """
    check_sampling_args(temperature, top_k, top_p, min_p, repetition_penalty)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    ids = np.asarray(input_ids, dtype=np.int64)
    ids = ids[None, :] if ids.ndim == 1 else ids
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError("the prompt is empty: generation needs at least one token (BOS) to start from")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64).reshape(ids.shape)
    batch, prompt_len = ids.shape
    limit = model.config.max_position_embeddings
    if prompt_len + max_new_tokens > limit:
        raise ValueError(f"prompt ({prompt_len} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's context of {limit} positions")
    eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    rng = np.random.default_rng(seed)
    xp = model.xp

    cache = model.new_cache(batch, prompt_len + max_new_tokens)
    start = time.perf_counter()
    logits = model(ids, attention_mask=mask, cache=cache).logits[:, -1, :]  # (batch, vocab)
    out = GenerationOutput(sequences=ids, prefill_tokens=int(mask.sum()))
    done = np.zeros(batch, dtype=bool)
    new_tokens = [[] for _ in range(batch)]
    step_start = time.perf_counter()
    out.prefill_seconds = step_start - start
    for step in range(max_new_tokens):
        processed = process_logits(logits, to_backend(out.sequences, xp), temperature, top_k, top_p, min_p,
                                   repetition_penalty)
        tokens = choose(processed, rng, greedy=temperature == 0)
        tokens = np.where(done, pad, tokens)  # (batch,)
        for row in np.flatnonzero(~done):
            new_tokens[row].append(int(tokens[row]))
        out.sequences = np.concatenate([out.sequences, tokens[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        out.decode_tokens += int((~done).sum())
        if on_token is not None:
            on_token(step, tokens)
        done |= np.isin(tokens, list(eos))
        if done.all() or step == max_new_tokens - 1:
            break
        logits = model(tokens[:, None], attention_mask=mask, cache=cache).logits[:, -1, :]
    out.decode_seconds = time.perf_counter() - step_start
    out.new_tokens = new_tokens
    return out
