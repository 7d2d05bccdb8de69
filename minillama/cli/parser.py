"""The argument parser: every flag with its type and range, checked before anything loads.

A bad value is a usage error (exit status 2) on ONE line that names the flag, e.g.

    minillama generate: error: argument --top-p: must be in (0, 1], got 1.5 (see 'minillama generate --help')

so a sampling mistake is reported at once, before a model of several gigabytes is read.
"""

from __future__ import annotations

import argparse
import math

from .. import __version__


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2), not the usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _checked(kind, test, rule: str):
    """An argparse ``type``: the text read as ``kind``, refused unless ``test(value)``; ``rule`` says why."""
    names = {int: "an integer", float: "a number"}

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {names[kind]}, got {text!r}") from None
        if (kind is float and not math.isfinite(value)) or not test(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = _checked(int, lambda v: v >= 1, "at least 1")
NATURAL_INT = _checked(int, lambda v: v >= 0, "an integer >= 0")
TEMPERATURE = _checked(float, lambda v: v >= 0, ">= 0 (0 is greedy)")
PROBABILITY_OPEN = _checked(float, lambda v: 0 < v <= 1, "in (0, 1]")
PROBABILITY = _checked(float, lambda v: 0 <= v <= 1, "in [0, 1]")
POSITIVE = _checked(float, lambda v: v > 0, "a positive finite number")
CONTEXT = _checked(int, lambda v: v >= 16, "at least 16")


def text(value: str) -> str:
    """An argparse ``type`` for text: refuses bytes that are not UTF-8 (argv's surrogate escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("is not valid UTF-8 text (it holds undecodable bytes)") from None
    return value


def nonempty_text(value: str) -> str:
    if not text(value):
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def add_model_args(parser, sampling: bool = True) -> None:
    parser.add_argument("--model", metavar="DIR",
                        help="checkpoint folder (config.json, safetensors, tokenizer); default: the bundled demo model")
    parser.add_argument("--backend", choices=["numpy", "cupy", "strict"], default="numpy",
                        help="array library: numpy (CPU, default), cupy (GPU), strict (Array API test stand-in)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                        help="compute dtype (default float32; a bfloat16 checkpoint loads exactly into float32)")
    if not sampling:
        return
    group = parser.add_argument_group("sampling (applied in this order, as transformers does)")
    group.add_argument("--max-new-tokens", type=POSITIVE_INT, default=128, metavar="N", help="tokens to generate (default 128)")
    group.add_argument("--repetition-penalty", type=POSITIVE, default=1.0, metavar="R", help="> 1 discourages repeats (default 1.0: off)")
    group.add_argument("--temperature", type=TEMPERATURE, default=0.7, metavar="T", help="0 is greedy (default 0.7)")
    group.add_argument("--top-k", type=NATURAL_INT, default=0, metavar="K", help="keep the K most likely tokens (default 0: off)")
    group.add_argument("--top-p", type=PROBABILITY_OPEN, default=0.9, metavar="P", help="nucleus: keep tokens up to probability P (default 0.9)")
    group.add_argument("--min-p", type=PROBABILITY, default=0.0, metavar="M", help="drop tokens below M x the top probability (default 0: off)")
    group.add_argument("--seed", type=NATURAL_INT, default=0, metavar="S", help="random seed >= 0 (default 0: the same text every run)")


def _add_generation_commands(commands) -> None:
    gen = commands.add_parser("generate", help="continue a prompt, streaming the text",
                              description="Continue a prompt, streaming the text to stdout; a summary line with "
                                          "prefill and decode speed follows on stderr.")
    add_model_args(gen)
    gen.add_argument("--prompt", required=True, type=nonempty_text, help="the text to continue")
    gen.add_argument("--stop", action="append", default=[], type=nonempty_text, metavar="TEXT",
                     help="stop at this text (repeatable)")

    chat = commands.add_parser("chat", help="talk to a chat model in the Llama 2 chat format",
                               description="An interactive chat in the Llama 2 format ([INST] ... [/INST]). "
                                           "The conversation and its KV cache are kept across turns. "
                                           "Type /reset to start over, /exit or end input (Ctrl-D) to leave.")
    add_model_args(chat)
    chat.add_argument("--system", default=None, type=text, help="a system prompt")
    chat.add_argument("--context", type=CONTEXT, default=None, metavar="N",
                      help="positions to keep for the conversation (default: the model's context, at most 2048)")

    logits = commands.add_parser("logits", help="one forward pass: the most likely next token ids",
                                 description="Run one forward pass over token ids and print the most likely next tokens.")
    add_model_args(logits, sampling=False)
    logits.add_argument("--ids", required=True, type=NATURAL_INT, nargs="+", help="input token ids")
    logits.add_argument("--top", type=POSITIVE_INT, default=5, help="how many candidates to print (default 5)")


def _add_file_commands(commands) -> None:
    tiny = commands.add_parser("make-tiny", help="write a small random checkpoint to try things out",
                               description="Write a small random Llama checkpoint (config.json, safetensors and a "
                                           "stand-in tokenizer.model) with real tensor names and shapes.")
    tiny.add_argument("out", help="folder to write (new or empty)")
    tiny.add_argument("--seed", type=NATURAL_INT, default=0, help="random seed (default 0)")
    tiny.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored dtype")

    synth = commands.add_parser("make-synthetic", help="write a random checkpoint of a real model's shape",
                                description="Write a random checkpoint with Llama-2-7B's tensor names and shapes, "
                                            "for benchmarks and tests of scale (13.5 GB in float16).")
    synth.add_argument("out", help="folder to write (new or empty)")
    synth.add_argument("--shape", choices=["llama2-7b"], default="llama2-7b")
    synth.add_argument("--dtype", choices=["float32", "float16"], default="float16", help="stored dtype (default float16)")
    synth.add_argument("--shards", type=POSITIVE_INT, default=2, help="number of safetensors shards (default 2)")
    synth.add_argument("--seed", type=NATURAL_INT, default=0)

    conv = commands.add_parser("convert", help="convert a Meta folder or llama2.c .bin to a Hugging Face folder",
                               description="Convert Meta's release (params.json + consolidated.*.pth) or a llama2.c "
                                           ".bin into a Hugging Face folder (config.json, sharded safetensors, "
                                           "tokenizer), one tensor at a time. Never runs code from the input.")
    conv.add_argument("src", help="Meta folder, llama2.c .bin, or Hugging Face folder (to re-shard)")
    conv.add_argument("out", help="folder to write (new or empty)")
    conv.add_argument("--max-shard-size", type=POSITIVE, default=5.0, metavar="GB", help="shard size in GB (default 5)")

    insp = commands.add_parser("inspect", help="format, config, size, dtypes and memory needs of a checkpoint",
                               description="Describe a checkpoint without loading it: format, config, parameter "
                                           "count, stored dtypes, and the memory a forward needs per backend and dtype.")
    insp.add_argument("path", help="Hugging Face folder, Meta folder or llama2.c .bin")
    insp.add_argument("--context", type=POSITIVE_INT, default=None, metavar="N",
                      help="positions for the KV cache estimate (default: the model's max_position_embeddings)")


def _add_train_command(commands) -> None:
    train = commands.add_parser("train", help="train a small Llama on a text file",
                                description="Train a Llama on a UTF-8 text (a file, or a folder of .txt files): a "
                                            "tokenizer is trained on it, 5% (the tail) is held out for validation, "
                                            "and --out always holds the latest checkpoint (a Hugging Face folder with "
                                            "optimizer.npz and trainer_state.json). Ctrl-C saves one and stops.")
    train.add_argument("--data", required=True, metavar="FILE", type=nonempty_text, help="the training text")
    train.add_argument("--out", required=True, metavar="DIR", type=nonempty_text,
                       help="checkpoint folder: new, empty, or an earlier run's (replaced unless --resume)")
    train.add_argument("--preset", choices=["tiny", "demo"], default=None,
                       help="model shape and hyperparameters (default tiny; a resume keeps its own)")
    train.add_argument("--steps", type=POSITIVE_INT, default=None, metavar="N",
                       help="stop after step N (default: the preset's schedule length)")
    train.add_argument("--seed", type=NATURAL_INT, default=None, metavar="S",
                       help="seed of the initial weights and the batches (default 0; a resume keeps its own)")
    train.add_argument("--resume", action="store_true", help="carry on from the checkpoint in --out up to --steps")
    train.add_argument("--tokenizer", default=None, metavar="PATH", type=nonempty_text,
                       help="a tokenizer folder or tokenizer.model to use instead of training one")
    train.add_argument("--from", dest="from_model", default=None, metavar="DIR", type=nonempty_text,
                       help="fine-tune this checkpoint instead of a fresh model")
    train.add_argument("--lora-r", type=POSITIVE_INT, default=None, metavar="R",
                       help="with --from: train only rank-R LoRA adapters")
    train.add_argument("--backend", choices=["numpy", "cupy", "strict"], default="numpy",
                       help="array library (default numpy)")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="minillama", description="Llama 2 inference and training in NumPy and CuPy.",
                           epilog="Run 'minillama COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"minillama {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generation_commands(commands)
    _add_file_commands(commands)
    _add_train_command(commands)
    return parser
