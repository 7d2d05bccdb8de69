"""Every way the command line can fail: one line on stderr naming the flag or file, a non-zero
exit status, no traceback; usage errors (status 2) are found before any model loads."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from minillama import cli
from minillama.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from minillama.formats.synthetic import write_random_checkpoint
    folder = tmp_path_factory.mktemp("tiny")
    write_random_checkpoint(folder, seed=2, tokenizer=True)  # 4 layers, 256 positions, a stand-in tokenizer
    return folder


@pytest.fixture(autouse=True)
def no_malloc_tuning(monkeypatch):
    """The CLI tunes malloc for its own process; in the test process it must not."""
    import minillama.fast
    monkeypatch.setattr(minillama.fast, "tune_malloc", lambda: None)


def run(capsys, *argv):
    """main(argv) in this process: (exit status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    return err


MISSING = "/nonexistent/model"


@pytest.mark.parametrize("flag,value,rule", [
    ("--temperature", "-1", "must be >= 0"), ("--temperature", "nan", "must be >= 0"),
    ("--top-p", "0", "must be in (0, 1]"), ("--top-p", "1.5", "must be in (0, 1]"),
    ("--top-k", "-1", "must be an integer >= 0"), ("--top-k", "2.5", "expected an integer"),
    ("--min-p", "1.5", "must be in [0, 1]"), ("--min-p", "-0.1", "must be in [0, 1]"),
    ("--repetition-penalty", "0", "must be a positive"), ("--repetition-penalty", "inf", "must be a positive"),
    ("--max-new-tokens", "0", "must be at least 1"), ("--seed", "-1", "must be an integer >= 0"),
])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_sampling_arguments_are_checked_before_the_model_loads(capsys, command, flag, value, rule):
    prompt = ["--prompt", "Hi"] if command == "generate" else []
    status, out, err = run(capsys, command, "--model", MISSING, *prompt, f"{flag}={value}")
    assert status == 2 and out == ""
    assert one_line(err).startswith(f"minillama {command}: error: argument {flag}: {rule}")
    assert "does not exist" not in err  # the sampling error is the one reported, not the missing model


def test_a_missing_model_folder_says_so(capsys):
    for argv in (["generate", "--prompt", "Hi"], ["chat"], ["logits", "--ids", "1"]):
        status, out, err = run(capsys, *argv, "--model", MISSING)
        assert status == 1 and out == ""
        assert one_line(err) == f"minillama: error: --model {MISSING}: the folder does not exist\n"


def test_a_folder_without_tokenizer_names_the_flag(capsys, tmp_path):
    status, _, err = run(capsys, "generate", "--model", tmp_path, "--prompt", "Hi")
    assert status == 1 and "--model" in one_line(err) and "no tokenizer.model or tokenizer.json" in err


def test_a_model_file_where_a_folder_is_needed(capsys, tiny):
    status, _, err = run(capsys, "generate", "--model", tiny / "config.json", "--prompt", "Hi")
    assert status == 1 and one_line(err) == (f"minillama: error: --model {tiny / 'config.json'}: is a file; this "
                                             "command needs the checkpoint folder, with its tokenizer\n")


@pytest.mark.parametrize("argv,flag", [
    (["--stop="], "--stop"), (["--prompt="], "--prompt"), (["--dtype", "bfloat16"], "--dtype"),
    (["--backend", "torch"], "--backend"),
])
def test_usage_errors_exit_2(capsys, tiny, argv, flag):
    status, out, err = run(capsys, "generate", "--model", tiny, "--prompt", "Hi", *argv)
    assert status == 2 and out == "" and f"argument {flag}: " in one_line(err)


def test_dtype_choices_are_float32_and_float16(capsys):
    status, _, err = run(capsys, "logits", "--model", MISSING, "--ids", "1", "--dtype", "bfloat16")
    assert status == 2 and "argument --dtype: invalid choice: 'bfloat16' (choose from " in one_line(err)
    assert err.count("bfloat16") == 1 and "float32" in err and "float16" in err  # the choices, quoted or not


def test_version(capsys):
    assert run(capsys, "--version") == (0, "minillama 0.1.0\n", "")


def test_non_utf8_prompt_is_one_line(capsys):
    status, out, err = run(capsys, "generate", "--model", MISSING, "--prompt", "caf\udce9")  # argv's escape of b"\xe9"
    assert status == 2 and out == "" and "argument --prompt: is not valid UTF-8" in one_line(err)


def test_non_utf8_prompt_from_a_real_argv(tiny):
    done = subprocess.run([sys.executable, "-m", "minillama", "generate", "--model", str(tiny), "--prompt", b"caf\xe9"],
                          capture_output=True, timeout=120)
    assert done.returncode == 2 and done.stdout == b""
    assert b"argument --prompt: is not valid UTF-8" in done.stderr and done.stderr.count(b"\n") == 1


@pytest.mark.parametrize("size", ["nan", "inf", "-1", "0", "five"])
def test_convert_refuses_a_bad_shard_size(capsys, tiny, tmp_path, size):
    status, _, err = run(capsys, "convert", tiny, tmp_path / "out", f"--max-shard-size={size}")
    assert status == 2 and "argument --max-shard-size: " in one_line(err)
    assert not (tmp_path / "out").exists()


def test_keyboard_interrupt_exits_130_quietly(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "make-tiny", interrupted)
    assert run(capsys, "make-tiny", "/tmp/never-written") == (130, "", "")


def test_an_unexpected_exception_is_still_one_line(capsys, monkeypatch):
    def broken(args):
        raise KeyError("weights")

    monkeypatch.setitem(cli.COMMANDS, "make-tiny", broken)
    status, _, err = run(capsys, "make-tiny", "/tmp/never-written")
    assert status == 1 and one_line(err) == "minillama: error: unexpected KeyError: 'weights'\n"


def test_inspect_context_defaults_to_none(capsys, monkeypatch, tiny):
    import minillama.formats.report as report
    calls = []
    monkeypatch.setattr(report, "describe", lambda path, context=None: calls.append(context) or "described")
    assert run(capsys, "inspect", tiny) == (0, "described\n", "")
    assert run(capsys, "inspect", tiny, "--context", "128") == (0, "described\n", "")
    assert calls == [None, 128]
    status, _, err = run(capsys, "inspect", tiny, "--context", "0")
    assert status == 2 and "argument --context: must be at least 1" in one_line(err)


def test_logits_ids_outside_the_vocabulary(capsys, tiny):
    status, out, err = run(capsys, "logits", "--model", tiny, "--ids", "1", "5000")
    assert status == 1 and out == ""
    assert one_line(err.split("\n", 1)[1]).startswith("minillama: error: --ids: 5000 is outside the vocabulary")


def test_max_new_tokens_beyond_the_context_prints_no_prompt(capsys, tiny):
    status, out, err = run(capsys, "generate", "--model", tiny, "--prompt", "Hi", "--max-new-tokens", "1000")
    assert status == 1 and out == ""
    assert err.splitlines()[-1].startswith("minillama: error: prompt (") and "context of 256" in err


def test_progress_bar_without_a_terminal_is_one_line(capsys, tiny):
    status, out, err = run(capsys, "logits", "--model", tiny, "--ids", "1", "2")
    assert status == 0 and "\r" not in err
    bar = [line for line in err.splitlines() if line.startswith("loading weights")]
    assert len(bar) == 1 and bar[0].startswith("loading weights [" + "#" * 30 + "] 4/4 layers (")


def test_progress_bar_on_a_terminal_redraws_in_place(monkeypatch, tiny):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main(["logits", "--model", str(tiny), "--ids", "1"]) == 0
    drawn = screen.getvalue()
    assert drawn.count("\rloading weights [") == 4  # one redraw per layer, then a newline
    assert "\rloading weights [" + "#" * 7 + "." * 23 + "] 1/4 layers" in drawn


def chat(monkeypatch, capsys, tiny, stdin: bytes, *argv):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    return run(capsys, "chat", "--model", tiny, "--temperature", "0", "--max-new-tokens", "6", *argv)


def test_chat_reports_a_bad_line_and_goes_on(monkeypatch, capsys, tiny):
    status, out, err = chat(monkeypatch, capsys, tiny, b"\xff\xfe hello\nHello there\n/exit\n")
    assert status == 0
    assert "minillama: error: that line is not valid UTF-8 text; it was skipped" in err
    assert err.count("prefill ") == 1 and out.count("\n") == 1  # the good line was answered


def test_chat_full_context_offers_reset(monkeypatch, capsys, tiny):
    long = b"the llama walks " * 12 + b"\n"
    status, out, err = chat(monkeypatch, capsys, tiny, b"Hello there\n" + long + b"/reset\nHello there\n/exit\n",
                            "--system", "Be brief.", "--context", "80")
    assert status == 0
    assert "does not fit in --context 80" in err and "type /reset" in err
    assert err.count("prefill ") == 2 and "(a new conversation)" in err
    first, second = out.splitlines()
    assert first == second  # after /reset the same question gets the same greedy answer


def test_chat_context_beyond_the_model_is_refused(monkeypatch, capsys, tiny):
    status, out, err = chat(monkeypatch, capsys, tiny, b"Hello\n", "--context", "1000")
    assert status == 1 and out == ""
    last = err.splitlines()[-1]
    assert last == f"minillama: error: --context 1000 is more than the 256 positions of {tiny} (max_position_embeddings)"


def test_ctrl_c_in_a_real_process_exits_130_quietly(tiny):
    import signal
    chat = subprocess.Popen([sys.executable, "-m", "minillama", "chat", "--model", str(tiny)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        loaded = chat.stderr.readline()  # the finished bar: the model is loaded and chat waits for a line
        chat.send_signal(signal.SIGINT)
        out, err = chat.communicate(timeout=60)
    finally:
        chat.kill()
    assert loaded.startswith(b"loading weights [")
    assert chat.returncode == 130 and out == b"" and err == b""


def test_a_closed_pipe_ends_quietly(tiny):
    run = subprocess.Popen([sys.executable, "-m", "minillama", "generate", "--model", str(tiny), "--prompt", "Hi" * 20,
                            "--max-new-tokens", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run.stdout.close()  # as `minillama generate ... | head -c 0` would
    err = run.stderr.read()
    assert run.wait(timeout=120) == 1
    assert err.startswith(b"loading weights [") and err.count(b"\n") == 1  # the bar, and nothing about the pipe
