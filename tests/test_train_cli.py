"""``minillama train``: each refusal is one line with its exit status; a tiny run end to end; Ctrl-C."""

from __future__ import annotations

import importlib.util
import io
import json
import os

import pytest

from minillama.cli import main
from minillama.cli import train as cli_train
from minillama.train import presets as presets_module
from minillama.train import TrainPreset
from test_train_loop import MICRO, generated_text

# The CLI's "tiny" made smaller still, so an end-to-end run takes a second; the vocabulary stays 512.
SMALL_TINY = TrainPreset(**{**MICRO.__dict__, "name": "tiny", "model": {**MICRO.model, "vocab_size": 512}})


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """A text long enough for a few windows of the tiny preset (128 positions) and its 512-piece tokenizer."""
    path = tmp_path_factory.mktemp("cli") / "text.txt"
    path.write_text(generated_text(150, seed=1), encoding="utf-8")
    return str(path)


def run(capsys, *argv):
    """(exit status, stdout, stderr) of ``minillama train ARGV``."""
    status = main(["train", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_an_empty_or_non_utf8_text_is_one_line_and_status_1(tmp_path, capsys):
    empty, binary = tmp_path / "empty.txt", tmp_path / "binary.txt"
    empty.write_bytes(b"\n\n")
    binary.write_bytes(b"caf\xe9\n")
    status, _, err = run(capsys, "--data", str(empty), "--out", str(tmp_path / "out"))
    assert status == 1 and one_line(err) == f"minillama: error: {empty}: empty (no text to train on)"
    status, _, err = run(capsys, "--data", str(binary), "--out", str(tmp_path / "out"))
    assert status == 1 and one_line(err) == f"minillama: error: {binary}: not UTF-8 text (byte 0xe9 at byte offset 3)"
    assert not os.path.exists(tmp_path / "out")


def test_a_vocabulary_larger_than_the_text_supports_is_refused(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("ab ab ab ba ba\n\nab ba\n", encoding="utf-8")
    status, _, err = run(capsys, "--data", str(small), "--out", str(tmp_path / "out"))
    assert status == 1
    assert one_line(err).startswith("minillama: error: vocab_size 512 is too large for this text (at most ")


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["--lora-r", "4"], "argument --lora-r: needs --from DIR"),
    (["--lora-r", "0", "--from", "x"], "argument --lora-r: must be at least 1, got 0"),
    (["--resume", "--tokenizer", "x"], "argument --resume: continues with the checkpoint's own model and tokenizer"),
])
def test_bad_flags_are_usage_errors(text_file, tmp_path, capsys, flags, message):
    status, _, err = run(capsys, "--data", text_file, "--out", str(tmp_path / "out"), *flags)
    assert status == 2
    line = one_line(err)
    assert line.startswith("minillama train: error: " + message) and line.endswith("(see 'minillama train --help')")


def test_an_out_folder_that_is_not_a_run_and_a_resume_without_checkpoint_are_refused(text_file, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    status, _, err = run(capsys, "--data", text_file, "--out", str(tmp_path / "mine"))
    assert status == 1 and "exists and is not a previous training run" in one_line(err)
    status, _, err = run(capsys, "--data", text_file, "--out", str(tmp_path / "none"), "--resume")
    assert status == 1 and one_line(err) == (f"minillama: error: {tmp_path / 'none'}: no checkpoint to resume from "
                                             "(trainer_state.json is missing)")


def test_a_preset_that_does_not_fit_in_memory_is_refused(text_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(presets_module, "available_memory", lambda: 100 * 2**20)
    status, _, err = run(capsys, "--data", text_file, "--out", str(tmp_path / "out"), "--preset", "demo")
    assert status == 1
    assert one_line(err).startswith("minillama: error: preset 'demo' needs about 0.57 GiB to train (batch 8 x 256 "
                                    "positions), but only 0.10 GiB of memory is available")


@pytest.mark.skipif(importlib.util.find_spec("minillama.train.lora") is not None, reason="LoRA is available")
def test_lora_without_the_lora_module_says_it_is_not_available(text_file, tmp_path, capsys):
    status, _, err = run(capsys, "--data", text_file, "--out", str(tmp_path / "out"), "--from", str(tmp_path),
                         "--lora-r", "4")
    assert status == 1 and one_line(err) == "minillama: error: LoRA is not available yet (minillama.train.lora is missing)"


def test_a_tiny_run_end_to_end_then_a_resume(text_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(presets_module.PRESETS, "tiny", SMALL_TINY)
    out = str(tmp_path / "run")
    status, stdout, err = run(capsys, "--data", text_file, "--out", out, "--steps", "2", "--seed", "7")
    assert status == 0, err
    assert stdout.startswith(f"saved {out}: step 2, train loss ") and "(ln vocab = 6.238), 256 tokens" in stdout
    # not a terminal: no carriage returns, one line for the validation at the last step
    assert "\r" not in err and err.count("\n") == 1 and err.startswith("step 2/2 [") and " val loss " in err
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        state = json.load(f)
    assert (state["step"], state["seed"], state["preset"], len(state["losses"])) == (2, 7, "tiny", 2)
    status, stdout, _ = run(capsys, "--data", text_file, "--out", out, "--steps", "3", "--resume")
    assert status == 0 and stdout.startswith(f"saved {out}: step 3, ")
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        resumed = json.load(f)
    assert resumed["seed"] == 7 and resumed["losses"][:2] == state["losses"]


def test_ctrl_c_saves_then_exits_130(text_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(presets_module.PRESETS, "tiny", SMALL_TINY)
    out = str(tmp_path / "run")

    display_call = cli_train.TrainDisplay.__call__

    def press_ctrl_c(self, progress):
        display_call(self, progress)
        if progress.event == "step":
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_train.TrainDisplay, "__call__", press_ctrl_c)
    status, _, err = run(capsys, "--data", text_file, "--out", out, "--steps", "5")
    assert status == 130
    assert one_line(err) == f"interrupted: saved the checkpoint of step 1 in {out} (--resume goes on)"
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        assert json.load(f)["step"] == 1


def test_ctrl_c_before_any_step_says_nothing_was_saved(text_file, tmp_path, capsys, monkeypatch):
    def press_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("minillama.train.loop.train_tokenizer", press_ctrl_c)
    status, _, err = run(capsys, "--data", text_file, "--out", str(tmp_path / "run"))
    assert status == 130 and one_line(err) == "interrupted before the first checkpoint: nothing was saved"
    assert not os.path.exists(tmp_path / "run")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_the_status_line_is_redrawn_after_every_step():
    from minillama.train import TrainProgress
    screen = Terminal()
    display = cli_train.TrainDisplay(screen)
    display(TrainProgress("step", 1, 4, 6.25, 5e-4, 1234.4, 90.0))
    display(TrainProgress("step", 2, 4, 5.5, 1e-3, 2345.6, 61.0))
    display(TrainProgress("eval", 2, 4, 5.5, 1e-3, 2345.6, 61.0, val_loss=5.75))
    display(TrainProgress("step", 3, 4, 5.0, 1e-3, 2345.6, 30.0, val_loss=5.75))
    display.end_line()
    bar = "#" * 15 + "." * 15
    assert screen.getvalue() == (
        "\rstep 1/4 [" + "#" * 7 + "." * 23 + "] loss 6.250 lr 5.0e-04 1,234 tok/s ETA 1m30s"
        "\rstep 2/4 [" + bar + "] loss 5.500 lr 1.0e-03 2,346 tok/s ETA 1m01s"
        "\rstep 2/4 [" + bar + "] loss 5.500 lr 1.0e-03 2,346 tok/s ETA 1m01s val loss 5.750\n"
        "\rstep 3/4 [" + "#" * 22 + "." * 8 + "] loss 5.000 lr 1.0e-03 2,346 tok/s ETA 30s\n")


def test_durations_read_naturally():
    assert [cli_train.duration(s) for s in (0.4, 59, 61, 3599, 3600, 7384)] == ["0s", "59s", "1m01s", "59m59s",
                                                                                "1h00m", "2h03m"]
