"""The ``chat`` command: a conversation in the Llama 2 chat format, its KV cache kept across turns.

Each turn feeds only the new message; the answer streams to stdout. A line that cannot be
read (bytes that are not UTF-8) or a message that no longer fits in --context is reported on
stderr and the session goes on; ``/reset`` forgets the conversation, ``/exit`` ends it.
"""

from __future__ import annotations

import sys

import numpy as np

from .generate import load_model, load_tokenizer, sampling_args, summary

DEFAULT_CONTEXT = 2048


class Conversation:
    """The ids in the cache, in order, and the cache itself."""

    def __init__(self, model, context: int):
        self.model, self.context = model, context
        self.cache = model.new_cache(1, context)
        self.reset()

    def reset(self) -> None:
        self.history = np.zeros((1, 0), dtype=np.int64)  # (1, positions) every id in the cache
        self.cache.length = 0

    def rewind(self) -> None:
        """Forget positions a failed turn may have written past the history."""
        self.cache.length = self.history.shape[1]

    def record(self, turn: list[int], generated: list[int]) -> None:
        """Bring history and cache up to date after a turn: the cache holds the turn and every
        generated token but the last, which generation never feeds back; it is fed here."""
        self.history = np.concatenate([self.history, np.asarray([turn + generated[:-1]], dtype=np.int64)], axis=1)
        self.cache.length = self.history.shape[1]
        if generated:
            self.history = np.concatenate([self.history, [[generated[-1]]]], axis=1)
            self.model(np.asarray([[generated[-1]]]), cache=self.cache)


def _context(args, model) -> int:
    limit = model.config.max_position_embeddings
    if args.context is None:
        return min(DEFAULT_CONTEXT, limit)
    if args.context > limit:
        raise ValueError(f"--context {args.context} is more than the {limit} positions of {args.model} "
                         f"(max_position_embeddings)")
    return args.context


def _read_line(stream):
    """The next line, or None at the end of input; a line of bytes that are not UTF-8 is a ValueError."""
    raw = stream.buffer.readline() if hasattr(stream, "buffer") else stream.readline()
    if not raw:
        return None
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("that line is not valid UTF-8 text; it was skipped") from None
    return raw


def _answer(args, model, tokenizer, talk: Conversation, message: str) -> None:
    """One turn: the user's message in, the answer streamed out."""
    from ..generation import GenerationOutput, stream_text
    system = args.system if args.system and talk.history.shape[1] == 0 else None
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    turn = tokenizer.apply_chat_template(messages, return_dict=False)
    if talk.history.shape[1] and talk.history[0, -1] != tokenizer.eos_token_id:
        turn = [tokenizer.eos_token_id] + turn  # close an answer that was cut off by max-new-tokens
    room = talk.context - talk.history.shape[1] - len(turn)
    if room < 1:
        used = talk.history.shape[1]
        raise ValueError(f"this message ({len(turn)} tokens) does not fit in --context {talk.context} "
                         f"({used} positions used): type /reset to start a new conversation")
    stats = GenerationOutput(sequences=np.zeros((1, 0), dtype=np.int64))
    for piece in stream_text(model, tokenizer, turn, max_new_tokens=min(args.max_new_tokens, room),
                             cache=talk.cache, history=talk.history, stats=stats, **sampling_args(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    talk.record(turn, stats.new_tokens[0])
    print(summary(stats), file=sys.stderr)


def run_chat(args) -> None:
    tokenizer = load_tokenizer(args.model)
    model = load_model(args)
    talk = Conversation(model, _context(args, model))
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("\n> ")
            sys.stdout.flush()
        try:
            line = _read_line(sys.stdin)
            if line is None or line.strip() in ("/exit", "/quit"):
                break
            if line.strip() == "/reset":
                talk.reset()
                print("(a new conversation)", file=sys.stderr)
            elif line.strip():
                _answer(args, model, tokenizer, talk, line.strip())
        except ValueError as error:  # this turn failed; the conversation so far stays
            talk.rewind()
            print(f"minillama: error: {error}", file=sys.stderr)
