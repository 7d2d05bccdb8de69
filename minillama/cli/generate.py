"""The commands that run a model: ``generate`` and ``logits``, and loading a model and its tokenizer.

Generated text streams to stdout; progress and the speed summary go to stderr.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from .progress import LayerProgress


def check_model_path(path: str) -> None:
    """Refuse a --model path that does not exist, before anything is read."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--model {path}: the folder does not exist")


def load_model(args):
    from .. import load
    from ..fast import tune_malloc
    check_model_path(args.model)
    if args.backend != "cupy":
        tune_malloc()  # keep freed temporaries for reuse (see fast.malloc); this process is ours
    return load(args.model, backend=args.backend, dtype=args.dtype, progress=LayerProgress("loading weights"))


def load_tokenizer(folder: str):
    from ..tokenizer import LlamaTokenizer, LlamaTokenizerFast, TokenizerError
    check_model_path(folder)
    if not os.path.isdir(folder):
        raise TokenizerError(f"--model {folder}: is a file; this command needs the checkpoint folder, with its tokenizer")
    if os.path.exists(os.path.join(folder, "tokenizer.model")):
        return LlamaTokenizer.from_pretrained(folder)
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return LlamaTokenizerFast.from_pretrained(folder)
    raise TokenizerError(f"--model {folder}: no tokenizer.model or tokenizer.json in this folder")


def sampling_args(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed)


def summary(stats) -> str:
    return (f"prefill {stats.prefill_tokens} tokens at {stats.prefill_tokens_per_second:.1f} tokens/s, "
            f"decode {stats.decode_tokens} tokens at {stats.decode_tokens_per_second:.1f} tokens/s")


def run_generate(args) -> None:
    from ..generation import GenerationOutput, stream_text
    tokenizer = load_tokenizer(args.model)
    model = load_model(args)
    stats = GenerationOutput(sequences=np.zeros((1, 0), dtype=np.int64))
    pieces = stream_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, stop=args.stop,
                         stats=stats, **sampling_args(args))
    first = next(pieces, "")  # the argument checks against the model happen here, before any output
    sys.stdout.write(args.prompt + first)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(summary(stats), file=sys.stderr)


def run_logits(args) -> None:
    from .. import to_numpy
    from ..functional import softmax
    model = load_model(args)
    vocab = model.config.vocab_size
    outside = [i for i in args.ids if i >= vocab]
    if outside:
        raise ValueError(f"--ids: {outside[0]} is outside the vocabulary of {args.model} (ids 0 to {vocab - 1})")
    start = time.perf_counter()
    last = to_numpy(model(np.asarray([args.ids])).logits)[0, -1].astype(np.float64)  # (vocab,)
    elapsed = time.perf_counter() - start
    probs = softmax(last)
    print(f"model: {args.model} ({model.num_parameters():,} parameters, {args.backend}, {args.dtype})")
    print(f"next token after {len(args.ids)} ids:")
    for token in np.argsort(-last)[: args.top]:
        print(f"  id {int(token):>6}  logit {last[token]:9.4f}  p {probs[token]:.4f}")
    print(f"forward {elapsed:.3f} s", file=sys.stderr)
