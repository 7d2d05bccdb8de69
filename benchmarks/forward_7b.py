"""A full forward pass of a 7B-shaped model on this machine: time and peak memory.

    python benchmarks/forward_7b.py [--path DIR] [--tokens 16] [--repeats 2]

Makes the synthetic Llama-2-7B checkpoint (float16, two shards; `minillama make-synthetic`)
at --path if it is not there, then alternates, --repeats times:

* "read + upcast": read every weight from the memory-mapped files and upcast it to
  float32 once, one tensor at a time: the least work any float32 forward must do;
* "forward": minillama's full forward over --tokens tokens (lazy weights: each layer is
  read and upcast just before it runs).

Memory is sampled from /proc/self/status every 2 ms: anonymous memory (RssAnon, what the
program allocates) and file-backed pages (RssFile, the mapped checkpoint, which the kernel
can drop and re-read). Prints a table with the ratio of forward time to read+upcast time
and writes it as JSON next to this script's docs entry.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

GiB = 2**30


class MemorySampler:
    """Peak RssAnon and RssFile of this process while active."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peaks, self._stop = interval, {"anon": 0, "file": 0}, None

    @staticmethod
    def read() -> dict:
        values = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    key = "anon" if line.startswith("RssAnon") else "file"
                    values[key] = int(line.split()[1]) * 1024
        return values

    def _run(self):
        while not self._stop.is_set():
            for k, v in self.read().items():
                self.peaks[k] = max(self.peaks[k], v)
            time.sleep(self.interval)

    def __enter__(self):
        self.peaks = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for k, v in self.read().items():
            self.peaks[k] = max(self.peaks[k], v)


def read_and_upcast(tensors):
    """Touch every weight once: read it from the (memory-mapped) file and upcast to float32."""
    total = 0.0
    for tensor in tensors:
        upcast = tensor.numpy(np.float32)
        total += float(upcast[(0,) * upcast.ndim])  # use the result so nothing is skipped
        del upcast
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="/tmp/minillama-synthetic-7b")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks",
                                                       "forward_7b.json"))
    args = parser.parse_args()
    from minillama.fast import tune_malloc
    tune_malloc()  # as the minillama command does (the library leaves malloc alone)

    if not os.path.exists(os.path.join(args.path, "config.json")):
        print(f"making the synthetic 7B checkpoint at {args.path} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "minillama", "make-synthetic", args.path], check=True)

    import minillama
    start = time.perf_counter()
    model = minillama.load(args.path)  # float16 stored, float32 compute: lazy is chosen automatically here
    load_seconds = time.perf_counter() - start
    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, size=(1, args.tokens))

    results = {"upcast": [], "forward": []}
    peaks = {"upcast": {"anon": 0, "file": 0}, "forward": {"anon": 0, "file": 0}}
    # The model's own memory-mapped tensors, so both phases share one mapping of the files.
    w = model.weights
    tensors = [w.embed_tokens, w.lm_head] + [t for layer in w.layers for t in vars(layer).values() if t is not None]
    read_and_upcast(tensors)  # warm the page cache once, so both phases read from memory
    for _ in range(args.repeats):
        for phase in ("upcast", "forward"):
            with MemorySampler() as sampler:
                start = time.perf_counter()
                if phase == "upcast":
                    read_and_upcast(tensors)
                else:
                    logits = model(ids).logits
                    assert logits.shape == (1, args.tokens, model.config.vocab_size) and logits.dtype == np.float32
                    assert np.isfinite(logits).all()
                results[phase].append(time.perf_counter() - start)
            for k in ("anon", "file"):
                peaks[phase][k] = max(peaks[phase][k], sampler.peaks[k])

    upcast, forward = statistics.median(results["upcast"]), statistics.median(results["forward"])
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GiB:.0f} GiB, Python {platform.python_version()}, "
                   f"NumPy {np.__version__}",
        "lazy": model.weights.lazy_dtype is not None, "tokens": args.tokens, "repeats": args.repeats,
        "load_seconds": load_seconds,
        "read_upcast_seconds": results["upcast"], "forward_seconds": results["forward"],
        "forward_over_read_upcast": forward / upcast,
        "peak_anon_gib": {k: v["anon"] / GiB for k, v in peaks.items()},
        "peak_file_gib": {k: v["file"] / GiB for k, v in peaks.items()},
    }
    print(f"machine: {report['machine']}; lazy weights: {report['lazy']}; load {load_seconds:.2f} s")
    print(f"{'phase':22s} {'median s':>9s} {'runs':>20s} {'peak anon':>10s} {'peak file':>10s}")
    for phase, label in (("upcast", "read + upcast weights"), ("forward", f"forward, {args.tokens} tokens")):
        runs = ", ".join(f"{t:.1f}" for t in results[phase])
        print(f"{label:22s} {statistics.median(results[phase]):9.2f} {runs:>20s} "
              f"{peaks[phase]['anon'] / GiB:8.2f} GiB {peaks[phase]['file'] / GiB:6.2f} GiB")
    print(f"forward / read+upcast = {forward / upcast:.2f} (target <= 1.5); "
          f"peak anonymous memory in forward = {peaks['forward']['anon'] / GiB:.2f} GiB (target <= 3)")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
