"""llama2.c files, convert, and "regular files only": refused with one clear line, good ones still work.

As in test_hostile_files.py: each test checks the exception class, that its message is one
line, and that it names the file and the tensor, field or argument at fault.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

import minillama
from minillama.config import LlamaConfig
from minillama.errors import CheckpointError, ConfigError
from minillama.formats.convert import convert
from minillama.formats.hf import read_hf_checkpoint
from minillama.formats.llama2c import read_llama2c_checkpoint, read_llama2c_tokenizer
from minillama.formats.safetensors import read_safetensors, write_safetensors
from minillama.formats.synthetic import write_random_checkpoint
from minillama.formats.tensors import StoredTensor
from test_hostile_files import refused, sharded


# ---- llama2.c .bin: a header that matches the file exactly ----------------------------------------

def llama2c_floats(dim=8, hidden=16, layers=2, heads=2, kv_heads=1, vocab=10, seq_len=4, shared=True) -> int:
    """How many float32 values a legacy llama2.c file of these dimensions holds after its header."""
    head = dim // heads
    per_layer = 2 * dim + dim * dim * 2 + 2 * kv_heads * head * dim + 3 * hidden * dim
    return vocab * dim + layers * per_layer + dim + 2 * seq_len * head // 2 + (0 if shared else vocab * dim)


def write_llama2c(path, header=(8, 16, 2, 2, 1, 10, 4), floats=None, extra: bytes = b""):
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = header
    if floats is None:
        floats = llama2c_floats(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len, shared=vocab > 0)
    values = np.random.default_rng(0).standard_normal(floats).astype(np.float32)
    path.write_bytes(struct.pack("<7i", *header) + values.tobytes() + extra)
    return path


def test_llama2c_good_files_still_load(tmp_path):
    for vocab in (10, -10):  # shared classifier, and one stored separately at the end
        config, tensors = read_llama2c_checkpoint(str(write_llama2c(tmp_path / "m.bin", (8, 16, 2, 2, 1, vocab, 4))))
        assert config.tie_word_embeddings == (vocab > 0) and ("lm_head.weight" in tensors) == (vocab < 0)
        assert config.num_key_value_heads == 1 and len(tensors) == 2 + 9 * 2 + (vocab < 0)
        assert minillama.load(tmp_path / "m.bin")(np.array([[1, 2, 3]])).logits.shape == (1, 3, 10)


@pytest.mark.parametrize("header,words", [
    ((8, 16, 2, 2, 1, 0, 4), "vocab_size=0"), ((8, -16, 2, 2, 1, 10, 4), "hidden_dim=-16"),
    ((0, 16, 2, 2, 1, 10, 4), "dim=0"), ((8, 16, 2, 3, 1, 10, 4), "n_heads=3"), ((8, 16, 2, 8, 1, 10, 4), "even head size"),
    ((8, 16, 2, 2, 3, 10, 4), "n_kv_heads=3"), ((8, 16, 2, 2, 1, 10, -4), "seq_len=-4"),
])
def test_llama2c_header_out_of_range_is_refused(tmp_path, header, words):
    path = write_llama2c(tmp_path / "bad.bin", header, floats=64)
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(path)), path, words)


def test_llama2c_header_of_overflowing_dims_is_refused(tmp_path):
    big = 2**31 - 1 - 1  # even, so every consistency rule holds: only the size can tell
    path = write_llama2c(tmp_path / "huge.bin", (2**30, big, big, 2**29, 2**29, -(2**31 - 1), big), floats=16)
    message = refused(CheckpointError, lambda: read_llama2c_checkpoint(str(path)), path, "truncated", "the file has 92")
    assert "header describes" in message


def test_llama2c_file_longer_than_its_header_says_is_refused(tmp_path):
    good = llama2c_floats()
    path = write_llama2c(tmp_path / "long.bin", floats=good, extra=b"\0" * 12)
    expected = 28 + 4 * good
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(path)), path, "12 bytes past",
            f"{expected} bytes expected", f"the file has {expected + 12}")
    # a file of two layers whose header claims one
    path = write_llama2c(tmp_path / "layers.bin", (8, 16, 1, 2, 1, 10, 4), floats=llama2c_floats(layers=2))
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(path)), path, "bytes past", "fewer layers")


def test_llama2c_truncated_and_odd_versions_are_refused(tmp_path):
    path = write_llama2c(tmp_path / "short.bin", floats=llama2c_floats() - 1)
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(path)), path, "truncated")
    (tmp_path / "tiny.bin").write_bytes(b"\0" * 10)
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(tmp_path / "tiny.bin")), "tiny.bin", "too short")
    (tmp_path / "v2.bin").write_bytes(struct.pack("<Ii7i", 0x616B3432, 2, 8, 16, 2, 2, 1, 10, 4).ljust(256, b"\0"))
    refused(CheckpointError, lambda: read_llama2c_checkpoint(str(tmp_path / "v2.bin")), "v2.bin", "version 2")


def test_llama2c_tokenizer_with_a_bad_length_is_refused(tmp_path):
    path = tmp_path / "tokenizer.bin"
    good = struct.pack("<i", 8) + b"".join(struct.pack("<fi", 0.0, len(p)) + p for p in (b"<unk>", b"<s>", b"a"))
    path.write_bytes(good)
    assert read_llama2c_tokenizer(str(path), 3) is not None
    for length in (-5, 1000):
        path.write_bytes(good + struct.pack("<fi", 0.0, length) + b"xyz")
        refused(CheckpointError, lambda: read_llama2c_tokenizer(str(path), 4), path, "token 3 claims")


# ---- convert: held to the config, atomic, carrying the tokenizer ----------------------------------

def source_with(folder, change):
    """A random HF folder whose tensors went through ``change(dict of arrays) -> dict of arrays``."""
    write_random_checkpoint(folder, dict(num_hidden_layers=2))
    arrays = change({n: t.numpy() for n, t in read_hf_checkpoint(folder).items()})
    (folder / "model.safetensors").unlink()
    codes = {"float32": "F32", "float16": "F16", "int64": "I64", "float64": "F64"}
    stored = {n: StoredTensor(n, codes[a.dtype.name], a.shape, "", a) for n, a in arrays.items()}
    write_safetensors(str(folder / "model.safetensors"), list(stored), stored)
    return arrays


def nothing_written(tmp_path):
    return not any(name.startswith("out") for name in os.listdir(tmp_path))


@pytest.mark.parametrize("change,words", [
    (lambda a: {**a, "model.norm.weight": a["model.norm.weight"][:10]}, "'model.norm.weight' has shape (10,), but the config needs (64,)"),
    (lambda a: {n: v for n, v in a.items() if n != "model.layers.1.mlp.up_proj.weight"}, "'model.layers.1.mlp.up_proj.weight' is missing"),
    (lambda a: {**a, "model.layers.2.mlp.up_proj.weight": a["model.norm.weight"]}, "num_hidden_layers=2, but the checkpoint holds 3"),
    (lambda a: {**a, "model.extra.weight": a["model.norm.weight"]}, "'model.extra.weight' is not part of a Llama"),
    (lambda a: {**a, "model.norm.weight": a["model.norm.weight"].astype(np.int64)}, "'model.norm.weight' has dtype I64"),
])
def test_convert_refuses_tensors_that_disagree_with_the_config_before_writing(tmp_path, change, words):
    source_with(tmp_path / "src", change)
    refused(CheckpointError, lambda: convert(str(tmp_path / "src"), str(tmp_path / "out")), tmp_path / "src", words)
    assert nothing_written(tmp_path)


def test_convert_refuses_a_billion_layer_config_at_once(tmp_path):
    import time
    write_random_checkpoint(tmp_path / "src", dict(num_hidden_layers=2))
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**9}))
    start = time.perf_counter()
    refused(CheckpointError, lambda: convert(str(tmp_path / "src"), str(tmp_path / "out")), "num_hidden_layers=1000000000")
    assert time.perf_counter() - start < 5 and nothing_written(tmp_path)


def test_convert_of_a_meta_folder_takes_the_tokenizer_from_beside_it(tmp_path):
    from pth_writer import write_pth
    rng = np.random.default_rng(0)
    dim, hidden, vocab = 64, 192, 96  # Meta's rule: 2/3 of 4 * dim, rounded up to multiple_of=32
    shapes = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,), "output.weight": (vocab, dim)}
    for i in range(2):
        shapes.update({f"layers.{i}.attention_norm.weight": (dim,), f"layers.{i}.ffn_norm.weight": (dim,),
                       f"layers.{i}.feed_forward.w1.weight": (hidden, dim), f"layers.{i}.feed_forward.w3.weight": (hidden, dim),
                       f"layers.{i}.feed_forward.w2.weight": (dim, hidden)})
        shapes.update({f"layers.{i}.attention.{w}.weight": (dim, dim) for w in ("wq", "wk", "wv", "wo")})
    folder = tmp_path / "download" / "llama-2-tiny"
    folder.mkdir(parents=True)
    write_pth(folder / "consolidated.00.pth", {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()})
    (folder / "params.json").write_text(json.dumps({"dim": dim, "n_layers": 2, "n_heads": 4, "multiple_of": 32,
                                                    "norm_eps": 1e-5, "vocab_size": vocab}))
    (tmp_path / "download" / "tokenizer.model").write_bytes(b"a sentencepiece model")
    convert(str(folder), str(tmp_path / "out"))
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == b"a sentencepiece model"
    assert minillama.load(tmp_path / "out")(np.array([[1, 2]])).logits.shape == (1, 2, vocab)


@pytest.mark.parametrize("bad", [0, -1, 1.5, float("inf"), float("nan"), True, "5", None])
def test_convert_refuses_a_bad_max_shard_bytes(tmp_path, bad):
    write_random_checkpoint(tmp_path / "src")
    refused(ValueError, lambda: convert(str(tmp_path / "src"), str(tmp_path / "out"), bad), "max_shard_bytes", repr(bad))
    assert nothing_written(tmp_path)


def test_convert_widens_mixed_dtypes_exactly(tmp_path):
    arrays = source_with(tmp_path / "src", lambda a: {n: v if n.endswith("norm.weight") else v.astype(np.float16)
                                                      for n, v in a.items()})
    assert {a.dtype.name for a in arrays.values()} == {"float32", "float16"}
    convert(str(tmp_path / "src"), str(tmp_path / "out"), 100_000)
    converted = read_hf_checkpoint(tmp_path / "out")
    assert set(converted) == set(arrays) and {t.dtype for t in converted.values()} == {"F32"}
    for name, array in arrays.items():
        np.testing.assert_array_equal(converted[name].numpy(), array.astype(np.float32))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "float32"
    one = source_with(tmp_path / "f16", lambda a: {n: v.astype(np.float16) for n, v in a.items()})
    convert(str(tmp_path / "f16"), str(tmp_path / "out16"))  # one dtype: kept as it is
    assert {t.dtype for t in read_hf_checkpoint(tmp_path / "out16").values()} == {"F16"} and len(one) == 21


def test_convert_carries_every_tokenizer_file_unchanged(tmp_path):
    src = tmp_path / "src"
    write_random_checkpoint(src, tokenizer=True)
    files = {"tokenizer_config.json": json.dumps({"tokenizer_class": "LlamaTokenizer", "pad_token": "<unk>",
                                                  "model_max_length": 1234, "add_bos_token": True}),
             "tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}',
             "special_tokens_map.json": '{"bos_token": "<s>", "pad_token": "<unk>"}',
             "added_tokens.json": '{"<extra>": 512}', "generation_config.json": '{"do_sample": true, "temperature": 0.6}'}
    for name, text in files.items():
        (src / name).write_text(text)
    convert(str(src), str(tmp_path / "out"))
    for name in (*files, "tokenizer.model"):
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes(), name
    write_random_checkpoint(tmp_path / "bare", tokenizer=True)  # only tokenizer.model: a default tokenizer_config.json
    (tmp_path / "bare" / "tokenizer_config.json").unlink()
    convert(str(tmp_path / "bare"), str(tmp_path / "out2"))
    assert json.loads((tmp_path / "out2" / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"


def test_convert_restores_the_signal_handlers_it_replaced(tmp_path):
    import signal
    write_random_checkpoint(tmp_path / "src")
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    seen = []
    convert(str(tmp_path / "src"), str(tmp_path / "out"), progress=lambda name: seen.append(signal.getsignal(signal.SIGTERM)))
    assert seen and all(h is not before[signal.SIGTERM] for h in seen)  # replaced while writing
    assert {s: signal.getsignal(s) for s in before} == before


CONVERT_AND_WAIT = """
import sys, time
from minillama.formats.convert import convert
def progress(name):
    print("writing", flush=True)
    time.sleep(60)
convert(sys.argv[1], sys.argv[2], 60_000, progress)
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_convert_stopped_by_a_signal_leaves_no_partial_folder(tmp_path, signame):
    import selectors
    import signal
    import subprocess
    import sys
    write_random_checkpoint(tmp_path / "src", max_shard_bytes=100_000)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    child = subprocess.Popen([sys.executable, "-c", CONVERT_AND_WAIT, str(tmp_path / "src"), str(tmp_path / "out")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        selector = selectors.DefaultSelector()
        selector.register(child.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=60), "convert did not start writing"
        assert child.stdout.readline() == b"writing\n"
        assert any(n.startswith("out.partial-") for n in os.listdir(tmp_path))  # the work folder exists now
        child.send_signal(getattr(signal, signame))
        child.wait(timeout=60)
    finally:
        child.kill()
        child.wait()
    signum = getattr(signal, signame)
    # SIGINT: KeyboardInterrupt, which Python ends with the signal itself; the others: exit status 128 + signal
    assert child.returncode == (-signum if signame == "SIGINT" else 128 + signum), child.stderr.read()
    assert nothing_written(tmp_path), os.listdir(tmp_path)


# ---- regular files only: a FIFO or a device never blocks a read; JSON within limits ----------------

def returns_within(seconds, call):
    """Run ``call`` in a daemon thread; it must finish (return or raise) within ``seconds``. Returns its exception."""
    import threading
    outcome = []

    def run():
        try:
            call()
            outcome.append(None)
        except BaseException as error:  # noqa: B902 - handed to the test
            outcome.append(error)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s (blocked on a FIFO?)"
    return outcome[0]


def release(fifo):
    """Unblock a reader that did open the FIFO (so a failing test leaves no thread stuck)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def fifo_in_place_of(path):
    if os.path.lexists(path):
        os.unlink(path)
    os.mkfifo(path)
    return path


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


@needs_fifo
@pytest.mark.parametrize("name,error", [("config.json", ConfigError), ("model.safetensors", CheckpointError),
                                        ("model.safetensors.index.json", CheckpointError),
                                        ("model-00002-of-00006.safetensors", CheckpointError),
                                        ("pytorch_model.bin", CheckpointError)])
def test_fifo_in_place_of_a_checkpoint_file_is_refused_at_once(tmp_path, name, error):
    folder = tmp_path / "ckpt"
    if name.startswith("model-") or name.endswith("index.json"):
        sharded(folder)
    else:
        write_random_checkpoint(folder)
        if name == "pytorch_model.bin":
            (folder / "model.safetensors").unlink()
    fifo = fifo_in_place_of(folder / name)
    try:
        caught = returns_within(10, lambda: minillama.load(folder))
    finally:
        release(fifo)
    assert isinstance(caught, error), repr(caught)
    assert "\n" not in str(caught) and str(fifo) in str(caught) and "not a regular file" in str(caught)


@needs_fifo
def test_fifo_given_as_the_checkpoint_or_tokenizer_is_refused_at_once(tmp_path):
    for call, path in [(lambda p: minillama.load(p), tmp_path / "model.bin"),
                       (lambda p: read_llama2c_checkpoint(str(p)), tmp_path / "direct.bin"),
                       (lambda p: read_llama2c_tokenizer(str(p), 10), tmp_path / "tokenizer.bin"),
                       (lambda p: read_safetensors(p), tmp_path / "x.safetensors"),
                       (lambda p: LlamaConfig.from_json_file(p), tmp_path / "config.json")]:
        fifo = fifo_in_place_of(path)
        try:
            caught = returns_within(10, lambda: call(fifo))
        finally:
            release(fifo)
        assert isinstance(caught, (CheckpointError, ConfigError)) and str(fifo) in str(caught), repr(caught)


@needs_fifo
@pytest.mark.parametrize("name", ["tokenizer.model", "tokenizer_config.json", "generation_config.json"])
def test_convert_refuses_a_fifo_among_the_tokenizer_files_before_writing(tmp_path, name):
    write_random_checkpoint(tmp_path / "src", tokenizer=True)
    fifo = fifo_in_place_of(tmp_path / "src" / name)
    try:
        caught = returns_within(10, lambda: convert(str(tmp_path / "src"), str(tmp_path / "out")))
    finally:
        release(fifo)
    assert isinstance(caught, CheckpointError) and str(fifo) in str(caught), repr(caught)
    assert nothing_written(tmp_path)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_link_to_a_device_is_refused(tmp_path):
    write_random_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    os.symlink("/dev/zero", tmp_path / "model.safetensors")
    refused(CheckpointError, lambda: minillama.load(tmp_path), tmp_path / "model.safetensors", "not a regular file")


def test_oversized_json_files_are_refused_before_reading(tmp_path):
    from minillama.files import JSON_LIMIT
    index_path, _ = sharded(tmp_path / "ckpt")
    with open(index_path, "r+b") as f:
        f.truncate(JSON_LIMIT + 1)  # sparse: no disk used, but too large for an index
    refused(CheckpointError, lambda: read_hf_checkpoint(tmp_path / "ckpt"), index_path, f"{JSON_LIMIT + 1} bytes is too large")
    with open(tmp_path / "ckpt" / "config.json", "r+b") as f:
        f.truncate(JSON_LIMIT + 1)
    refused(ConfigError, lambda: minillama.load(tmp_path / "ckpt"), tmp_path / "ckpt" / "config.json", "too large")


def test_the_package_never_imports_the_safetensors_library(tmp_path):
    import subprocess
    import sys
    write_random_checkpoint(tmp_path / "src")
    script = ("import sys; sys.modules['safetensors'] = None\n"  # any import of it would now fail
              "import minillama\nfrom minillama.formats.convert import convert\n"
              f"convert({str(tmp_path / 'src')!r}, {str(tmp_path / 'out')!r})\n"
              f"print(minillama.load({str(tmp_path / 'out')!r})([[1, 2]]).logits.shape)")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "(1, 2, 512)", run.stderr
