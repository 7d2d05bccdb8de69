"""``minillama convert``: a Meta folder or a llama2.c ``.bin`` (or an HF folder, re-sharded) into a Hugging Face folder.

Every tensor is read, merged and permuted on its own and written straight to its shard
(see ``hf.write_hf_folder``), so memory holds about one tensor at a time (Hugging Face's
own script holds the whole model).

Before anything is written, the tensors are held to the config: the layer count, then
every name and shape a Llama of that config has, floats only (a mix of float dtypes is
widened exactly to float32, or float64 if any tensor is). The folder is written under a
temporary sibling name and renamed when complete; an error, Ctrl-C, SIGTERM or SIGHUP
removes the partial folder. The source's tokenizer and generation files are copied
unchanged.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from ..errors import CheckpointError
from ..files import check_regular_file
from .detect import open_checkpoint
from .hf import write_hf_folder
from .names import layer_index, tensor_shapes
from .tensors import CastTensor

# Files of a checkpoint folder besides its weights and config that a converted folder keeps, unchanged.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
DROPPED_BUFFERS = ("rotary_emb.inv_freq",)  # saved by old transformers versions; recomputed from the config


def convert(src: str, out: str, max_shard_bytes: int = 5 * 2**30, progress=None) -> list[str]:
    """Convert a Meta folder or a llama2.c .bin (or re-shard an HF folder) into a Hugging Face folder.

    Returns the safetensors file names written. max_shard_bytes: the largest shard, in bytes
    (a positive integer; a tensor larger than that gets a shard of its own).
    """
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be a positive integer number of bytes, got {max_shard_bytes!r}")
    src, out = os.fspath(src), os.fspath(out)
    config, tensors, fmt = open_checkpoint(src)
    tensors = checked_tensors(config, tensors, src)
    folder = src if os.path.isdir(src) else os.path.dirname(src)
    extra = {name: os.path.join(folder, name) for name in TOKENIZER_FILES if os.path.lexists(os.path.join(folder, name))}
    shared_tokenizer = os.path.join(os.path.dirname(os.path.abspath(folder)), "tokenizer.model")
    if fmt == "meta" and "tokenizer.model" not in extra and os.path.lexists(shared_tokenizer):
        extra["tokenizer.model"] = shared_tokenizer  # Meta's download keeps it beside the model folders
    for path in extra.values():
        check_regular_file(path, CheckpointError)  # refused now, not after the weights are written
    with cleanup_on_termination():
        return write_hf_folder(config, tensors, out, max_shard_bytes, None, progress, extra_files=extra)


def checked_tensors(config, tensors: dict, source: str) -> dict:
    """The tensors to write, held to ``config``: every name and shape it needs, nothing else, one float dtype."""
    prefix = "model." if any(name.startswith("model.") for name in tensors) else ""
    held = {layer_index(name) for name in tensors} - {None}
    # layers 0 .. n-1 exactly, without building range(n): a hostile config can claim 10**9 layers
    if len(held) != config.num_hidden_layers or (held and (min(held), max(held)) != (0, len(held) - 1)):
        raise CheckpointError(f"{source}: the config has num_hidden_layers={config.num_hidden_layers}, "
                              f"but the checkpoint holds {len(held)} layers")
    head = "score" if "score.weight" in tensors else "lm_head" if prefix else None
    expected = {name if prefix else name.removeprefix("model."): shape
                for name, shape in tensor_shapes(config, head).items()}
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{source}: tensor {name!r} is missing")
        if tuple(tensors[name].shape) != tuple(shape):
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                                  f"but the config needs {tuple(shape)}")
    kept = {}
    for name, tensor in tensors.items():
        if name in expected:
            kept[name] = tensor
        elif not (name.endswith(DROPPED_BUFFERS) or (name == "lm_head.weight" and config.tie_word_embeddings)):
            raise CheckpointError(f"{source}: tensor {name!r} is not part of a Llama with this config")
    return one_float_dtype(kept, source)


def one_float_dtype(tensors: dict, source: str) -> dict:
    """The tensors as they are when they share one float dtype; else widened, exactly, to float32 (or float64)."""
    dtypes = {t.dtype for t in tensors.values()}
    for name, tensor in tensors.items():
        if tensor.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {tensor.dtype}; a Llama checkpoint holds "
                                  f"floats ({', '.join(FLOAT_DTYPES)})")
    if len(dtypes) <= 1:
        return tensors
    target = "F64" if "F64" in dtypes else "F32"
    return {name: t if t.dtype == target else CastTensor(name, target, tuple(t.shape), t.path, t)
            for name, t in tensors.items()}


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM or SIGHUP arrives during ``convert``, so the partial
    folder is removed on the way out (a BaseException, like KeyboardInterrupt: not an error to catch)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def cleanup_on_termination():
    """For the duration of the block, SIGTERM and SIGHUP raise :class:`Terminated` (SIGINT already
    raises KeyboardInterrupt); the previous handlers are restored after. Outside the main thread,
    where Python cannot set handlers, nothing changes. A :class:`Terminated` that leaves the block
    ends the process as the signal would have (exit status 128 + the signal number)."""
    signums = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for s in signums:  # a second signal must not interrupt the cleanup the first one starts
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    except Terminated as stop:
        raise SystemExit(128 + stop.signum) from None
    finally:
        for s, old in previous.items():
            signal.signal(s, signal.SIG_DFL if old is None else old)  # None: a handler set outside Python
