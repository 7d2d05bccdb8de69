"""How fast OpenBLAS streams a float32 matrix-vector product, by matrix shape and memory order.

    python benchmarks/gemv_shapes.py [--shapes stories110M tinyllama-1.1B] [--repeats 15]
    python benchmarks/gemv_shapes.py --run-lengths       # one thread: short vs long contiguous runs
    python benchmarks/gemv_shapes.py --python-threads    # halves in two Python threads vs OpenBLAS's threads

A decoding step is one matrix-vector product per weight matrix, so its floor is set by how
fast these products stream each matrix. This measures, in one process and alternating, the
bandwidth of products with the matrix shapes of each model (about 150 MB of matrices of one
shape, so they do not fit in cache), stored row-major ("C") and column-major ("F"), next to
the 1 GiB product that speed.py takes as the machine's bandwidth. Prints the median GB/s and
the ratio to the 1 GiB product; the layout minillama uses is marked with *.

--run-lengths explains the narrow shapes: with one thread, the same bytes stream at a rate set by
the length of the contiguous runs the kernel reads (rows for row-major "C", columns for "F").
--python-threads measures the alternative to OpenBLAS's own threading: each matrix cut into two
contiguous halves, one per Python thread, each product single-threaded (np.dot releases the GIL).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

SHAPES = {  # (out, in) of qkv (fused), o, gate_up (fused), down, lm_head
    "stories15M": [(864, 288), (288, 288), (1536, 288), (288, 768), (32000, 288)],
    "stories110M": [(2304, 768), (768, 768), (4096, 768), (768, 2048), (32000, 768)],
    "tinyllama-1.1B": [(2560, 2048), (2048, 2048), (11264, 2048), (2048, 5632), (32000, 2048)],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["stories110M", "tinyllama-1.1B"], choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--run-lengths", action="store_true", help="single-threaded rate by contiguous run length")
    parser.add_argument("--python-threads", action="store_true", help="Python-thread halves vs OpenBLAS threads")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # what a child process measures
    args = parser.parse_args()
    if args.mode:
        return child(args.mode)
    if args.run_lengths or args.python_threads:
        return in_children(args)
    rng = np.random.default_rng(0)
    shapes = sorted({s for name in args.shapes for s in SHAPES[name]})
    sets = {}
    for out_features, in_features in shapes:
        count = max(1, int(150e6 // (out_features * in_features * 4)))
        rows = [rng.random((out_features, in_features), dtype=np.float32) for _ in range(count)]
        sets[(out_features, in_features, "C")] = rows
        sets[(out_features, in_features, "F")] = [np.asfortranarray(m) for m in rows]
    big = np.full((32768, 8192), 0.5, dtype=np.float32)
    vectors = {n: np.ones((1, 1, n), np.float32) for n in {s[1] for s in shapes} | {8192}}
    rates = {key: [] for key in sets} | {"1 GiB": []}
    for _ in range(args.repeats):
        for key, mats in sets.items():
            start = time.perf_counter()
            for m in mats:
                vectors[m.shape[1]] @ m.T
            rates[key].append(sum(m.nbytes for m in mats) / (time.perf_counter() - start))
        start = time.perf_counter()
        vectors[8192] @ big.T
        rates["1 GiB"].append(big.nbytes / (time.perf_counter() - start))
    reference = statistics.median(rates["1 GiB"])
    print(f"1 GiB GEMV: {reference / 1e9:.1f} GB/s (median of {args.repeats})")
    print(f"{'shape (out, in)':18s} {'C GB/s':>8s} {'of 1 GiB':>9s} {'F GB/s':>8s} {'of 1 GiB':>9s}")
    for out_features, in_features in shapes:
        used = "F" if out_features >= 2 * in_features else "C"  # model._transposed_storage's rule
        cells = []
        for order in "CF":
            rate = statistics.median(rates[(out_features, in_features, order)])
            mark = "*" if order == used else " "
            cells.append(f"{rate / 1e9:7.1f}{mark} {rate / reference:8.0%}")
        print(f"{out_features:>6d} x {in_features:<9d} " + " ".join(cells))



def stream_rate(mats, product, repeats=5) -> float:
    """Median bytes per second of ``product`` over every matrix of ``mats`` in turn (~300 MB, not cached)."""
    for m in mats:
        product(m)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for m in mats:
            product(m)
        times.append(time.perf_counter() - start)
    return sum(m.nbytes for m in mats) / statistics.median(times)


def matrices(rows, cols, order, total=300e6):
    return [np.ones((rows, cols), np.float32, order=order) for _ in range(max(2, int(total // (rows * cols * 4))))]


RUNS = [(768, 768, "C"), (768, 4096, "C"), (4096, 768, "C"), (768, 768, "F"), (4096, 768, "F"), (768, 4096, "F")]
HALVES = [(2304, 768), (768, 768), (4096, 768), (768, 2048)]  # stories110M's qkv, o, gate_up, down


def child(mode):
    """Runs in a process whose OpenBLAS thread count was set by the parent; prints one line of JSON-like text."""
    results = []
    if mode == "runs":
        for rows, cols, order in RUNS:
            mats = matrices(rows, cols, order)
            x = np.ones((1, cols), np.float32)
            results.append(stream_rate(mats, lambda m: x @ m.T))
    elif mode in ("openblas", "halves"):
        worker_in, worker_out = [], []
        todo, done = threading.Semaphore(0), threading.Semaphore(0)

        def worker():  # computes the second half of each product while the main thread does the first
            while True:
                todo.acquire()
                x, m = worker_in.pop()
                if m is None:
                    return
                worker_out.append(np.dot(x, m.T))
                done.release()

        threading.Thread(target=worker, daemon=True).start()
        for rows, cols in HALVES:
            mats = matrices(rows, cols, "C")
            x = np.ones((1, cols), np.float32)
            if mode == "openblas":
                results.append(stream_rate(mats, lambda m: np.dot(x, m.T)))
                continue
            halves = [(np.ascontiguousarray(m[:rows // 2]), np.ascontiguousarray(m[rows // 2:])) for m in mats]

            class Pair:  # stream_rate counts .nbytes
                def __init__(self, a, b):
                    self.a, self.b, self.nbytes = a, b, a.nbytes + b.nbytes

            def split_product(pair):
                worker_in.append((x, pair.b))
                todo.release()
                first = np.dot(x, pair.a.T)
                done.acquire()
                return np.concatenate([first, worker_out.pop()], axis=-1)

            results.append(stream_rate([Pair(a, b) for a, b in halves], split_product))
        worker_in.append((None, None))
        todo.release()
    print(" ".join(f"{r:.6e}" for r in results))


def in_children(args):
    """Each configuration in its own process (OpenBLAS's thread count is fixed when it loads), alternating."""
    def run(mode, threads):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, __file__, "--mode", mode], env=env, capture_output=True, text=True, check=True)
        return [float(v) for v in out.stdout.split()]

    rounds = 3
    if args.run_lengths:
        rates = [run("runs", 1) for _ in range(rounds)]
        print(f"one thread, median of {rounds} processes; run = contiguous floats the kernel reads at a time")
        for i, (rows, cols, order) in enumerate(RUNS):
            run_length = cols if order == "C" else rows
            print(f"{rows:>5d} x {cols:<5d} {order}  runs of {run_length:>5d}: "
                  f"{statistics.median(r[i] for r in rates) / 1e9:5.1f} GB/s")
    if args.python_threads:
        plain, halves = [], []
        for _ in range(rounds):
            plain.append(run("openblas", 2))
            halves.append(run("halves", 1))
        print(f"stories110M shapes, row-major, median of {rounds} processes each (alternating)")
        for i, (rows, cols) in enumerate(HALVES):
            print(f"{rows:>5d} x {cols:<5d} OpenBLAS 2 threads {statistics.median(r[i] for r in plain) / 1e9:5.1f} GB/s"
                  f"   halves in 2 Python threads {statistics.median(r[i] for r in halves) / 1e9:5.1f} GB/s")


if __name__ == "__main__":
    main()
