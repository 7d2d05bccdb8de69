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
    assert out.stderr == f"minillama: error: --model {tmp_path / 'missing'}: the folder does not exist\n"


def test_bad_arguments_are_one_line_usage_errors():
    out = run("logits", "--model", "m", "--ids", "x")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "minillama logits: error: argument --ids: expected an integer, got 'x' (see 'minillama logits --help')\n"
    out = run("generate", "--model", "m")
    assert out.returncode == 2 and "the following arguments are required: --prompt" in out.stderr
    out = run("logits", "--ids", "1")  # no --model: the demo model in the package
    assert out.returncode == 0 and "demo" in out.stdout
