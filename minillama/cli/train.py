"""``minillama train``: train a small Llama on a text file, keeping its latest checkpoint in --out.

On a terminal a status line is redrawn after every step (step, bar, loss, learning rate,
tokens per second, time left); a file or pipe gets one line per validation instead. The
summary goes to stdout. Ctrl-C saves a checkpoint of the last finished step, says so on
stderr and exits with status 130; ``--resume`` then carries on from it.
"""

from __future__ import annotations

import math
import sys

from .progress import WIDTH, _on_terminal


class UsageError(ValueError):
    """Flags that cannot go together: reported like argparse's errors, with exit status 2."""


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def status_line(p) -> str:
    """``step 120/600 [######........] loss 3.214 lr 1.9e-03 9,512 tok/s ETA 52s``."""
    filled = WIDTH * p.step // p.total if p.total else WIDTH
    loss = f"{p.loss:.3f}" if p.loss is not None else "-"
    return (f"step {p.step}/{p.total} [{'#' * filled}{'.' * (WIDTH - filled)}] loss {loss} lr {p.lr:.1e} "
            f"{p.tokens_per_s:,.0f} tok/s ETA {duration(p.eta_s)}")


class TrainDisplay:
    """The progress callback of ``train``: a redrawn line on a terminal, a line per evaluation elsewhere."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = _on_terminal(self.stream)
        self.step, self.drawn = 0, False
        self.saved = None  # the step of the last checkpoint written, if any

    def __call__(self, p) -> None:
        self.step = p.step
        if p.event == "save":
            self.saved = p.step
        if p.event == "step" and self.terminal:
            self.stream.write("\r" + status_line(p))
            self.drawn = True
        elif p.event == "eval":
            self.stream.write(("\r" if self.terminal else "") + status_line(p) + f" val loss {p.val_loss:.3f}\n")
            self.drawn = False
        self.stream.flush()

    def end_line(self) -> None:
        """Finish a status line still being redrawn, so what follows starts on a line of its own."""
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False


def check_flags(args) -> None:
    """Refuse flags that contradict each other, before anything is read."""
    if args.lora_r is not None and args.from_model is None:
        raise UsageError("argument --lora-r: needs --from DIR, the model to put the adapters on")
    if args.resume and (args.tokenizer is not None or args.from_model is not None):
        raise UsageError("argument --resume: continues with the checkpoint's own model and tokenizer; "
                         "leave out --tokenizer and --from")


def run_train(args) -> None:
    from ..train.loop import train
    check_flags(args)
    display = TrainDisplay()
    try:
        state = train(args.data, args.out, preset=args.preset, steps=args.steps, seed=args.seed, resume=args.resume,
                      tokenizer=args.tokenizer, from_model=args.from_model, lora_r=args.lora_r,
                      backend=args.backend, progress=display)
    except KeyboardInterrupt:
        display.end_line()
        if display.saved is None:
            print("interrupted before the first checkpoint: nothing was saved", file=sys.stderr)
        else:
            print(f"interrupted: saved the checkpoint of step {display.saved} in {args.out} (--resume goes on)",
                  file=sys.stderr)
        raise
    display.end_line()
    val = state["val_losses"][-1][1] if state["val_losses"] else float("nan")
    loss = state["losses"][-1] if state["losses"] else float("nan")
    vocab = f" (ln vocab = {math.log(state['vocab_size']):.3f})" if state.get("vocab_size") else ""
    print(f"saved {args.out}: step {state['step']}, train loss {loss:.3f}, val loss {val:.3f}{vocab}, "
          f"{state['tokens_seen']:,} tokens, "
          f"{duration(state['elapsed_s'])}")
