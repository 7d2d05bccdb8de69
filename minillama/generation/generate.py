"""Generation: a prefill pass over the prompt fills the KV cache, then one token per step.

    prompt ids ─► forward(prompt, cache) ─► logits of the last position
                     └─ loop: process_logits ─► choose ─► forward(new token, cache) ─► ...

Rows of a batch are left-padded to one length; each row stops at EOS or at a
stop string (later positions are filled with the pad id), and generation ends
when all rows have stopped or ``max_new_tokens`` are made.

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


def _steps(model, ids, mask, max_new_tokens, sampling: Sampling, eos, pad, done, out, cache, history):
    """Yield each step's (batch,) new tokens. ``done`` (batch,) is shared with the caller,
    which may mark rows finished (stop strings); rows that emit EOS are marked here."""
    xp = model.xp
    rng = np.random.default_rng(sampling.seed)
    start = time.perf_counter()
    # Without padding the mask is all ones: passing none lets the model count positions and skip masking.
    padded = not mask.all()
    logits = model(ids, attention_mask=mask if padded else None, cache=cache, logits_to_keep=1).logits[:, -1, :]
    out.prefill_tokens += int((mask[:, -ids.shape[1]:]).sum())
    step_start = time.perf_counter()
    out.prefill_seconds += step_start - start
    penalise = sampling.repetition_penalty != 1.0
    if penalise:  # which ids each row has seen, kept on the host and updated per step
        seen = tokens_seen(np.concatenate([history, ids], axis=1) if history is not None else ids, logits.shape[-1])
    try:
        for step in range(max_new_tokens):
            processed = process_logits(logits, to_backend(seen, xp) if penalise else None, sampling.temperature,
                                       sampling.top_k, sampling.top_p, sampling.min_p, sampling.repetition_penalty)
            tokens = np.where(done, pad, choose(processed, rng, greedy=sampling.temperature == 0))
            live = np.flatnonzero(~done)  # rows still generating
            out.decode_tokens += len(live)
            if penalise:
                seen[np.arange(len(tokens)), tokens] = True
            out.sequences = np.concatenate([out.sequences, tokens[:, None]], axis=1)
            if padded:
                mask = np.concatenate([mask, np.ones((len(tokens), 1), dtype=np.int64)], axis=1)
            for row in live:
                out.new_tokens[row].append(int(tokens[row]))
            done |= [int(t) in eos for t in tokens]  # a set lookup: np.isin is slow for a few ids
            yield tokens
            if done.all() or step == max_new_tokens - 1:
                break
            logits = model(tokens[:, None], attention_mask=mask if padded else None, cache=cache,
                           logits_to_keep=1).logits[:, -1, :]  # (batch, vocab)
    finally:
        out.decode_seconds += time.perf_counter() - step_start


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
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    out = GenerationOutput(sequences=ids, new_tokens=[[] for _ in range(ids.shape[0])])
    done = np.zeros(ids.shape[0], dtype=bool)
    for _ in _steps(model, ids, mask, max_new_tokens, sampling, eos, pad, done, out, cache, history):
        pass
    return out


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
    done = np.zeros(len(prompts), dtype=bool)
    for _ in _steps(model, ids, mask, max_new_tokens, Sampling(**sampling), eos, min(eos), done, out, cache, None):
        if stop:
            for row in np.flatnonzero(~done):
                done[row] = _cut_at_stop(tokenizer.decode(out.new_tokens[row]), stop)[1]  # a stop string appeared
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
    done = np.zeros(1, dtype=bool)
    decoder = tokenizer.stream_decoder()
    decoder.prime(ids[0])
    text, emitted = "", 0
    for tokens in _steps(model, ids, mask, max_new_tokens, Sampling(**sampling), eos, min(eos), done, out, cache, history):
        if int(tokens[0]) in eos:
            break
        text += decoder.step(int(tokens[0]))
        cut, found = _cut_at_stop(text, stop)
        if found:
            done[0] = True
            text = cut
            break
        # Hold back a tail that could still grow into a stop string.
        safe = len(text) - max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    if not done[0] or not stop:
        text += decoder.flush()
        text = _cut_at_stop(text, stop)[0]
    if len(text) > emitted:
        yield text[emitted:]
