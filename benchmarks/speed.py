"""CPU decode and prefill speed against transformers and the memory-bandwidth roofline, in one run.

    python benchmarks/speed.py [--shapes stories15M stories110M tinyllama-1.1B] [--repeats 3]
                               [--new-tokens 256] [--prompt-tokens 512] [--threads 2]

For each named shape a random float32 checkpoint is written once (transformers'
save_pretrained, so both libraries read the very same file). Then, alternating the two
libraries and repeating:

* decode: batch 1, greedy, --new-tokens new tokens after a one-token prompt; tokens/s
  over the decode steps (the time of a 1-new-token run, i.e. the prefill, is subtracted);
* prefill: the prompt pass of generation over a --prompt-tokens prompt (KV cache filled,
  logits of the last position only, as both libraries' generate does); tokens/s.

The roofline is the decode speed if every step did nothing but stream the weights from
memory once: measured bandwidth (a large float32 matrix-vector product, in this run) /
bytes of weights read per token. Prints median tokens/s, min-max, the ratio to
transformers and the fraction of the roofline; writes JSON and a plot into docs/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np

SHAPES = {
    "stories15M": dict(hidden_size=288, intermediate_size=768, num_hidden_layers=6, num_attention_heads=6,
                       num_key_value_heads=6, vocab_size=32000, max_position_embeddings=1024),
    "stories110M": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                        num_key_value_heads=12, vocab_size=32000, max_position_embeddings=1024),
    "tinyllama-1.1B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
}


def rss_peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_bandwidth(repeats: int = 5) -> dict:
    """Bytes per second streamed by float32 matrix-vector products (the decode-step pattern).

    "single": one 1 GiB matrix, the issue's "large GEMV". "best": the fastest of several
    patterns that also stream 1 GiB (sixteen 64 MiB matrices of two shapes), each in both
    memory orders. Each figure is a median over runs; "best" is the stricter roofline.
    """
    rng = np.random.default_rng(0)

    def median_rate(mats, x):
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for m in mats:
                x @ m.T
            rates.append(sum(m.nbytes for m in mats) / (time.perf_counter() - start))
        return statistics.median(rates)

    results = {}
    for name, shape, count in (("single", (32768, 8192), 1), ("64MiB-wide", (2048, 8192), 16),
                               ("64MiB-tall", (8192, 2048), 16)):
        mats = [rng.random(shape, dtype=np.float32) for _ in range(count)]
        x = np.ones((1, shape[1]), dtype=np.float32)
        results[name] = max(median_rate(mats, x), median_rate([np.asfortranarray(m) for m in mats], x))
        del mats
    return {"single": results["single"], "best": max(results.values()), "patterns": results}


def weight_bytes_per_token(config) -> int:
    """Bytes read per decoded token: every matrix once (the embedding table only as the LM head when tied)."""
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_layer = c.hidden_size * (q + 2 * kv) + q * c.hidden_size + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
    return 4 * (c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size + c.hidden_size)


def make_checkpoint(folder, shape):
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SHAPES[shape], rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # weights of a useful scale, so greedy decoding does not collapse to one token
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, p.shape[-1] ** -0.5)
    model.save_pretrained(folder)


def time_ours(model, prompt_ids, new_tokens):
    from minillama import generate
    start = time.perf_counter()
    generate(model, prompt_ids, max_new_tokens=new_tokens, eos_token_id=[])
    return time.perf_counter() - start


def time_theirs(model, prompt_ids, new_tokens):
    import torch
    ids = torch.as_tensor(prompt_ids)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       eos_token_id=None, pad_token_id=0)
    return time.perf_counter() - start


def prefill_ours(model, ids):
    """The prompt pass of generation: fill a KV cache, logits of the last position only."""
    start = time.perf_counter()
    model(ids, cache=model.new_cache(1, ids.shape[1]), logits_to_keep=1)
    return time.perf_counter() - start


def prefill_theirs(model, ids):
    """The same for transformers: use_cache=True, logits_to_keep=1 (what its generate does)."""
    import torch
    start = time.perf_counter()
    with torch.no_grad():
        model(torch.as_tensor(ids), use_cache=True, logits_to_keep=1)
    return time.perf_counter() - start


def worker(lib, folder, new_tokens, prompt_tokens, threads):
    """One measurement of one library, in a fresh process (so neither library's idle threads,
    which spin for a while after each call, slow the other down). Prints JSON."""
    if lib == "ours":  # torch is not even imported here: its thread pool must not compete with OpenBLAS's
        import minillama
        model, gen, pre = minillama.load(folder), time_ours, prefill_ours
    else:
        import torch
        import transformers
        torch.set_num_threads(threads)
        model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        gen, pre = time_theirs, prefill_theirs
    rng = np.random.default_rng(1)
    short = rng.integers(3, 32000, size=(1, 1))
    long = rng.integers(3, 32000, size=(1, prompt_tokens))
    pre(model, long[:, :16])  # warm up
    one = min(gen(model, short, 1) for _ in range(2))
    total = gen(model, short, new_tokens)
    decode = (new_tokens - 1) / (total - one)
    prefill = prompt_tokens / min(pre(model, long) for _ in range(3))
    print(json.dumps({"decode": decode, "prefill": prefill}))


def run_shape(shape, folder, args, bandwidth):
    import subprocess
    import sys
    import minillama
    from minillama.config import LlamaConfig
    config = LlamaConfig.from_pretrained(folder)
    del minillama
    runs = {k: [] for k in ("ours_decode", "theirs_decode", "ours_prefill", "theirs_prefill")}
    for _ in range(args.repeats):
        for lib in ("ours", "theirs"):
            out = subprocess.run([sys.executable, __file__, "--worker", lib, "--folder", folder,
                                  "--new-tokens", str(args.new_tokens), "--prompt-tokens", str(args.prompt_tokens),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs[f"{lib}_decode"].append(result["decode"])
            runs[f"{lib}_prefill"].append(result["prefill"])
    roofline = bandwidth["single"] / weight_bytes_per_token(config)
    strict_roofline = bandwidth["best"] / weight_bytes_per_token(config)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return dict(shape=shape, runs=runs, median=med, roofline_tokens_per_s=roofline,
                strict_roofline_tokens_per_s=strict_roofline,
                decode_ratio=med["ours_decode"] / med["theirs_decode"],
                prefill_ratio=med["ours_prefill"] / med["theirs_prefill"],
                decode_fraction_of_roofline=med["ours_decode"] / roofline,
                decode_fraction_of_strict_roofline=med["ours_decode"] / strict_roofline,
                weight_bytes_per_token=weight_bytes_per_token(config))


def memory_check(folder, new_tokens):
    """Peak resident memory of a fresh process that loads the model and decodes: vs weights + cache."""
    import subprocess
    import sys
    script = (
        "import sys, numpy as np, minillama\n"
        "base = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmRSS:')][0]\n"
        f"m = minillama.load({folder!r})\n"
        f"minillama.generate(m, np.array([[1]]), max_new_tokens={new_tokens}, eos_token_id=[])\n"
        "weights = m.num_parameters() * 4\n"
        "c = m.config\n"
        f"cache = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * ({new_tokens} + 1) * 4\n"
        "peak = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(weights, cache, peak, base)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    weights, cache, peak, base = (int(v) for v in out)
    return dict(weights_bytes=weights, cache_bytes=cache, peak_rss_bytes=peak, baseline_rss_bytes=base,
                ratio=peak / (weights + cache), ratio_above_baseline=(peak - base) / (weights + cache))


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(rows))
    width = 0.27
    bars = [("minillama", [r["median"]["ours_decode"] for r in rows]),
            ("transformers", [r["median"]["theirs_decode"] for r in rows]),
            ("roofline (1 GiB GEMV)", [r["roofline_tokens_per_s"] for r in rows])]
    for i, (label, values) in enumerate(bars):
        ax.bar(x + (i - 1) * width, values, width, label=label)
    ax.set_xticks(x, [r["shape"] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("decode tokens/s (batch 1, log scale)")
    ax.set_title("Decode speed on the CPU, measured in one run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "minillama-speed"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks"))
    parser.add_argument("--worker", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.folder, args.new_tokens, args.prompt_tokens, args.threads)

    import torch
    bandwidth = measure_bandwidth()
    rows = []
    for shape in args.shapes:
        folder = os.path.join(args.workdir, shape)
        if not os.path.exists(os.path.join(folder, "config.json")):
            make_checkpoint(folder, shape)
        rows.append(run_shape(shape, folder, args, bandwidth))
        rows[-1]["memory"] = memory_check(folder, args.new_tokens)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, threads {args.threads}, NumPy {np.__version__}, "
          f"torch {torch.__version__}; bandwidth: one 1 GiB GEMV {bandwidth['single'] / 1e9:.1f} GB/s, "
          f"best large-GEMV pattern {bandwidth['best'] / 1e9:.1f} GB/s")
    print(f"{'shape':16s} {'phase':8s} {'minillama tok/s':>22s} {'transformers tok/s':>22s} {'ratio':>6s} "
          f"{'roofline':>9s} {'of roof':>8s} {'of strict':>9s}")
    for r in rows:
        for phase in ("decode", "prefill"):
            o, t = r["runs"][f"ours_{phase}"], r["runs"][f"theirs_{phase}"]
            roof = (f"{r['roofline_tokens_per_s']:9.1f} {r['decode_fraction_of_roofline']:7.0%} "
                    f"{r['decode_fraction_of_strict_roofline']:8.0%}") if phase == "decode" else ""
            print(f"{r['shape']:16s} {phase:8s} {statistics.median(o):8.1f} ({min(o):.1f}-{max(o):.1f})".ljust(48)
                  + f"{statistics.median(t):8.1f} ({min(t):.1f}-{max(t):.1f})".rjust(22)
                  + f" {r[f'{phase}_ratio']:5.2f}x {roof}")
        m = r["memory"]
        print(f"{'':16s} memory: peak RSS {m['peak_rss_bytes'] / 2**20:.0f} MiB = {m['ratio']:.2f} x "
              f"(weights {m['weights_bytes'] / 2**20:.0f} MiB + cache {m['cache_bytes'] / 2**20:.0f} MiB); "
              f"{m['ratio_above_baseline']:.2f} x above the {m['baseline_rss_bytes'] / 2**20:.0f} MiB of an "
              "interpreter with numpy and minillama imported")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "speed.json"), "w") as f:
        json.dump(dict(machine=platform.machine(), cores=os.cpu_count(), threads=args.threads,
                       numpy=np.__version__, torch=torch.__version__, bandwidth_bytes_per_s=bandwidth,
                       date=time.strftime("%Y-%m-%d"),
                       new_tokens=args.new_tokens, prompt_tokens=args.prompt_tokens, rows=rows), f, indent=2)
    plot(rows, os.path.join(args.out, "speed.png"))


if __name__ == "__main__":
    main()
