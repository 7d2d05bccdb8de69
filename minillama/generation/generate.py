"""Generation: a prefill pass over the prompt fills the KV cache, then one token per step.

    prompt ids ─► forward(prompt, cache) ─► logits of the last position
                     └─ loop: process_logits ─► choose ─► forward(new token, cache) ─► ...

Rows of a batch are left-padded to one length; each row stops at EOS or at a
stop string (later positions are filled with the pad id), and generation ends
when all rows have stopped or ``max_new_tokens`` are made. What carries from one
step to the next (cache, mask, ids so far, done rows, seen ids, random generator)
is one :class:`DecodeState`.

* :func:`generate` works on ids and returns a :class:`GenerationOutput`.
* :func:`generate_text` takes prompt strings and a tokenizer and returns texts.
* :func:`stream_text` yields the text of one prompt piece by piece as it is made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..backend import to_backend, to_numpy
from .sampling import Sampling, choose, process_logits, tokens_seen


@dataclass
class GenerationOutput:
    sequences: np.ndarray  # (batch, prompt + generated) ids, the prompt included, as transformers returns
    new_tokens: list = field(default_factory=list)  # per row, the generated ids up to and including EOS
    texts: list | None = None  # per row, the generated text (generate_text only)
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


@dataclass
class DecodeState:
    """What one generation carries from step to step; generate, generate_text and stream_text share it.

    A row that stops (at EOS here, at a stop string in the text functions, which set
    ``done`` themselves) is given ``pad`` from then on and its new tokens are no longer recorded.
    """

    cache: object  # the model's KV cache: every position fed so far
    mask: np.ndarray  # (batch, positions) on the host: 1 for real tokens, 0 for left padding
    out: GenerationOutput  # the sequences so far, each row's new tokens, the timings
    sampling: Sampling
    eos: set  # the ids that end a row
    pad: int  # the id a finished row receives
    done: np.ndarray | None = None  # (batch,) bool, rows that have stopped (default: none)
    rng: np.random.Generator | None = None  # the draws (default: seeded by sampling.seed)
    seen: np.ndarray | None = None  # (batch, vocab) bool, ids each row has seen (repetition penalty only)
    padded: bool = field(init=False)  # whether any row is left-padded

    def __post_init__(self):
        batch = self.out.sequences.shape[0]
        self.done = np.zeros(batch, dtype=bool) if self.done is None else self.done
        self.rng = np.random.default_rng(self.sampling.seed) if self.rng is None else self.rng
        # Without padding the mask is all ones: passing none lets the model count positions and skip masking.
        self.padded = not self.mask.all()

    def model_mask(self):
        return self.mask if self.padded else None


def _prefill(model, state: DecodeState, ids, history):
    """Feed the prompt (batch, seq); the logits (batch, vocab) of its last position."""
    start = time.perf_counter()
    logits = model(ids, attention_mask=state.model_mask(), cache=state.cache, logits_to_keep=1).logits[:, -1, :]
    state.out.prefill_tokens += int(state.mask[:, -ids.shape[1]:].sum())
    state.out.prefill_seconds += time.perf_counter() - start
    if state.sampling.repetition_penalty != 1.0:  # the ids each row has seen, kept on the host
        previous = np.concatenate([history, ids], axis=1) if history is not None else ids
        state.seen = tokens_seen(previous, logits.shape[-1])
    return logits


def _next_tokens(model, state: DecodeState, logits) -> np.ndarray:
    """Choose each row's next token from its logits (batch, vocab) and record it; (batch,) ids."""
    s, greedy = state.sampling, state.sampling.temperature == 0
    seen = to_backend(state.seen, model.xp) if state.seen is not None else None
    if greedy:  # top-k, top-p and min-p always keep the most likely token: only the penalty matters
        processed = process_logits(logits, seen, repetition=s.repetition_penalty)
    else:
        processed = process_logits(logits, seen, s.temperature, s.top_k, s.top_p, s.min_p, s.repetition_penalty)
    tokens = np.where(state.done, state.pad, choose(processed, state.rng, greedy=greedy))
    live = np.flatnonzero(~state.done)  # rows still generating
    state.out.decode_tokens += len(live)
    if state.seen is not None:
        state.seen[np.arange(len(tokens)), tokens] = True
    state.out.sequences = np.concatenate([state.out.sequences, tokens[:, None]], axis=1)
    if state.padded:
        state.mask = np.concatenate([state.mask, np.ones((len(tokens), 1), dtype=np.int64)], axis=1)
    for row in live:
        state.out.new_tokens[row].append(int(tokens[row]))
    state.done |= [int(t) in state.eos for t in tokens]  # a set lookup: np.isin is slow for a few ids
    return tokens


def _decode(model, state: DecodeState, ids, max_new_tokens: int, history=None):
    """Yield each step's (batch,) new tokens, until every row is done or max_new_tokens are made.

    The caller may mark rows done between steps (stop strings).
    """
    logits = _prefill(model, state, ids, history)
    start = time.perf_counter()
    try:
        for step in range(max_new_tokens):
            tokens = _next_tokens(model, state, logits)
            yield tokens
            if state.done.all() or step == max_new_tokens - 1:
                break
            logits = model(tokens[:, None], attention_mask=state.model_mask(), cache=state.cache,
                           logits_to_keep=1).logits[:, -1, :]  # (batch, vocab)
    finally:
        state.out.decode_seconds += time.perf_counter() - start


def _host_ids(values) -> np.ndarray:
    if isinstance(values, (list, tuple, np.ndarray)):
        return np.asarray(values, dtype=np.int64)
    return to_numpy(values).astype(np.int64)


def _prepare_prompt(model, input_ids, attention_mask, max_new_tokens, cache):
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    # Generation keeps the ids on the host (one row of new ids per step); an array from the
    # GPU is brought back explicitly, never by an implicit np.asarray (which CuPy refuses).
    ids = _host_ids(input_ids)
    ids = ids[None, :] if ids.ndim == 1 else ids
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError("the prompt is empty: generation needs at least one token (BOS) to start from")
    past = cache.length if cache is not None else 0
    if attention_mask is None:
        mask = np.ones((ids.shape[0], past + ids.shape[1]), dtype=np.int64)
    else:
        mask = _host_ids(attention_mask)
    limit = model.config.max_position_embeddings
    if past + ids.shape[1] + max_new_tokens > limit:
        raise ValueError(f"prompt ({past + ids.shape[1]} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's context of {limit} positions")
    if cache is None:
        cache = model.new_cache(ids.shape[0], ids.shape[1] + max_new_tokens)
    return ids, mask, cache


def _stop_ids(model, eos_token_id):
    if eos_token_id is None:
        eos_token_id = model.config.eos_token_id
    return set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))


def _pad_id(eos: set) -> int:
    """The id finished rows receive when none is given: the smallest EOS id (0 without one)."""
    return min(eos) if eos else 0


def generate(model, input_ids, attention_mask=None, max_new_tokens: int = 32, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
             eos_token_id: int | list | None = None, pad_token_id: int | None = None, seed: int | None = None,
             cache=None, history=None) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` after each prompt row.

    input_ids: (batch, seq) or (seq,) ids, left-padded with attention_mask 0 where padded.
    temperature 0 is greedy (the default); otherwise the logits pass through repetition
    penalty, temperature, top-k, top-p and min-p, and a token is drawn with ``seed``.
    eos_token_id: the id(s) that end a row (default: the config's; [] never stops).
    cache, history: continue a conversation: ``cache`` already holds ``history`` (batch, past) ids,
    and input_ids are the tokens that follow; attention_mask then covers history and prompt.
    """
    sampling = Sampling(temperature, top_k, top_p, min_p, repetition_penalty, seed)
    ids, mask, cache = _prepare_prompt(model, input_ids, attention_mask, max_new_tokens, cache)
    eos = _stop_ids(model, eos_token_id)
    pad = pad_token_id if pad_token_id is not None else _pad_id(eos)
    state = DecodeState(cache, mask, GenerationOutput(ids, [[] for _ in range(ids.shape[0])]), sampling, eos, pad)
    for _ in _decode(model, state, ids, max_new_tokens, history):
        pass
    return state.out


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """The text up to the first stop string, and whether one was found."""
    cuts = [text.index(s) for s in stop if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def _encode_prompts(tokenizer, prompts):
    rows = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # hidden by the mask anyway
    ids = np.array([[pad] * (width - len(r)) + r for r in rows], dtype=np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
    return ids, mask


def _check_prompts(prompts):
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts or any(isinstance(p, str) and not p for p in prompts):
        raise ValueError("the prompt is empty: give some text to continue")
    return list(prompts)


def generate_text(model, tokenizer, prompts, max_new_tokens: int = 32, stop: list[str] | None = None,
                  **sampling) -> GenerationOutput:
    """Generate from one prompt or a batch of prompt strings; ``.texts`` holds each row's new text.

    stop: strings that end a row; the text is cut before the first one.
    sampling: temperature, top_k, top_p, min_p, repetition_penalty, seed.
    """
    prompts = _check_prompts(prompts)
    stop = list(stop or [])
    ids, mask = _encode_prompts(tokenizer, prompts)
    ids, mask, cache = _prepare_prompt(model, ids, mask, max_new_tokens, None)
    eos = _stop_ids(model, tokenizer.eos_token_id)
    out = GenerationOutput(sequences=ids, new_tokens=[[] for _ in prompts])
    state = DecodeState(cache, mask, out, Sampling(**sampling), eos, _pad_id(eos))
    for _ in _decode(model, state, ids, max_new_tokens):
        if stop:
            for row in np.flatnonzero(~state.done):  # has a stop string appeared?
                state.done[row] = _cut_at_stop(tokenizer.decode(out.new_tokens[row]), stop)[1]
    prompt_rows = [list(row[m == 1]) for row, m in zip(ids, mask)]
    out.texts = [_cut_at_stop(continuation(tokenizer, p, t), stop)[0] for p, t in zip(prompt_rows, out.new_tokens)]
    return out


def continuation(tokenizer, prompt_ids, new_ids) -> str:
    """The text the new ids add after the prompt (so a word-initial first token keeps its space)."""
    eos = {tokenizer.eos_token_id}
    new_ids = [i for i in new_ids if i not in eos]
    return tokenizer.decode(list(prompt_ids) + new_ids)[len(tokenizer.decode(list(prompt_ids))):]


def stream_text(model, tokenizer, prompt, max_new_tokens: int = 32, stop: list[str] | None = None,
                cache=None, history=None, stats: GenerationOutput | None = None, **sampling):
    """Yield the new text of one prompt (a string, or ids) piece by piece as it is generated.

    The pieces add up to exactly the text ``generate_text`` returns: spaces come out
    right (see StreamDecoder), and text that might be the start of a stop string is
    held back until it is clear. ``stats``, if given, receives the ids and timings.
    cache, history: continue from a cache that already holds ``history`` ids (chat).
    """
    (prompt,) = _check_prompts([prompt])
    stop = list(stop or [])
    ids = np.asarray([tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)], dtype=np.int64)
    ids, mask, cache = _prepare_prompt(model, ids, None, max_new_tokens, cache)
    eos = _stop_ids(model, tokenizer.eos_token_id)
    out = stats if stats is not None else GenerationOutput(sequences=ids)
    out.sequences, out.new_tokens = ids, [[]]
    state = DecodeState(cache, mask, out, Sampling(**sampling), eos, _pad_id(eos))
    decoder = tokenizer.stream_decoder()
    decoder.prime(ids[0])
    text, emitted = "", 0
    for tokens in _decode(model, state, ids, max_new_tokens, history):
        if int(tokens[0]) in eos:
            break
        text += decoder.step(int(tokens[0]))
        cut, found = _cut_at_stop(text, stop)
        if found:
            state.done[0] = True
            text = cut
            break
        # Hold back a tail that could still grow into a stop string.
        safe = len(text) - max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    if not state.done[0] or not stop:
        text += decoder.flush()
        text = _cut_at_stop(text, stop)[0]
    if len(text) > emitted:
        yield text[emitted:]
