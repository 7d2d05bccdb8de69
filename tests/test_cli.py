"""The command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "minillama", *args], capture_output=True, text=True, timeout=120)


def test_make_tiny_then_logits(tmp_path):
    made = run("make-tiny", str(tmp_path / "tiny"))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "tiny" / "config.json").exists()
    out = run("logits", "--model", str(tmp_path / "tiny"), "--ids", "1", "2", "3", "--top", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("  id ") == 3 and "next token after 3 ids" in out.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    out = run("logits", "--model", str(tmp_path / "missing"), "--ids", "1")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "checkpoint not found" in out.stderr


def test_bad_arguments():
    out = run("logits", "--ids", "x")
    assert out.returncode == 2 and "usage:" in out.stderr
