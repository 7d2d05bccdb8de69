"""The commands that read or write checkpoint files: ``convert``, ``inspect``, ``make-tiny``, ``make-synthetic``."""

from __future__ import annotations

import math
import time

from .progress import TensorProgress


def run_make_synthetic(args) -> None:
    from ..config import LlamaConfig
    from ..formats.safetensors import nbytes
    from ..formats.synthetic import LLAMA2_7B_CONFIG, RandomTensor, tensor_shapes, write_random_checkpoint
    config = LlamaConfig(**LLAMA2_7B_CONFIG)
    shapes = tensor_shapes(config)
    sizes = [nbytes(RandomTensor(n, s, args.dtype, 0)) for n, s in shapes.items()]
    total = sum(sizes)
    start = time.perf_counter()
    # Each shard but the last fills past total/shards by less than one tensor: exactly --shards files.
    write_random_checkpoint(args.out, config, dtype=args.dtype, seed=args.seed,
                            max_shard_bytes=math.ceil(total / args.shards) + max(sizes),
                            progress=TensorProgress(len(shapes), "writing"))
    print(f"wrote a random {args.shape} ({total / 2**30:.1f} GiB, {args.dtype}) to {args.out} "
          f"in {time.perf_counter() - start:.0f} s")


def run_convert(args) -> None:
    from ..formats import open_checkpoint
    from ..formats.convert import convert
    _, tensors, fmt = open_checkpoint(args.src)
    shard_bytes = max(1, int(args.max_shard_size * 1e9))  # --max-shard-size is checked positive and finite
    files = convert(args.src, args.out, shard_bytes, TensorProgress(len(tensors), "converting"))
    print(f"wrote {args.out}: {len(files)} safetensors file(s), {len(tensors)} tensors, from a {fmt} checkpoint")


def run_inspect(args) -> None:
    from ..formats.report import describe
    # --context None: describe() sizes the KV cache for the model's own max_position_embeddings.
    print(describe(args.path, args.context))


def run_make_tiny(args) -> None:
    from ..formats.synthetic import write_random_checkpoint
    config = write_random_checkpoint(args.out, seed=args.seed, dtype=args.dtype, tokenizer=True)
    print(f"wrote a random {config.num_hidden_layers}-layer Llama (hidden {config.hidden_size}, "
          f"vocab {config.vocab_size}) with a stand-in tokenizer to {args.out}")
