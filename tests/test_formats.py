"""Meta's .pth release, llama2.c .bin files and the convert command: loaded without torch, safely, and
checked against transformers and against an independent llama2.c-style forward."""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile

import numpy as np
import pytest

import minillama
from minillama.errors import CheckpointError
from minillama.formats.hf import read_hf_checkpoint
from minillama.formats.tensors import rotate_half_to_interleaved
from minillama.formats.convert import convert
from minillama.formats.meta import meta_intermediate_size
from minillama.formats.pth import read_pth
from conftest import SHARED

STORIES = os.path.join(SHARED, "models", "stories260K", "stories260K.bin")
needs_stories = pytest.mark.skipif(not os.path.exists(STORIES), reason="../shared/models/stories260K is absent")


def test_meta_intermediate_sizes_of_real_models():
    assert meta_intermediate_size(4096, 256, None) == 11008  # Llama 2 7B
    assert meta_intermediate_size(5120, 256, None) == 13824  # Llama 2 13B
    assert meta_intermediate_size(8192, 4096, 1.3) == 28672  # Llama 2 70B


# ---- Meta checkpoints, made from a random HF model by undoing the conversion ---------------------

SPLIT = {"attention.wq.weight": 0, "attention.wk.weight": 0, "attention.wv.weight": 0, "attention.wo.weight": 1,
         "feed_forward.w1.weight": 0, "feed_forward.w2.weight": 1, "feed_forward.w3.weight": 0}


def write_meta(reference, folder, shards: int, dtype: str, ffn_dim_multiplier=None, multiple_of=32):
    """Write a Meta-style folder holding ``reference``'s weights: interleaved q/k, Meta names, model-parallel shards."""
    import torch
    c = reference.config
    sd = {k: v.detach().float().numpy() for k, v in reference.state_dict().items()}
    meta = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
            "output.weight": sd["lm_head.weight"]}
    hf = {"attention_norm.weight": "input_layernorm.weight", "attention.wq.weight": "self_attn.q_proj.weight",
          "attention.wk.weight": "self_attn.k_proj.weight", "attention.wv.weight": "self_attn.v_proj.weight",
          "attention.wo.weight": "self_attn.o_proj.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
          "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
          "feed_forward.w3.weight": "mlp.up_proj.weight"}
    for i in range(c.num_hidden_layers):
        for m, h in hf.items():
            w = sd[f"model.layers.{i}.{h}"]
            if m == "attention.wq.weight":
                w = rotate_half_to_interleaved(w, c.num_attention_heads)
            elif m == "attention.wk.weight":
                w = rotate_half_to_interleaved(w, c.num_key_value_heads)
            meta[f"layers.{i}.{m}"] = w
    os.makedirs(folder, exist_ok=True)
    torch_dtype = getattr(torch, dtype)
    for s in range(shards):
        part = {}
        for name, w in meta.items():
            axis = 1 if name == "tok_embeddings.weight" else 0 if name == "output.weight" else \
                next((a for k, a in SPLIT.items() if name.endswith(k)), None)
            if axis is not None:
                w = np.split(w, shards, axis=axis)[s]
            part[name] = torch.from_numpy(np.ascontiguousarray(w)).to(torch_dtype)
        torch.save(part, os.path.join(folder, f"consolidated.{s:02d}.pth"))
    params = {"dim": c.hidden_size, "n_layers": c.num_hidden_layers, "n_heads": c.num_attention_heads,
              "n_kv_heads": c.num_key_value_heads, "vocab_size": -1, "multiple_of": multiple_of,
              "ffn_dim_multiplier": ffn_dim_multiplier, "norm_eps": c.rms_norm_eps, "max_seq_len": 64}
    with open(os.path.join(folder, "params.json"), "w") as f:
        json.dump(params, f)


@pytest.mark.parametrize("shards,dtype,ffn", [(1, "float32", None), (2, "float16", None), (2, "bfloat16", 1.3)])
def test_meta_checkpoint_logits_equal_hf(tmp_path, shards, dtype, ffn):
    pytest.importorskip("torch")
    from conftest import make_hf_checkpoint, torch_forward
    inter = meta_intermediate_size(64, 32, ffn)
    reference = make_hf_checkpoint(tmp_path / "hf", num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=inter, save_dtype=dtype)
    write_meta(reference, tmp_path / "meta", shards, dtype, ffn)
    model = minillama.load(tmp_path / "meta")
    assert model.config.intermediate_size == inter and model.config.vocab_size == 96
    ids = np.random.default_rng(0).integers(0, 96, size=(2, 20))
    expected = torch_forward(reference, ids).logits.numpy()
    assert np.abs(model(ids).logits - expected).max() < 1e-4


def test_convert_meta_round_trips_and_loads_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    import transformers
    from conftest import make_hf_checkpoint, torch_forward
    reference = make_hf_checkpoint(tmp_path / "hf", num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=meta_intermediate_size(64, 32, None), save_dtype="bfloat16")
    write_meta(reference, tmp_path / "meta", 2, "bfloat16")
    convert(str(tmp_path / "meta"), str(tmp_path / "out"), max_shard_bytes=60_000)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    original, converted = read_hf_checkpoint(tmp_path / "hf"), read_hf_checkpoint(tmp_path / "out")
    assert set(original) == set(converted)
    for name in original:  # the same bits, bfloat16 kept as bfloat16
        assert converted[name].dtype == "BF16"
        np.testing.assert_array_equal(converted[name].raw(), original[name].raw())
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    ids = np.random.default_rng(1).integers(0, 96, size=(1, 16))
    expected = torch_forward(reference, ids).logits.numpy()
    np.testing.assert_array_equal(torch_forward(again, ids).logits.numpy(), expected)
    assert np.abs(minillama.load(tmp_path / "out")(ids).logits - expected).max() < 1e-4


def test_convert_refuses_a_non_empty_target(tmp_path):
    from minillama.formats.synthetic import write_random_checkpoint
    write_random_checkpoint(tmp_path / "source")  # a real checkpoint, so only the target can be refused
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        convert(str(tmp_path / "source"), str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == ["keep.txt"]


# ---- .pth safety ------------------------------------------------------------------------------

class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pth_naming_another_global_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "consolidated.00.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"tok_embeddings.weight": Exploit(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refusing to load: the pickle names (posix|os)\.system"):
        read_pth(path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(Exploit(tmp_path / "control")))  # the same payload does run under plain pickle
    assert (tmp_path / "control").exists()


def test_pth_that_is_not_a_zip(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(CheckpointError, match="bad.pth: not a PyTorch zip checkpoint"):
        read_pth(path)


# ---- llama2.c --------------------------------------------------------------------------------

def llama2c_reference_logits(path, tokens):
    """An independent forward written after llama2.c's run.c: raw .bin arrays, interleaved RoPE, one token at a time."""
    header = np.fromfile(path, dtype=np.int32, count=7)
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = (int(v) for v in header)
    shared, vocab = vocab > 0, abs(vocab)
    head = dim // heads
    kv_dim = kv_heads * head
    w = np.fromfile(path, dtype=np.float32, offset=28)
    at = 0

    def take(*shape):
        nonlocal at
        n = math.prod(shape)
        out = w[at:at + n].reshape(shape)
        at += n
        return out
    emb = take(vocab, dim)
    rms_att, wq, wk, wv, wo = take(layers, dim), take(layers, dim, dim), take(layers, kv_dim, dim), \
        take(layers, kv_dim, dim), take(layers, dim, dim)
    rms_ffn, w1, w2, w3 = take(layers, dim), take(layers, hidden, dim), take(layers, dim, hidden), take(layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len, head // 2), take(seq_len, head // 2)
    wcls = emb if shared else take(vocab, dim)

    def rmsnorm(x, g):
        return g * x / np.sqrt(np.mean(x * x) + 1e-5)

    def rope(v, pos):  # rotate pairs (v[i], v[i+1]) of each head
        v = v.copy()
        for i in range(0, v.shape[0], 2):
            freq = 1.0 / 10000.0 ** ((i % head) / head)
            c, s = math.cos(pos * freq), math.sin(pos * freq)
            v[i], v[i + 1] = v[i] * c - v[i + 1] * s, v[i] * s + v[i + 1] * c
        return v
    k_cache = np.zeros((layers, len(tokens), kv_dim))
    v_cache = np.zeros((layers, len(tokens), kv_dim))
    all_logits = []
    for pos, token in enumerate(tokens):
        x = emb[token].astype(np.float64)
        for l in range(layers):
            xb = rmsnorm(x, rms_att[l])
            q, k, v = rope(wq[l] @ xb, pos), rope(wk[l] @ xb, pos), wv[l] @ xb
            k_cache[l, pos], v_cache[l, pos] = k, v
            out = np.zeros(dim)
            for h in range(heads):
                kh = h // (heads // kv_heads)
                keys = k_cache[l, :pos + 1, kh * head:(kh + 1) * head]
                att = keys @ q[h * head:(h + 1) * head] / math.sqrt(head)
                att = np.exp(att - att.max())
                att /= att.sum()
                out[h * head:(h + 1) * head] = att @ v_cache[l, :pos + 1, kh * head:(kh + 1) * head]
            x = x + wo[l] @ out
            xb = rmsnorm(x, rms_ffn[l])
            g = w1[l] @ xb
            x = x + w2[l] @ ((g / (1 + np.exp(-g))) * (w3[l] @ xb))
        all_logits.append(wcls @ rmsnorm(x, rms_final))
    return np.array(all_logits)


TOKENS = [1, 200, 300, 45, 17, 99, 411, 3, 260, 77]


@needs_stories
def test_stories260k_matches_a_llama2c_style_forward():
    model = minillama.load(STORIES)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.vocab_size) == (8, 4, 512)
    ours = model(np.array([TOKENS])).logits[0]
    assert np.abs(ours - llama2c_reference_logits(STORIES, TOKENS)).max() < 1e-4


@needs_stories
def test_stories260k_converted_matches_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    import transformers
    convert(STORIES, str(tmp_path / "hf"))
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([TOKENS])).logits.numpy()
    direct = minillama.load(STORIES)(np.array([TOKENS])).logits
    assert np.abs(direct - expected).max() < 1e-4
    np.testing.assert_array_equal(minillama.load(tmp_path / "hf")(np.array([TOKENS])).logits, direct)


@needs_stories
def test_llama2c_version1_file_reads_the_same(tmp_path):
    model = minillama.load(STORIES)
    c, w = model.config, model.weights
    from minillama.formats.tensors import rotate_half_to_interleaved as back
    header = np.array([0x616B3432, 1, c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                       c.num_attention_heads, c.num_key_value_heads, c.vocab_size, c.max_position_embeddings],
                      dtype=np.uint32).tobytes() + b"\x01"
    layers = w.layers
    arrays = [l.attn_norm for l in layers] + [l.mlp_norm for l in layers] + [w.norm, w.embed_tokens] + \
        [back(np.asarray(l.q_proj), c.num_attention_heads) for l in layers] + \
        [back(np.asarray(l.k_proj), c.num_key_value_heads) for l in layers] + \
        [l.v_proj for l in layers] + [l.o_proj for l in layers] + [l.gate_proj for l in layers] + \
        [l.down_proj for l in layers] + [l.up_proj for l in layers]
    path = tmp_path / "v1.bin"
    with open(path, "wb") as f:
        f.write(header.ljust(256, b"\0"))
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    np.testing.assert_array_equal(minillama.load(path)(np.array([TOKENS])).logits, model(np.array([TOKENS])).logits)


@needs_stories
def test_truncated_bin_names_the_file(tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(open(STORIES, "rb").read()[:50_000])
    with pytest.raises(CheckpointError, match=r"cut.bin: truncated: the header describes \d+ bytes, the file has 50000"):
        minillama.load(path)


def test_llama2c_tokenizer_bin_matches_sentencepiece(tmp_path):
    """Write the real Llama 2 tokenizer in llama2.c's tokenizer.bin format (as its tokenizer.py does) and read it back."""
    model_path = os.path.join(SHARED, "models", "llama2-tokenizer", "tokenizer.model")
    if not os.path.exists(model_path):
        pytest.skip("../shared/models/llama2-tokenizer is absent")
    import sentencepiece
    from minillama.formats.llama2c import read_llama2c_tokenizer
    from tokenizer_corpus import corpus
    sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    tokens = []
    for i in range(sp.get_piece_size()):
        t = sp.id_to_piece(i)
        if i == sp.bos_id():
            t = "\n<s>\n"
        elif i == sp.eos_id():
            t = "\n</s>\n"
        tokens.append((t.replace("\u2581", " ").encode("utf-8"), sp.get_score(i)))
    path = tmp_path / "tokenizer.bin"
    with open(path, "wb") as f:
        f.write(np.int32(max(len(t) for t, _ in tokens)).tobytes())
        for t, score in tokens:
            f.write(np.float32(score).tobytes() + np.int32(len(t)).tobytes() + t)
    bpe = read_llama2c_tokenizer(path, sp.get_piece_size())
    for s in corpus()[:400]:
        assert bpe.encode(s) == sp.encode(s), repr(s)


# ---- the convert and inspect commands ---------------------------------------------------------

def cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "minillama", *args], capture_output=True, text=True, timeout=300)


@needs_stories
def test_cli_convert_and_inspect(tmp_path):
    run = cli("convert", STORIES, str(tmp_path / "hf"))
    assert run.returncode == 0, run.stderr
    assert "47 tensors, from a llama2c checkpoint" in run.stdout and "47/47 tensors" in run.stderr
    np.testing.assert_array_equal(minillama.load(tmp_path / "hf")(np.array([TOKENS])).logits,
                                  minillama.load(STORIES)(np.array([TOKENS])).logits)
    for path in (STORIES, str(tmp_path / "hf")):
        info = cli("inspect", path)
        assert info.returncode == 0, info.stderr
        assert "parameters:  260,032" in info.stdout and "heads 8 (kv 4, head_dim 8)" in info.stdout
        assert "numpy    float32" in info.stdout
    again = cli("convert", STORIES, str(tmp_path / "hf"))
    assert again.returncode == 1 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_cli_refuses_a_malicious_pth(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "meta"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 1, "n_heads": 4}))
    with zipfile.ZipFile(folder / "consolidated.00.pth", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": Exploit(marker)}, protocol=2))
    for args in (["inspect", str(folder)], ["convert", str(folder), str(tmp_path / "out")]):
        run = cli(*args)
        assert run.returncode == 1 and "refusing to load" in run.stderr and "Traceback" not in run.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_synthetic_checkpoint_has_real_names_and_shards(tmp_path):
    from minillama.formats.names import tensor_shapes
    from minillama.formats.synthetic import write_random_checkpoint
    config = write_random_checkpoint(tmp_path / "s", dict(num_hidden_layers=3), dtype="float16", max_shard_bytes=150_000)
    tensors = read_hf_checkpoint(tmp_path / "s")
    assert set(tensors) == set(tensor_shapes(config)) and {t.dtype for t in tensors.values()} == {"F16"}
    assert len(list((tmp_path / "s").glob("model-*.safetensors"))) > 1
    assert oct(os.stat(tmp_path / "s").st_mode & 0o777) == "0o755"


def _resident_fraction(array: np.ndarray) -> float:
    """Fraction of the file pages under a memory-mapped array that are in the page cache (Linux mincore)."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    address = array.__array_interface__["data"][0]
    start = address // page * page
    pages = -(-(address + array.nbytes - start) // page)
    status = (ctypes.c_ubyte * pages)()
    assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(pages * page), status) == 0
    return sum(b & 1 for b in status) / pages


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not os.path.exists("/proc/self/status"), reason="Linux only")
def test_embedding_pages_are_read_ahead_when_a_model_loads(tmp_path):
    # Decoding reads one embedding row per token; a row whose page is not yet in memory would be a
    # disk read in the middle of generation. load_weights asks the kernel for the whole table up front.
    import time
    from minillama.formats.synthetic import write_random_checkpoint
    write_random_checkpoint(tmp_path, dict(hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                           num_attention_heads=4, num_key_value_heads=4, vocab_size=32000))
    for name in os.listdir(tmp_path):  # evict the files from the page cache (clean pages; needs no privilege)
        fd = os.open(tmp_path / name, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    model = minillama.load(tmp_path)
    table = model.weights.embed_tokens  # 32 MiB, memory-mapped: more than one read-ahead call covers
    assert isinstance(table.base, np.memmap)
    deadline = time.time() + 5
    while _resident_fraction(table) < 0.99 and time.time() < deadline:
        time.sleep(0.05)
    assert _resident_fraction(table) >= 0.99
