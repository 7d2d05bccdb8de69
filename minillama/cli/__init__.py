"""The ``minillama`` command line (also ``python -m minillama``).

    minillama make-tiny OUT                   a small random checkpoint with a stand-in tokenizer
    minillama generate [--model DIR] --prompt TEXT [sampling options]
    minillama chat [--model DIR] [--system TEXT]
    minillama logits [--model DIR] --ids 1 450 4996

Without ``--model``, generate, chat and logits use the demo model shipped in the package.
    minillama convert SRC OUT                 Meta folder or llama2.c .bin -> Hugging Face folder
    minillama inspect PATH                    format, config, dtypes, memory needs
    minillama make-synthetic OUT              a random checkpoint of Llama-2-7B's shape
    minillama train --data FILE --out DIR     train a small Llama on a text (see ``train``)

By file: ``parser`` (every flag, its type and range), ``generate`` (generate, logits, loading),
``chat``, ``files`` (convert, inspect, make-tiny, make-synthetic), ``train``, ``progress`` (the bars).

Generated text streams to stdout; progress and the speed summary go to stderr.
Every failure is one line on stderr and a non-zero exit status, never a traceback:
a bad flag is a usage error (status 2) reported before anything loads; a file or model
problem is status 1; Ctrl-C ends quietly with status 130.
"""

from __future__ import annotations

import os
import sys

from .chat import run_chat
from .files import run_convert, run_inspect, run_make_synthetic, run_make_tiny
from .generate import run_generate, run_logits
from .parser import build_parser
from .train import UsageError, run_train

COMMANDS = {"generate": run_generate, "chat": run_chat, "logits": run_logits, "convert": run_convert,
            "inspect": run_inspect, "make-tiny": run_make_tiny, "make-synthetic": run_make_synthetic,
            "train": run_train}


def _report(message) -> None:
    """``minillama: error: ...`` on one line of stderr."""
    text = " ".join(str(message).splitlines()) or type(message).__name__
    print(f"minillama: error: {text}", file=sys.stderr)


def _quiet_stdout() -> None:
    """After a closed pipe (``minillama generate ... | head``): send what is left to /dev/null, so
    Python's final flush of stdout does not fail a second time."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def use_demo_model(args) -> None:
    """No --model: the demo model in the package (a text continuer, which chat says)."""
    from ..demo import demo_model_path
    args.model = demo_model_path()
    if args.command == "chat":
        print("(the demo model, trained on the King James Bible, continues text; it does not follow "
              "instructions: give it the opening of a sentence)", file=sys.stderr)


def main(argv=None) -> int:
    """Run one command; the exit status: 0, 1 (an error), 2 (a usage error) or 130 (interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error already reported on one line
        return done.code if isinstance(done.code, int) else 0
    try:
        if getattr(args, "model", "") is None:
            use_demo_model(args)
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130  # the user asked to stop: nothing to report
    except UsageError as error:  # flags that contradict each other: a usage error, as argparse reports them
        print(f"minillama {args.command}: error: {error} (see 'minillama {args.command} --help')", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except (ValueError, OSError, ImportError) as error:
        _report(error)
        return 1
    except MemoryError:
        _report("out of memory: try --dtype float16, a smaller model, or a smaller --context")
        return 1
    except Exception as error:  # a bug: still one line, with the exception's name to report it by
        _report(f"unexpected {type(error).__name__}: {error}")
        return 1
    return 0
