"""Shared fixtures: backends to run on, and random tiny checkpoints written by transformers."""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest

# Tests never download: transformers reads only the folders the tests write.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


def _cupy_usable() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


BACKENDS = ["numpy", "strict"] + (["cupy"] if _cupy_usable() else [])


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend this machine can run: NumPy, the strict Array API stand-in, and CuPy on a GPU."""
    return request.param


from reference_cases import TINY as _TINY  # noqa: E402

TINY = dict(_TINY, attn_implementation="eager")


def randomize(model, seed: int = 0):
    """Give every parameter a random value of useful size (the default init makes logits near zero)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return model


def make_hf_checkpoint(folder, cls_name="LlamaForCausalLM", save_dtype="float32", seed=0,
                       max_shard_size=None, **overrides):
    """Save a random tiny transformers Llama to ``folder``; return the float32 reference model read back from it.

    The reference is loaded from the saved files, so float16/bfloat16 checkpoints are
    compared on the very weights minillama reads.
    """
    import torch
    import transformers
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**TINY, **overrides})
    cls = getattr(transformers, cls_name)
    model = randomize(cls(config).eval(), seed)
    model = model.to(getattr(torch, save_dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    reference = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    return reference


def torch_forward(model, ids, **kwargs):
    import torch
    with torch.no_grad():
        tensors = {k: torch.as_tensor(np.asarray(v)) if isinstance(v, (np.ndarray, list)) else v
                   for k, v in kwargs.items() if v is not None}
        return model(torch.as_tensor(np.asarray(ids)), **tensors)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small random checkpoint written with NumPy alone (no torch needed): 4 layers, 8 heads, 4 KV heads."""
    from minillama.formats.synthetic import write_random_checkpoint
    folder = tmp_path_factory.mktemp("tiny")
    write_random_checkpoint(folder)
    return folder
