"""What a decoding step costs besides its matrix-vector products.

    python benchmarks/decode_overhead.py [--shapes stories15M stories110M tinyllama-1.1B] [--repeats 7]
    python benchmarks/decode_overhead.py --in-model [--new-tokens 64]

Every ``functional.linear`` is replaced by a preallocated result of the right shape, so the
weights are never read; what remains is the rest of a step (norms, rotary, cache writes,
attention over the cached keys, the generation loop), timed over a greedy 256-token
generation. The GEMVs are what the memory bandwidth allows; this part is what the code
decides, so compare it between two checkouts of minillama (run the script in each). The
figures are with hot caches: in a real step the GEMVs evict the small arrays and the
interpreter's own data, and the same work takes longer (1.5x for stories110M, 2.4x for
TinyLlama on the development machine): --in-model keeps the real products and times each
``functional.linear`` call, splitting a real step into its GEMVs and the rest. Uses the checkpoints that speed.py writes (made here if missing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["stories15M", "stories110M", "tinyllama-1.1B"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "minillama-speed"))
    parser.add_argument("--in-model", action="store_true", help="real GEMVs, each timed: GEMVs vs the rest of a step")
    args = parser.parse_args()
    from minillama.fast import tune_malloc
    tune_malloc()  # as the minillama command does (the library leaves malloc alone)

    import minillama
    from minillama import functional as F
    from minillama.generation.generate import generate
    from speed import make_checkpoint  # benchmarks/speed.py, beside this file

    results = {}

    def stub(x, weight, bias=None):  # (..., in) -> (..., out) zeros, one array per shape
        key = (x.shape[:-1], weight.shape[0])
        if key not in results:
            results[key] = np.zeros(x.shape[:-1] + (weight.shape[0],), np.float32)
            results[key][..., 7] = 1.0  # greedy decoding then picks token 7 every step
        return results[key]

    real_linear = F.linear
    in_linear = [0.0]

    def timed(x, weight, bias=None):
        start = time.perf_counter()
        y = real_linear(x, weight, bias)
        in_linear[0] += time.perf_counter() - start
        return y

    print(f"minillama from {os.path.dirname(minillama.__file__)}; {args.new_tokens} greedy tokens, "
          f"median of {args.repeats}")
    for shape in args.shapes:
        folder = os.path.join(args.workdir, shape)
        if not os.path.exists(os.path.join(folder, "config.json")):
            make_checkpoint(folder, shape)
        model = minillama.load(folder)
        F.linear = timed if args.in_model else stub
        try:
            generate(model, np.array([[5]]), max_new_tokens=8, eos_token_id=[])  # warm up
            per_token, gemvs = [], []
            for _ in range(args.repeats):
                in_linear[0] = 0.0
                out = generate(model, np.array([[5]]), max_new_tokens=args.new_tokens, eos_token_id=[])
                per_token.append(out.decode_seconds / (args.new_tokens - 1))
                gemvs.append(in_linear[0] / args.new_tokens)  # the prefill's one-token products included
        finally:
            F.linear = real_linear
            results.clear()
        if args.in_model:
            step, gemv = statistics.median(per_token), statistics.median(gemvs)
            print(f"{shape:16s} real step {step * 1e3:7.2f} ms = GEMVs {gemv * 1e3:7.2f} ms + the rest "
                  f"{(step - gemv) * 1e3:5.2f} ms ({(step - gemv) / step:.0%})")
        else:
            print(f"{shape:16s} non-GEMV part of a decoding step: {statistics.median(per_token) * 1e6:7.0f} us "
                  f"(min {min(per_token) * 1e6:.0f}, max {max(per_token) * 1e6:.0f})")


if __name__ == "__main__":
    main()
