"""Print the max abs logit difference against transformers for every config variant the tests check.

    python benchmarks/crosscheck_report.py

Uses the same random tiny checkpoints as tests/test_crosscheck.py (needs the test extra).
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import BACKENDS, make_hf_checkpoint, torch_forward  # noqa: E402
from test_crosscheck import VARIANTS, random_ids  # noqa: E402

import minillama  # noqa: E402
from minillama import to_numpy  # noqa: E402

CASES = dict(VARIANTS)
CASES["checkpoint_float16"] = dict(save_dtype="float16")
CASES["checkpoint_bfloat16"] = dict(save_dtype="bfloat16")
CASES["sharded"] = dict(max_shard_size="40KB")
CASES["rope_dynamic_40_of_16"] = dict(max_position_embeddings=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
CASES["pretraining_tp_2"] = dict(pretraining_tp=2, num_key_value_heads=2)


def main():
    print(f"{'variant':34s}" + "".join(f"{b:>12s}" for b in BACKENDS))
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in CASES.items():
            folder = os.path.join(tmp, name)
            reference = make_hf_checkpoint(folder, **overrides)
            ids = random_ids(96, 2, 40 if "dynamic" in name else 24)
            expected = torch_forward(reference, ids).logits.numpy()
            row = []
            for backend in BACKENDS:
                model = minillama.LlamaForCausalLM.from_pretrained(folder, backend=backend)
                row.append(float(np.abs(to_numpy(model(ids).logits) - expected).max()))
            print(f"{name:34s}" + "".join(f"{d:12.2e}" for d in row))


if __name__ == "__main__":
    main()
