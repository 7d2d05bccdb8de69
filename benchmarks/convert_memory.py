"""Peak memory of `convert` on a large checkpoint: anonymous memory stays near the largest tensor.

    python benchmarks/convert_memory.py SRC OUT

Samples RssAnon/RssFile as forward_7b.py does and prints the peaks next to the size of the
largest single tensor (what streaming tensor by tensor should cost) and of the whole model.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from forward_7b import GiB, MemorySampler  # noqa: E402

from minillama.formats.convert import convert  # noqa: E402
from minillama.formats.safetensors import nbytes as _nbytes  # noqa: E402
from minillama.formats import open_checkpoint  # noqa: E402


def main():
    src, out = sys.argv[1], sys.argv[2]
    _, tensors, fmt = open_checkpoint(src)
    largest = max(_nbytes(t) for t in tensors.values())
    total = sum(_nbytes(t) for t in tensors.values())
    with MemorySampler() as sampler:
        start = time.perf_counter()
        convert(src, out)
        seconds = time.perf_counter() - start
    print(f"converted a {fmt} checkpoint of {total / GiB:.2f} GiB in {seconds:.0f} s")
    print(f"largest tensor {largest / GiB:.3f} GiB; peak anonymous memory {sampler.peaks['anon'] / GiB:.3f} GiB; "
          f"peak file-backed pages {sampler.peaks['file'] / GiB:.2f} GiB")


if __name__ == "__main__":
    main()
