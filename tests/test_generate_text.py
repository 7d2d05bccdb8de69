"""Text-level generation (prompts, stop strings, streaming, continuing a cache) and the CLI, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import minillama
from minillama.generation.generate import GenerationOutput, generate, generate_text, stream_text
from minillama.formats.synthetic import write_random_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    write_random_checkpoint(folder, seed=2, tokenizer=True)
    return folder


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny):
    return minillama.load(tiny), minillama.LlamaTokenizer.from_pretrained(tiny)


SAMPLING = dict(temperature=0.8, top_p=0.95, seed=3)


def test_stream_equals_generate_text(model_and_tokenizer):
    model, tok = model_and_tokenizer
    for prompt in ["Once upon a time", "The llama", " def add(a, b):"]:
        whole = generate_text(model, tok, prompt, max_new_tokens=30, **SAMPLING)
        streamed = list(stream_text(model, tok, prompt, max_new_tokens=30, **SAMPLING))
        assert "".join(streamed) == whole.texts[0]
        full = tok.decode(tok.encode(prompt) + whole.new_tokens[0])
        assert full == tok.decode(tok.encode(prompt)) + whole.texts[0]  # the continuation, spaces included


def test_batch_of_prompts_matches_each_alone(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = ["Once upon a time there was", "Hi", "The sun was warm and"]
    batch = generate_text(model, tok, prompts, max_new_tokens=12, temperature=0.0)
    for i, prompt in enumerate(prompts):
        alone = generate_text(model, tok, prompt, max_new_tokens=12, temperature=0.0)
        assert batch.texts[i] == alone.texts[0]


def test_stop_strings(model_and_tokenizer):
    model, tok = model_and_tokenizer
    free = generate_text(model, tok, "Once upon a time", max_new_tokens=40, **SAMPLING).texts[0]
    stop = free[10:13]  # something the model really writes
    cut = generate_text(model, tok, "Once upon a time", max_new_tokens=40, stop=[stop], **SAMPLING)
    assert cut.texts[0] == free[:free.index(stop)]
    assert len(cut.new_tokens[0]) < 40
    streamed = "".join(stream_text(model, tok, "Once upon a time", max_new_tokens=40, stop=[stop], **SAMPLING))
    assert streamed == cut.texts[0]


def test_continuing_a_cache_equals_recomputing(model_and_tokenizer):
    model, tok = model_and_tokenizer
    first = tok.encode("Once upon a time")
    cache = model.new_cache(1, 64)
    stats = GenerationOutput(sequences=np.zeros((1, 0), dtype=np.int64))
    list(stream_text(model, tok, first, max_new_tokens=8, cache=cache, stats=stats, temperature=0.0))
    history = np.asarray([first + stats.new_tokens[0]])
    model(history[:, -1:], cache=cache)  # the last generated token is not fed back by generation
    second = tok.encode("The llama")
    cont = GenerationOutput(sequences=np.zeros((1, 0), dtype=np.int64))
    list(stream_text(model, tok, second, max_new_tokens=8, cache=cache, history=history, stats=cont, temperature=0.0))
    recomputed = generate(model, np.concatenate([history[0], second]), max_new_tokens=8, temperature=0.0)
    assert cont.new_tokens[0] == recomputed.new_tokens[0]


def test_timing_is_reported(model_and_tokenizer):
    model, tok = model_and_tokenizer
    out = generate_text(model, tok, "Hello", max_new_tokens=5, temperature=0.0)
    assert out.prefill_tokens == len(tok.encode("Hello")) and out.decode_tokens == len(out.new_tokens[0])
    assert out.prefill_tokens_per_second > 0 and out.decode_tokens_per_second > 0


def test_empty_prompt_is_an_error(model_and_tokenizer):
    model, tok = model_and_tokenizer
    with pytest.raises(ValueError, match="prompt is empty"):
        generate_text(model, tok, "")
    with pytest.raises(ValueError, match="prompt is empty"):
        list(stream_text(model, tok, ""))


# ---- the command line ---------------------------------------------------------------------

def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "minillama", *args], input=stdin, capture_output=True,
                          text=True, timeout=300)


def test_cli_generate_streams_and_summarises(tiny, model_and_tokenizer):
    model, tok = model_and_tokenizer
    run = cli("generate", "--model", str(tiny), "--prompt", "Once upon a time", "--max-new-tokens", "16",
              "--temperature", "0")
    assert run.returncode == 0, run.stderr
    expected = generate_text(model, tok, "Once upon a time", max_new_tokens=16, temperature=0.0).texts[0]
    assert run.stdout == "Once upon a time" + expected + "\n"
    assert "loading weights [" in run.stderr and "4/4 layers" in run.stderr
    summary = run.stderr.strip().splitlines()[-1]
    assert summary.startswith("prefill ") and "tokens/s, decode " in summary


def test_cli_chat_through_stdin(tiny):
    run = cli("chat", "--model", str(tiny), "--system", "Be brief.", "--max-new-tokens", "8", "--temperature", "0",
              stdin="Hello there\n\nHow are you?\n/exit\nnot read\n")
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("prefill ") == 2  # two turns answered, the empty line skipped, /exit honoured
    assert len(run.stdout.strip("\n").split("\n")) >= 2


def test_cli_error_found_with_the_model_is_one_clear_line(tiny):
    # Flags are checked before loading (tests/test_cli_errors.py); this one needs the model's context.
    run = cli("generate", "--model", str(tiny), "--prompt", "Hi", "--max-new-tokens", "100000")
    assert run.returncode == 1 and run.stdout == ""  # not even the prompt is echoed
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("minillama: error: ") and "exceeds the model's context of 256" in last
    assert "Traceback" not in run.stderr


def test_cli_usage_errors():
    run = cli("generate", "--model", "m")
    assert run.returncode == 2 and "--prompt" in run.stderr
    run = cli("--help")
    assert run.returncode == 0 and "generate" in run.stdout and "chat" in run.stdout
    run = cli("generate", "--model", "/nonexistent", "--prompt", "x")
    assert run.returncode == 1 and "minillama: error:" in run.stderr and "Traceback" not in run.stderr
