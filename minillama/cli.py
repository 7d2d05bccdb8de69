"""The ``minillama`` command line.

    minillama make-tiny OUT          write a small random checkpoint (no download needed)
    minillama logits --model DIR --ids 1 450 4996
                                     run one forward pass and print the most likely next tokens

Errors are printed as one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minillama", description="Llama 2 inference in NumPy and CuPy.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = commands.add_parser("make-tiny", help="write a small random Llama checkpoint to a folder",
                               description="Write a small random Llama checkpoint (config.json + safetensors) "
                                           "with real tensor names and shapes, for trying things out.")
    tiny.add_argument("out", help="folder to write")
    tiny.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    tiny.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored dtype")

    logits = commands.add_parser("logits", help="one forward pass: print the top next-token ids",
                                 description="Run one forward pass over token ids and print the most likely next tokens.")
    logits.add_argument("--model", required=True, help="Hugging Face checkpoint folder")
    logits.add_argument("--ids", required=True, type=int, nargs="+", help="input token ids")
    logits.add_argument("--top", type=int, default=5, help="how many candidates to print (default 5)")
    logits.add_argument("--backend", choices=["numpy", "cupy", "strict"], default="numpy")
    logits.add_argument("--dtype", choices=["float32", "float16", "float64"], default="float32", help="compute dtype")
    return parser


def _make_tiny(args) -> None:
    from .synthetic import write_random_checkpoint
    config = write_random_checkpoint(args.out, seed=args.seed, dtype=args.dtype)
    print(f"wrote a random {config.num_hidden_layers}-layer Llama (hidden {config.hidden_size}, "
          f"vocab {config.vocab_size}) to {args.out}")


def _logits(args) -> None:
    from . import load, to_numpy
    if args.top < 1:
        raise ValueError("--top must be at least 1")
    start = time.perf_counter()
    model = load(args.model, backend=args.backend, dtype=args.dtype)
    loaded = time.perf_counter()
    last = to_numpy(model(np.asarray([args.ids])).logits)[0, -1].astype(np.float64)  # (vocab,)
    done = time.perf_counter()
    probs = np.exp(last - last.max())
    probs /= probs.sum()
    print(f"model: {args.model} ({model.num_parameters():,} parameters, {args.backend}, {args.dtype})")
    print(f"next token after {len(args.ids)} ids:")
    for token in np.argsort(-last)[: args.top]:
        print(f"  id {int(token):>6}  logit {last[token]:9.4f}  p {probs[token]:.4f}")
    print(f"load {loaded - start:.2f} s, forward {done - loaded:.3f} s")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"make-tiny": _make_tiny, "logits": _logits}[args.command](args)
    except (ValueError, OSError, ImportError) as error:
        print(f"minillama: error: {error}", file=sys.stderr)
        return 1
    return 0
