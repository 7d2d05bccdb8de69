"""The cases whose reference values are stored under tests/fixtures, and how to rebuild their checkpoints.

Each case is a tiny random Llama (``TINY`` plus the case's overrides). Its weights come from
NumPy alone (:func:`weight`, seeded by the tensor's name), so a test without torch rebuilds the
very checkpoint transformers ran: ``scripts/make_fixtures.py`` loads these weights into
transformers, saves the folder, runs transformers on it, and stores config.json, the tensor
list and the outputs. :func:`write_case_checkpoint` writes the same folder from the fixture.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib

import numpy as np

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CASES_JSON = os.path.join(FIXTURES, "reference_cases.json")
CASES_NPZ = os.path.join(FIXTURES, "reference_cases.npz")
TOKENIZER_JSON = os.path.join(FIXTURES, "tokenizer_reference.json.gz")

# A small Llama: big enough for every code path (several layers, heads, groups), small enough to be quick.
TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, rms_norm_eps=1e-5)

VARIANTS = {
    "mha": {},
    "gqa_4to1": dict(num_attention_heads=8, num_key_value_heads=2),
    "mqa": dict(num_attention_heads=4, num_key_value_heads=1),
    "head_dim_not_hidden_over_heads": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32),
    "rope_theta_1e6": dict(rope_theta=1e6),
    "rope_linear": dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "rope_llama3": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "rope_dynamic": dict(max_position_embeddings=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "biases": dict(attention_bias=True, mlp_bias=True),
    "tied_embeddings": dict(tie_word_embeddings=True),
    "pretraining_tp_2": dict(pretraining_tp=2, num_key_value_heads=2),
}


def random_ids(vocab, batch, seq, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq))


def left_padded(rows):
    """Rows of ids -> (ids, mask), left-padded with 0 to one width."""
    width = max(len(r) for r in rows)
    ids = np.array([[0] * (width - len(r)) + list(r) for r in rows], dtype=np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
    return ids, mask


def _cases() -> dict:
    """name -> dict(kind, overrides, cls, save_dtype, inputs); inputs are NumPy arrays."""
    cases = {}
    for name, overrides in VARIANTS.items():
        if name == "rope_dynamic":  # within and beyond max_position_embeddings (16)
            for seq in (12, 40):
                cases[f"logits/{name}_{seq}"] = dict(kind="logits", overrides=overrides,
                                                     inputs=dict(ids=random_ids(96, 1, seq, seed=seq)))
        else:
            cases[f"logits/{name}"] = dict(kind="logits", overrides=overrides, inputs=dict(ids=random_ids(96, 2, 24)))
    for dtype in ("float16", "bfloat16"):
        cases[f"logits/saved_{dtype}"] = dict(kind="logits", overrides=dict(num_key_value_heads=2), save_dtype=dtype,
                                              inputs=dict(ids=random_ids(96, 2, 16)))
    ids, mask = left_padded([random_ids(96, 1, n, seed=n)[0] for n in (20, 13, 5)])
    cases["logits/left_padded"] = dict(kind="logits", overrides=dict(num_key_value_heads=2), inputs=dict(
        ids=ids, attention_mask=mask, position_ids=np.maximum(np.cumsum(mask, axis=1) - 1, 0)))
    cases["states/hidden_and_attentions"] = dict(kind="states", overrides=dict(num_key_value_heads=2),
                                                 inputs=dict(ids=random_ids(96, 2, 12)))
    cases["model/last_hidden_state"] = dict(kind="model", cls="LlamaModel", overrides=dict(num_key_value_heads=1),
                                            inputs=dict(ids=random_ids(96, 2, 10)))
    ids = random_ids(95, 3, 12) + 1  # no accidental pad tokens
    ids[1, :4] = 0  # left padding
    ids[2, 9:] = 0  # right padding
    cases["classify/sequence"] = dict(kind="classify", cls="LlamaForSequenceClassification",
                                      overrides=dict(num_labels=3, pad_token_id=0),
                                      inputs=dict(ids=ids, attention_mask=(ids != 0).astype(np.int64),
                                                  position_ids=np.broadcast_to(np.arange(12), ids.shape).copy()))
    rows = [[1, 17, 33, 8, 60, 41, 5, 9], [1, 70, 12], [1, 44, 3, 90, 91]]
    for kv in (4, 2):
        ids, mask = left_padded(rows)
        cases[f"generate/greedy_kv{kv}"] = dict(kind="generate", overrides=dict(num_key_value_heads=kv,
                                                max_position_embeddings=128), inputs=dict(ids=ids, attention_mask=mask),
                                                options=dict(max_new_tokens=64))
    cases["generate/repetition_penalty"] = dict(kind="generate", overrides=dict(num_key_value_heads=2,
                                                max_position_embeddings=128),
                                                inputs=dict(ids=np.array([[1, 17, 33, 8, 60, 17, 17]])),
                                                options=dict(max_new_tokens=30, repetition_penalty=1.5))
    ids, mask = left_padded([[1, 17, 33], [1, 70, 12, 5, 6]])
    cases["generate/stops_at_eos"] = dict(kind="generate", overrides=dict(num_key_value_heads=2,
                                          max_position_embeddings=128), inputs=dict(ids=ids, attention_mask=mask),
                                          options=dict(max_new_tokens=20, eos_from_step=6))
    for case in cases.values():
        case.setdefault("cls", "LlamaForCausalLM")
        case.setdefault("save_dtype", "float32")
        case.setdefault("options", {})
    return cases


CASES = _cases()


def weight(name: str, shape, seed: int = 0) -> np.ndarray:
    """The float32 value of parameter ``name``: norms near 1, biases small, matrices scaled by 1/sqrt(fan-in)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    z = rng.standard_normal(tuple(shape))
    if name.endswith("norm.weight"):
        z = 1.0 + 0.2 * z
    elif len(shape) == 1:
        z = 0.1 * z
    else:
        z = z / math.sqrt(shape[-1])
    return z.astype(np.float32)


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even as torch does (finite inputs)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


SAFETENSORS_DTYPES = {"float32": ("F32", np.float32), "float16": ("F16", np.float16), "bfloat16": ("BF16", None)}


def stored_bytes(name, shape, save_dtype) -> bytes:
    value = weight(name, shape)
    if save_dtype == "bfloat16":
        return to_bfloat16_bits(value).tobytes()
    return value.astype(SAFETENSORS_DTYPES[save_dtype][1]).tobytes()


def write_case_checkpoint(folder, fixture: dict) -> None:
    """Write the folder transformers saved for a case: its config.json and its weights (one safetensors file).

    A small writer of its own, so that the files under test do not come from the code under test.
    """
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(fixture["config"], f)
    code = SAFETENSORS_DTYPES[fixture["save_dtype"]][0]
    header, blobs, offset = {}, [], 0
    for name, shape in fixture["tensors"]:
        blob = stored_bytes(name, shape, fixture["save_dtype"])
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def load_fixtures() -> tuple[dict, dict]:
    """(case name -> the stored description, 'case/output' -> array)."""
    with open(CASES_JSON, encoding="utf-8") as f:
        described = json.load(f)
    with np.load(CASES_NPZ) as data:
        arrays = {key: data[key] for key in data.files}
    return described, arrays
