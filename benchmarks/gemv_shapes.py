"""How fast OpenBLAS streams a float32 matrix-vector product, by matrix shape and memory order.

    python benchmarks/gemv_shapes.py [--shapes stories110M tinyllama-1.1B] [--repeats 15]

A decoding step is one matrix-vector product per weight matrix, so its floor is set by how
fast these products stream each matrix. This measures, in one process and alternating, the
bandwidth of products with the matrix shapes of each model (about 150 MB of matrices of one
shape, so they do not fit in cache), stored row-major ("C") and column-major ("F"), next to
the 1 GiB product that speed.py takes as the machine's bandwidth. Prints the median GB/s and
the ratio to the 1 GiB product; the layout minillama uses is marked with *.
"""

from __future__ import annotations

import argparse
import statistics
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
