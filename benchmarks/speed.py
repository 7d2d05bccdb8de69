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
memory once: measured bandwidth / bytes of weights read per token. The bandwidth is that of
a 1 GiB float32 matrix-vector product, sampled inside each minillama worker before its decode
and after every 32 decoded tokens (the machine's bandwidth drifts by a third within minutes,
so a figure from another moment would mislead); each chunk of tokens is compared with the
bandwidth around it. "strict" uses the fastest of that and 64 MiB slices. "GEMV-only" times
the model's own matrix-vector products and nothing else, sampled the same way: the part of
the gap that is OpenBLAS on these shapes (see gemv_shapes.py).
Prints median tokens/s, min-max, the ratio to transformers and the fractions; writes JSON
and a plot into docs/benchmarks/ (--replot redraws the plot from the JSON).
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


def gemv_matrix() -> np.ndarray:
    """The 1 GiB float32 matrix that the bandwidth is measured with (values do not matter)."""
    return np.full((32768, 8192), 0.5, dtype=np.float32)


def measure_bandwidth(big: np.ndarray, repeats: int = 5) -> dict:
    """Bytes per second streamed by float32 matrix-vector products (the decode-step pattern).

    "single": the whole 1 GiB matrix in one product, the issue's "large GEMV". "best": the
    fastest of that and sixteen 64 MiB slices of it, each product read both ways (rows as dot
    products, or columns as scaled sums: OpenBLAS's two GEMV kernels), the stricter roofline.
    Each figure is a median over ``repeats`` runs.
    """
    def median_rate(products, nbytes):
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for product in products:
                product()
            rates.append(nbytes / (time.perf_counter() - start))
        return statistics.median(rates)

    x_in, x_out = np.ones((1, big.shape[1]), np.float32), np.ones((1, big.shape[0]), np.float32)
    slices = big.reshape(16, big.shape[0] // 16, big.shape[1])
    x_slice = np.ones((1, slices.shape[1]), np.float32)
    patterns = {
        "single": max(median_rate([lambda: x_in @ big.T], big.nbytes), median_rate([lambda: x_out @ big], big.nbytes)),
        "64MiB": max(median_rate([lambda m=m: x_in @ m.T for m in slices], big.nbytes),
                     median_rate([lambda m=m: x_slice @ m for m in slices], big.nbytes)),
    }
    return {"single": patterns["single"], "best": max(patterns.values()), "patterns": patterns}


def gemv_floor_seconds(model, repeats: int = 5) -> float:
    """Time of the model's own matrix-vector products for one token and nothing else.

    Every matrix a decoding step reads (as loaded: fused, column-major where so arranged),
    multiplied by a vector in sequence: how fast OpenBLAS streams these very shapes. The gap
    between this and a decoding step is the rest of the forward pass (Python, small arrays).
    """
    mats = []
    for layer in model.weights.layers:
        mats += [layer.qkv_proj] if layer.qkv_proj is not None else [layer.q_proj, layer.k_proj, layer.v_proj]
        mats.append(layer.o_proj)
        mats += [layer.gate_up_proj] if layer.gate_up_proj is not None else [layer.gate_proj, layer.up_proj]
        mats.append(layer.down_proj)
    mats.append(model.weights.lm_head)
    vectors = {m.shape[1]: np.ones((1, 1, m.shape[1]), np.float32) for m in mats}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for m in mats:
            vectors[m.shape[1]] @ m.T
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def decode_in_chunks(model, prompt, new_tokens, per_token_bytes, chunk=32):
    """minillama's greedy decode of new_tokens tokens, timed in chunks of ``chunk`` tokens with
    the bandwidth (1 GiB GEMV) and the GEMV-only time sampled, untimed, before the first chunk
    and after each one, so every chunk is compared with the bandwidth of its own seconds (this
    machine's bandwidth drifts by a third within minutes).

    The chunks continue one KV cache (``generate(..., cache=)``), so together they are one
    generation; a chunk of n tokens is n one-token forward passes, as in a plain decode.
    """
    from minillama import generate
    big = gemv_matrix()
    cache = model.new_cache(1, prompt.shape[1] + new_tokens)
    samples = [(measure_bandwidth(big, repeats=3), gemv_floor_seconds(model, repeats=1))]
    sizes, times, ids = [], [], prompt
    while sum(sizes) < new_tokens:
        sizes.append(min(chunk, new_tokens - sum(sizes)))
        start = time.perf_counter()
        out = generate(model, ids, max_new_tokens=sizes[-1], eos_token_id=[], cache=cache)
        times.append(time.perf_counter() - start)
        ids = out.sequences[:, -1:]
        samples.append((measure_bandwidth(big, repeats=3), gemv_floor_seconds(model, repeats=1)))
    del big
    bandwidth = {k: [(a[0][k] + b[0][k]) / 2 for a, b in zip(samples, samples[1:])] for k in ("single", "best")}
    floor = [2 / (a[1] + b[1]) for a, b in zip(samples, samples[1:])]  # tokens/s of the GEMVs alone
    rates = [n / t for n, t in zip(sizes, times)]
    return {
        "decode": sum(sizes) / sum(times),
        "bandwidth": {k: statistics.mean(v) for k, v in bandwidth.items()},
        "fraction_of_roofline": statistics.mean(r * per_token_bytes / bw for r, bw in zip(rates, bandwidth["single"])),
        "fraction_of_strict_roofline": statistics.mean(r * per_token_bytes / bw for r, bw in zip(rates, bandwidth["best"])),
        "gemv_floor": statistics.mean(floor),
        "fraction_of_gemv_floor": statistics.mean(r / f for r, f in zip(rates, floor)),
    }


def worker(lib, folder, new_tokens, prompt_tokens, threads):
    """One measurement of one library, in a fresh process (so neither library's idle threads,
    which spin for a while after each call, slow the other down). Prints JSON."""
    rng = np.random.default_rng(1)
    short = rng.integers(3, 32000, size=(1, 1))
    long = rng.integers(3, 32000, size=(1, prompt_tokens))
    if lib == "ours":  # torch is not even imported here: its thread pool must not compete with OpenBLAS's
        import minillama
        model = minillama.load(folder)
        prefill_ours(model, long[:, :16])  # warm up
        prefill = prompt_tokens / min(prefill_ours(model, long) for _ in range(3))
        result = decode_in_chunks(model, short, new_tokens, weight_bytes_per_token(model.config))
        result["prefill"] = prefill
    else:
        import torch
        import transformers
        torch.set_num_threads(threads)
        model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        prefill_theirs(model, long[:, :16])  # warm up
        prefill = prompt_tokens / min(prefill_theirs(model, long) for _ in range(3))
        one = min(time_theirs(model, short, 1) for _ in range(2))
        total = time_theirs(model, short, new_tokens)
        result = {"decode": (new_tokens - 1) / (total - one), "prefill": prefill}
    print(json.dumps(result))


def run_shape(shape, folder, args):
    import subprocess
    import sys
    from minillama.config import LlamaConfig
    config = LlamaConfig.from_pretrained(folder)
    per_token = weight_bytes_per_token(config)
    runs = {k: [] for k in ("ours_decode", "theirs_decode", "ours_prefill", "theirs_prefill", "bandwidth",
                            "roofline", "gemv_floor", "fraction_of_roofline", "fraction_of_strict_roofline",
                            "fraction_of_gemv_floor")}
    for _ in range(args.repeats):
        for lib in ("ours", "theirs"):
            out = subprocess.run([sys.executable, __file__, "--worker", lib, "--folder", folder,
                                  "--new-tokens", str(args.new_tokens), "--prompt-tokens", str(args.prompt_tokens),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs[f"{lib}_decode"].append(result["decode"])
            runs[f"{lib}_prefill"].append(result["prefill"])
            if lib == "ours":
                runs["bandwidth"].append(result["bandwidth"]["single"])
                runs["roofline"].append(result["bandwidth"]["single"] / per_token)
                for key in ("gemv_floor", "fraction_of_roofline", "fraction_of_strict_roofline", "fraction_of_gemv_floor"):
                    runs[key].append(result[key])
    med = {k: statistics.median(v) for k, v in runs.items()}
    return dict(shape=shape, runs=runs, median=med, roofline_tokens_per_s=med["roofline"],
                gemv_floor_tokens_per_s=med["gemv_floor"],
                decode_ratio=med["ours_decode"] / med["theirs_decode"],
                prefill_ratio=med["ours_prefill"] / med["theirs_prefill"],
                decode_fraction_of_roofline=med["fraction_of_roofline"],
                decode_fraction_of_strict_roofline=med["fraction_of_strict_roofline"],
                decode_fraction_of_gemv_floor=med["fraction_of_gemv_floor"], weight_bytes_per_token=per_token)


def memory_check(folder, new_tokens):
    """Peak resident memory of a fresh process that loads the model and decodes: vs weights + cache."""
    import subprocess
    import sys
    script = (
        "import sys, numpy as np, minillama, minillama.fast\n"
        "minillama.fast.tune_malloc()\n"
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
    width = 0.2
    bars = [("minillama", [r["median"]["ours_decode"] for r in rows]),
            ("transformers (torch, eager)", [r["median"]["theirs_decode"] for r in rows]),
            ("the model's GEMVs alone", [r["gemv_floor_tokens_per_s"] for r in rows]),
            ("roofline (bandwidth of a 1 GiB GEMV)", [r["roofline_tokens_per_s"] for r in rows])]
    for i, (label, values) in enumerate(bars):
        ax.bar(x + (i - 1.5) * width, values, width, label=label)
        for xi, value in zip(x + (i - 1.5) * width, values):
            ax.text(xi, value * 1.05, f"{value:.0f}" if value >= 10 else f"{value:.1f}", ha="center", fontsize=7)
    ax.set_xticks(x, [r["shape"] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("decode tokens/s (batch 1, log scale)")
    ax.set_title("Decode speed on the CPU (batch 1, float32), medians of one run")
    ax.set_ylim(top=max(max(values) for _, values in bars) * 4)  # room for the legend above the bars
    ax.legend(fontsize=8, loc="upper left", ncol=2)
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
    parser.add_argument("--replot", action="store_true", help="only redraw the plot from the saved JSON")
    parser.add_argument("--worker", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from minillama.fast import tune_malloc
    tune_malloc()  # as the minillama command does (the library leaves malloc alone)
    if args.worker:
        return worker(args.worker, args.folder, args.new_tokens, args.prompt_tokens, args.threads)
    if args.replot:
        with open(os.path.join(args.out, "speed.json")) as f:
            return plot(json.load(f)["rows"], os.path.join(args.out, "speed.png"))

    import torch
    rows = []
    for shape in args.shapes:
        folder = os.path.join(args.workdir, shape)
        if not os.path.exists(os.path.join(folder, "config.json")):
            make_checkpoint(folder, shape)
        rows.append(run_shape(shape, folder, args))
        rows[-1]["memory"] = memory_check(folder, args.new_tokens)

    bandwidths = [b for r in rows for b in r["runs"]["bandwidth"]]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, threads {args.threads}, NumPy {np.__version__}, "
          f"torch {torch.__version__}; bandwidth of a 1 GiB GEMV, measured around each decode run: "
          f"{min(bandwidths) / 1e9:.1f}-{max(bandwidths) / 1e9:.1f} GB/s")
    print(f"{'shape':16s} {'phase':8s} {'minillama tok/s':>22s} {'transformers tok/s':>22s} {'ratio':>6s} "
          f"{'roofline':>9s} {'of roof':>8s} {'of strict':>9s} {'GEMV-only':>9s} {'of it':>6s}")
    for r in rows:
        for phase in ("decode", "prefill"):
            o, t = r["runs"][f"ours_{phase}"], r["runs"][f"theirs_{phase}"]
            roof = (f"{r['roofline_tokens_per_s']:9.1f} {r['decode_fraction_of_roofline']:7.0%} "
                    f"{r['decode_fraction_of_strict_roofline']:8.0%} {r['gemv_floor_tokens_per_s']:9.1f} "
                    f"{r['decode_fraction_of_gemv_floor']:6.0%}") if phase == "decode" else ""
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
                       numpy=np.__version__, torch=torch.__version__,
                       date=time.strftime("%Y-%m-%d"),
                       new_tokens=args.new_tokens, prompt_tokens=args.prompt_tokens, rows=rows), f, indent=2)
    plot(rows, os.path.join(args.out, "speed.png"))


if __name__ == "__main__":
    main()
