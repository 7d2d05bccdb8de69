"""The ``minillama`` command line (also ``python -m minillama``).

    minillama make-tiny OUT                   a small random checkpoint with a stand-in tokenizer
    minillama generate --model DIR --prompt TEXT [sampling options]
    minillama chat --model DIR [--system TEXT]
    minillama logits --model DIR --ids 1 450 4996
    minillama convert SRC OUT                 Meta folder or llama2.c .bin -> Hugging Face folder
    minillama inspect PATH                    format, config, dtypes, memory needs
    minillama make-synthetic OUT              a random checkpoint of Llama-2-7B's shape

Generated text streams to stdout; progress and the speed summary go to stderr.
Errors are one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np


def _add_model_args(parser, sampling: bool = True):
    parser.add_argument("--model", required=True, metavar="DIR", help="checkpoint folder (config.json, safetensors, tokenizer)")
    parser.add_argument("--backend", choices=["numpy", "cupy", "strict"], default="numpy",
                        help="array library: numpy (CPU, default), cupy (GPU), strict (Array API test stand-in)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="compute dtype (default float32; bfloat16 is refused: NumPy and CuPy cannot compute in it)")
    if sampling:
        group = parser.add_argument_group("sampling (applied in this order, as transformers does)")
        group.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="tokens to generate (default 128)")
        group.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="> 1 discourages repeats (default 1.0: off)")
        group.add_argument("--temperature", type=float, default=0.7, metavar="T", help="0 is greedy (default 0.7)")
        group.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens (default 0: off)")
        group.add_argument("--top-p", type=float, default=0.9, metavar="P", help="nucleus: keep tokens up to probability P (default 0.9)")
        group.add_argument("--min-p", type=float, default=0.0, metavar="M", help="drop tokens below M x the top probability (default 0: off)")
        group.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0: the same text every run)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minillama", description="Llama 2 inference in NumPy and CuPy.",
                                     epilog="Run 'minillama COMMAND --help' for a command's options.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="continue a prompt, streaming the text",
                              description="Continue a prompt, streaming the text to stdout; a summary line with "
                                          "prefill and decode speed follows on stderr.")
    _add_model_args(gen)
    gen.add_argument("--prompt", required=True, help="the text to continue")
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)")

    chat = commands.add_parser("chat", help="talk to a chat model in the Llama 2 chat format",
                               description="An interactive chat in the Llama 2 format ([INST] ... [/INST]). "
                                           "The conversation and its KV cache are kept across turns. "
                                           "Type /exit or end input (Ctrl-D) to leave.")
    _add_model_args(chat)
    chat.add_argument("--system", default=None, help="a system prompt")
    chat.add_argument("--context", type=int, default=2048, metavar="N",
                      help="positions to keep for the conversation (default 2048, at most the model's context)")

    tiny = commands.add_parser("make-tiny", help="write a small random checkpoint to try things out",
                               description="Write a small random Llama checkpoint (config.json, safetensors and a "
                                           "stand-in tokenizer.model) with real tensor names and shapes.")
    tiny.add_argument("out", help="folder to write (new or empty)")
    tiny.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    tiny.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored dtype")

    synth = commands.add_parser("make-synthetic", help="write a random checkpoint of a real model's shape",
                                description="Write a random checkpoint with Llama-2-7B's tensor names and shapes, "
                                            "for benchmarks and tests of scale (13.5 GB in float16).")
    synth.add_argument("out", help="folder to write (new or empty)")
    synth.add_argument("--shape", choices=["llama2-7b"], default="llama2-7b")
    synth.add_argument("--dtype", choices=["float32", "float16"], default="float16", help="stored dtype (default float16)")
    synth.add_argument("--shards", type=int, default=2, help="number of safetensors shards (default 2)")
    synth.add_argument("--seed", type=int, default=0)

    conv = commands.add_parser("convert", help="convert a Meta folder or llama2.c .bin to a Hugging Face folder",
                               description="Convert Meta's release (params.json + consolidated.*.pth) or a llama2.c "
                                           ".bin into a Hugging Face folder (config.json, sharded safetensors, "
                                           "tokenizer), one tensor at a time. Never runs code from the input.")
    conv.add_argument("src", help="Meta folder, llama2.c .bin, or Hugging Face folder (to re-shard)")
    conv.add_argument("out", help="folder to write (new or empty)")
    conv.add_argument("--max-shard-size", type=float, default=5.0, metavar="GB", help="shard size in GB (default 5)")

    insp = commands.add_parser("inspect", help="format, config, size, dtypes and memory needs of a checkpoint",
                               description="Describe a checkpoint without loading it: format, config, parameter "
                                           "count, stored dtypes, and the memory a forward needs per backend and dtype.")
    insp.add_argument("path", help="Hugging Face folder, Meta folder or llama2.c .bin")
    insp.add_argument("--context", type=int, default=4096, help="positions for the KV cache estimate (default 4096)")

    logits = commands.add_parser("logits", help="one forward pass: the most likely next token ids",
                                 description="Run one forward pass over token ids and print the most likely next tokens.")
    _add_model_args(logits, sampling=False)
    logits.add_argument("--ids", required=True, type=int, nargs="+", help="input token ids")
    logits.add_argument("--top", type=int, default=5, help="how many candidates to print (default 5)")
    return parser


def _draw_bar(label: str, done: int, total: int, unit: str, suffix: str = "") -> None:
    """A one-line progress bar on stderr, redrawn in place."""
    filled = int(30 * done / total)
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {unit}")
    if done == total:
        sys.stderr.write(suffix + "\n")
    sys.stderr.flush()


class _ProgressBar:
    """Progress over layers loaded."""

    def __init__(self, label: str):
        self.label, self.start = label, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        _draw_bar(self.label, done, total, "layers", f" ({time.perf_counter() - self.start:.1f} s)")


def _load(args):
    from . import load
    from .fast import tune_malloc
    if args.backend != "cupy":
        tune_malloc()  # keep freed temporaries for reuse (see fast.malloc); this process is ours
    return load(args.model, backend=args.backend, dtype=args.dtype, progress=_ProgressBar("loading weights"))


def _load_tokenizer(folder):
    from .tokenizer import LlamaTokenizer, LlamaTokenizerFast, TokenizerError
    if os.path.exists(os.path.join(folder, "tokenizer.model")):
        return LlamaTokenizer.from_pretrained(folder)
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return LlamaTokenizerFast.from_pretrained(folder)
    raise TokenizerError(f"{folder}: no tokenizer.model or tokenizer.json")


def _sampling(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed)


def _summary(stats) -> str:
    return (f"prefill {stats.prefill_tokens} tokens at {stats.prefill_tokens_per_second:.1f} tokens/s, "
            f"decode {stats.decode_tokens} tokens at {stats.decode_tokens_per_second:.1f} tokens/s")


def _generate(args) -> None:
    from .generation import GenerationOutput, stream_text
    if not args.prompt:
        raise ValueError("the prompt is empty: give some text to continue")
    tokenizer = _load_tokenizer(args.model)
    model = _load(args)
    stats = GenerationOutput(sequences=np.zeros((1, 0), dtype=np.int64))
    pieces = stream_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, stop=args.stop,
                         stats=stats, **_sampling(args))
    sys.stdout.write(args.prompt)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(_summary(stats), file=sys.stderr)


def _chat(args) -> None:
    from .generation import GenerationOutput, stream_text
    tokenizer = _load_tokenizer(args.model)
    model = _load(args)
    context = min(args.context, model.config.max_position_embeddings)
    if context < 16:
        raise ValueError(f"--context must be at least 16, got {args.context}")
    cache = model.new_cache(1, context)
    history = np.zeros((1, 0), dtype=np.int64)  # every id in the cache, in order
    interactive = sys.stdin.isatty()
    first = True
    while True:
        if interactive:
            sys.stdout.write("\n> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            break
        if not line.strip():
            continue
        messages = ([{"role": "system", "content": args.system}] if first and args.system else []) + \
                   [{"role": "user", "content": line.strip()}]
        turn = tokenizer.apply_chat_template(messages)
        if history.shape[1] and history[0, -1] != tokenizer.eos_token_id:
            turn = [tokenizer.eos_token_id] + turn  # close an answer that was cut off by max-new-tokens
        room = context - history.shape[1] - len(turn)
        if room < 1:
            raise ValueError(f"the conversation no longer fits in --context {context} positions")
        stats = GenerationOutput(sequences=np.zeros((1, 0), dtype=np.int64))
        for piece in stream_text(model, tokenizer, turn, max_new_tokens=min(args.max_new_tokens, room),
                                 cache=cache, history=history, stats=stats, **_sampling(args)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        # The cache now holds the turn and every generated token but the last (never fed back).
        generated = stats.new_tokens[0]
        history = np.concatenate([history, np.asarray([turn + generated[:-1]], dtype=np.int64)], axis=1)
        cache.length = history.shape[1]
        if generated:
            history = np.concatenate([history, [[generated[-1]]]], axis=1)
            model(np.asarray([[generated[-1]]]), cache=cache)  # feed the last token so the cache is whole
        print(_summary(stats), file=sys.stderr)
        first = False


class _TensorProgress:
    """Progress over tensors written."""

    def __init__(self, total: int, label: str):
        self.total, self.done, self.label = total, 0, label

    def __call__(self, name: str) -> None:
        self.done += 1
        _draw_bar(self.label, self.done, self.total, "tensors")


def _make_synthetic(args) -> None:
    from .config import LlamaConfig
    from .formats.safetensors import nbytes
    from .formats.synthetic import LLAMA2_7B_CONFIG, RandomTensor, tensor_shapes, write_random_checkpoint
    if args.shards < 1:
        raise ValueError("--shards must be at least 1")
    config = LlamaConfig(**LLAMA2_7B_CONFIG)
    shapes = tensor_shapes(config)
    sizes = [nbytes(RandomTensor(n, s, args.dtype, 0)) for n, s in shapes.items()]
    total = sum(sizes)
    start = time.perf_counter()
    # Each shard but the last fills past total/shards by less than one tensor: exactly --shards files.
    write_random_checkpoint(args.out, config, dtype=args.dtype, seed=args.seed,
                            max_shard_bytes=math.ceil(total / args.shards) + max(sizes),
                            progress=_TensorProgress(len(shapes), "writing"))
    print(f"wrote a random {args.shape} ({total / 2**30:.1f} GiB, {args.dtype}) to {args.out} "
          f"in {time.perf_counter() - start:.0f} s")


def _convert(args) -> None:
    from .formats import open_checkpoint
    from .formats.convert import convert
    if args.max_shard_size <= 0:
        raise ValueError("--max-shard-size must be positive")
    _, tensors, fmt = open_checkpoint(args.src)
    files = convert(args.src, args.out, int(args.max_shard_size * 1e9), _TensorProgress(len(tensors), "converting"))
    print(f"wrote {args.out}: {len(files)} safetensors file(s), {len(tensors)} tensors, from a {fmt} checkpoint")


def _inspect(args) -> None:
    from .formats.report import describe
    print(describe(args.path, args.context))


def _make_tiny(args) -> None:
    from .formats.synthetic import write_random_checkpoint
    config = write_random_checkpoint(args.out, seed=args.seed, dtype=args.dtype, tokenizer=True)
    print(f"wrote a random {config.num_hidden_layers}-layer Llama (hidden {config.hidden_size}, "
          f"vocab {config.vocab_size}) with a stand-in tokenizer to {args.out}")


def _logits(args) -> None:
    if args.top < 1:
        raise ValueError("--top must be at least 1")
    from . import to_numpy
    from .functional import softmax
    model = _load(args)
    start = time.perf_counter()
    last = to_numpy(model(np.asarray([args.ids])).logits)[0, -1].astype(np.float64)  # (vocab,)
    elapsed = time.perf_counter() - start
    probs = softmax(last)
    print(f"model: {args.model} ({model.num_parameters():,} parameters, {args.backend}, {args.dtype})")
    print(f"next token after {len(args.ids)} ids:")
    for token in np.argsort(-last)[: args.top]:
        print(f"  id {int(token):>6}  logit {last[token]:9.4f}  p {probs[token]:.4f}")
    print(f"forward {elapsed:.3f} s", file=sys.stderr)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    commands = {"generate": _generate, "chat": _chat, "make-tiny": _make_tiny, "logits": _logits,
                "make-synthetic": _make_synthetic, "convert": _convert, "inspect": _inspect}
    try:
        commands[args.command](args)
    except (ValueError, OSError, ImportError) as error:
        print(f"minillama: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0
