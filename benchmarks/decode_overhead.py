"""What a decoding step costs besides its matrix-vector products.

    python benchmarks/decode_overhead.py [--shapes stories15M stories110M tinyllama-1.1B] [--repeats 7]

Every ``functional.linear`` is replaced by a preallocated result of the right shape, so the
weights are never read; what remains is the rest of a step (norms, rotary, cache writes,
attention over the cached keys, the generation loop), timed over a greedy 256-token
generation. The GEMVs are what the memory bandwidth allows; this part is what the code
decides, so compare it between two checkouts of minillama (run the script in each). The
figures are with hot caches: in a real step the GEMVs evict the small arrays and the
interpreter's own data, and the same work takes roughly a quarter longer.
Uses the checkpoints that speed.py writes (made here if missing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["stories15M", "stories110M", "tinyllama-1.1B"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "minillama-speed"))
    args = parser.parse_args()

    import minillama
    from minillama import functional as F
    from minillama.generate import generate
    from speed import make_checkpoint  # benchmarks/speed.py, beside this file

    results = {}

    def stub(x, weight, bias=None):  # (..., in) -> (..., out) zeros, one array per shape
        key = (x.shape[:-1], weight.shape[0])
        if key not in results:
            results[key] = np.zeros(x.shape[:-1] + (weight.shape[0],), np.float32)
            results[key][..., 7] = 1.0  # greedy decoding then picks token 7 every step
        return results[key]

    real_linear = F.linear
    print(f"minillama from {os.path.dirname(minillama.__file__)}; {args.new_tokens} greedy tokens, "
          f"median of {args.repeats}")
    for shape in args.shapes:
        folder = os.path.join(args.workdir, shape)
        if not os.path.exists(os.path.join(folder, "config.json")):
            make_checkpoint(folder, shape)
        model = minillama.load(folder)
        F.linear = stub
        try:
            generate(model, np.array([[5]]), max_new_tokens=8, eos_token_id=[])  # warm up
            per_token = []
            for _ in range(args.repeats):
                out = generate(model, np.array([[5]]), max_new_tokens=args.new_tokens, eos_token_id=[])
                per_token.append(out.decode_seconds / (args.new_tokens - 1))
        finally:
            F.linear = real_linear
            results.clear()
        print(f"{shape:16s} non-GEMV part of a decoding step: {statistics.median(per_token) * 1e6:7.0f} us "
              f"(min {min(per_token) * 1e6:.0f}, max {max(per_token) * 1e6:.0f})")


if __name__ == "__main__":
    main()
