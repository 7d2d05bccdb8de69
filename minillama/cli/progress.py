"""Progress bars on stderr: redrawn in place on a terminal, one line at the end otherwise.

A log file or a pipe never receives carriage returns: it gets the finished bar, once.
"""

from __future__ import annotations

import sys
import time

WIDTH = 30  # characters of the bar itself


def _on_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def draw_bar(label: str, done: int, total: int, unit: str, suffix: str = "") -> None:
    """``label [#####.....] done/total unit`` on stderr; ``suffix`` ends the finished bar."""
    stream = sys.stderr
    terminal = _on_terminal(stream)
    if not terminal and done < total:
        return  # only the finished bar goes to a file or pipe
    filled = WIDTH * done // total if total else WIDTH
    back = "\r" if terminal else ""  # to the start of the line, to redraw over the last bar
    stream.write(f"{back}{label} [{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total} {unit}")
    if done >= total:
        stream.write(suffix + "\n")
    stream.flush()


class LayerProgress:
    """Progress over layers loaded, called as progress(done, total) by ``load``."""

    def __init__(self, label: str):
        self.label, self.start = label, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        draw_bar(self.label, done, total, "layers", f" ({time.perf_counter() - self.start:.1f} s)")


class TensorProgress:
    """Progress over tensors written, called once per tensor by the writers."""

    def __init__(self, total: int, label: str):
        self.total, self.done, self.label = total, 0, label

    def __call__(self, name: str) -> None:
        self.done += 1
        draw_bar(self.label, self.done, self.total, "tensors")
