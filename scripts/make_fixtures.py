"""Regenerate the reference values under tests/fixtures with transformers (needs the crosscheck extra).

    pip install -e ".[test,crosscheck]" && python scripts/make_fixtures.py

For each case of tests/reference_cases.py: build transformers' model from the case's config, give
it the NumPy-made weights, save it, load it back in float32 and record its outputs (logits,
hidden states, attentions, generated ids). Also records transformers' LlamaTokenizer ids for the
tokenizer corpus when ../shared holds the real tokenizer.model. The tests read these files and
need no torch; the live cross-checks (tests/test_crosscheck.py) still run where torch is installed.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402

from reference_cases import CASES, CASES_JSON, CASES_NPZ, FIXTURES, TINY, TOKENIZER_JSON, stored_bytes, weight  # noqa: E402


def build(case: dict, folder: str):
    """Save the case's model to ``folder``; return (float32 reference read back, config.json, tensor list)."""
    config = transformers.LlamaConfig(**{**TINY, **case["overrides"]}, attn_implementation="eager")
    cls = getattr(transformers, case["cls"])
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(weight(name, tuple(p.shape))))
    model.to(getattr(torch, case["save_dtype"])).save_pretrained(folder)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config_json = json.load(f)
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        tensors = [(name, list(f.get_slice(name).get_shape())) for name in f.keys()]
        for name, shape in tensors:  # the tests' own writer must give the very same bytes
            saved = f.get_tensor(name)
            raw = saved.view(torch.int16).numpy().tobytes() if saved.dtype == torch.bfloat16 else saved.numpy().tobytes()
            assert raw == stored_bytes(name, shape, case["save_dtype"]), name
    reference = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    return reference, config_json, tensors


def run(reference, case: dict) -> dict:
    """The outputs a case records, by name."""
    inputs = {k: torch.as_tensor(v) for k, v in case["inputs"].items()}
    ids = inputs.pop("ids")
    kind, options = case["kind"], case["options"]
    with torch.no_grad():
        if kind == "generate":
            common = dict(do_sample=False, max_new_tokens=options["max_new_tokens"], pad_token_id=0,
                          repetition_penalty=options.get("repetition_penalty", 1.0), **inputs)
            if "eos_from_step" in options:  # make a token row 0 really produces the EOS
                free = reference.generate(ids, eos_token_id=None, **common).numpy()
                eos = int(free[0, ids.shape[1] + options["eos_from_step"]])
                return {"sequences": reference.generate(ids, eos_token_id=eos, **common).numpy(),
                        "eos": np.array(eos)}
            out = reference.generate(ids, eos_token_id=None, min_new_tokens=options["max_new_tokens"], **common)
            return {"sequences": out.numpy()}
        out = reference(ids, output_hidden_states=kind == "states", output_attentions=kind == "states", **inputs)
    if kind == "model":
        return {"last_hidden_state": out.last_hidden_state.numpy()}
    recorded = {"logits": out.logits.numpy()}
    if kind == "states":
        recorded.update({f"hidden_{i}": h.numpy() for i, h in enumerate(out.hidden_states)})
        recorded.update({f"attention_{i}": a.numpy() for i, a in enumerate(out.attentions)})
    return recorded


def make_cases() -> None:
    described, arrays = {}, {}
    for name, case in CASES.items():
        folder = tempfile.mkdtemp()
        try:
            reference, config_json, tensors = build(case, folder)
            for key, value in run(reference, case).items():
                arrays[f"{name}/{key}"] = value
        finally:
            shutil.rmtree(folder)
        described[name] = {"kind": case["kind"], "cls": case["cls"], "save_dtype": case["save_dtype"],
                           "config": config_json, "tensors": tensors}
        print(f"{name}: {', '.join(k.split('/')[-1] for k in arrays if k.startswith(name + '/'))}")
    with open(CASES_JSON, "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "cases": described}, f,
                  indent=1)
    np.savez_compressed(CASES_NPZ, **arrays)


def make_tokenizer() -> None:
    from test_tokenizer import CORPUS, MODEL
    if not os.path.exists(MODEL):
        print(f"{MODEL} is absent: tokenizer reference not regenerated")
        return
    folder = tempfile.mkdtemp()
    try:
        shutil.copy(MODEL, os.path.join(folder, "tokenizer.model"))
        hf = transformers.LlamaTokenizer.from_pretrained(folder)
        rows = [{"chars": len(s),
                 "split_special": hf.encode(s, add_special_tokens=False, split_special_tokens=True),
                 "parse_special": hf.encode(s, add_special_tokens=False)} for s in CORPUS]
        for row, s in zip(rows, CORPUS):  # the decoded text, where it is not the string itself
            decoded = hf.decode([1] + row["split_special"], skip_special_tokens=True)
            row["decoded"] = None if decoded == s else decoded
    finally:
        shutil.rmtree(folder)
    with gzip.open(TOKENIZER_JSON, "wt", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "rows": rows}, f, ensure_ascii=False,
                  separators=(",", ":"))
    print(f"tokenizer: {len(rows)} strings")


if __name__ == "__main__":
    os.makedirs(FIXTURES, exist_ok=True)
    make_cases()
    make_tokenizer()
