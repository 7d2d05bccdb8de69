"""Random checkpoints in Hugging Face's layout, made with NumPy alone.

Real weights cannot be downloaded everywhere (CI, a classroom machine), yet every
path from a checkpoint folder to logits should run. :func:`write_random_checkpoint`
writes a ``config.json`` and safetensors shards (with an index when there is more
than one) holding random values of a useful size: the tensor names, shapes and
dtypes are those of a real checkpoint of the same config.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from ..config import LlamaConfig
from .names import tensor_shapes

# Llama-2-7B's shape (the real config.json's values), for tests and benchmarks of scale.
LLAMA2_7B_CONFIG = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)

TINY_CONFIG = dict(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=4,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5)


# A little text to train the stand-in tokenizer on, so that a tiny checkpoint is a complete folder.
TINY_TEXT = """Once upon a time there was a little llama who lived on a hill.
Every day the llama walked to the river to drink water and look at the clouds.
The sun was warm and the grass was green. One day the llama met a small bird.
"Hello," said the bird. "Where are you going?" "To the river," said the llama.
They became friends, and every morning they walked together and talked about the sky.
def add(a, b):
    return a + b
The numbers 0 1 2 3 4 5 6 7 8 9 and the letters A B C D E F G H I J K L M N O P Q R S T U V W X Y Z.
"""


def write_tiny_tokenizer(path, vocab_size: int = 512) -> int:
    """Train a small sentencepiece BPE model with Llama's settings (byte fallback, identity
    normaliser, dummy prefix, <unk>/<s>/</s> = 0/1/2) and write it to ``path``; returns its size.

    A stand-in for the real Llama tokenizer, which cannot be shipped or downloaded here.
    """
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TINY_TEXT.splitlines() * 20), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def random_tensor(name: str, shape: tuple, rng: np.random.Generator, dtype) -> np.ndarray:
    """Norm gains near 1, biases small, matrices of variance 1/fan_in so activations stay O(1).

    Matrices are uniform on [-a, a] with a = sqrt(3 / fan_in) (variance 1/fan_in): uniform
    numbers are several times cheaper to draw than normal ones, which matters at 7B scale.
    """
    if name.endswith("norm.weight"):
        values = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
    elif len(shape) == 1:
        values = 0.02 * rng.standard_normal(shape, dtype=np.float32)
    else:
        values = rng.random(shape, dtype=np.float32)
        values *= 2 * math.sqrt(3.0 / shape[-1])
        values -= math.sqrt(3.0 / shape[-1])
    return values.astype(dtype, copy=False)


class RandomTensor:
    """A tensor of random values made when it is read (seeded per tensor), so a 7B checkpoint
    can be written while memory holds one tensor."""

    def __init__(self, name: str, shape: tuple, dtype: str, seed: int):
        self.name, self.shape, self.seed = name, tuple(shape), seed
        self.np_dtype = np.dtype(dtype)
        self.dtype = {"float32": "F32", "float16": "F16"}[dtype]

    def raw(self) -> np.ndarray:
        return random_tensor(self.name, self.shape, np.random.default_rng(self.seed), self.np_dtype)


def write_random_checkpoint(folder, config: LlamaConfig | dict | None = None, dtype: str = "float32",
                            seed: int = 0, max_shard_bytes: int | None = None, tokenizer: bool = False,
                            progress=None) -> LlamaConfig:
    """Write a random checkpoint of ``config`` (a dict of overrides of the tiny config, or a
    LlamaConfig) to ``folder``, which must be new or empty; return the config.

    dtype: "float32" or "float16". Tensors are made one at a time and streamed to the
    safetensors shards (with an index when there is more than one). tokenizer=True also
    trains a small stand-in ``tokenizer.model`` and sizes the vocabulary to it.
    """
    from .hf import write_hf_folder
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    folder = os.fspath(folder)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_path = os.path.join(scratch, "tokenizer.model") if tokenizer else None
        if config is None or isinstance(config, dict):
            config = {**TINY_CONFIG, **(config or {})}
            if tokenizer:
                config["vocab_size"] = write_tiny_tokenizer(tokenizer_path, config["vocab_size"])
            config = LlamaConfig(**config)
        elif tokenizer:
            raise ValueError("tokenizer=True needs the config as a dict, so the vocabulary can be sized to the tokenizer")
        tensors = {name: RandomTensor(name, shape, dtype, seed * 1_000_003 + i)
                   for i, (name, shape) in enumerate(tensor_shapes(config).items())}
        write_hf_folder(config, tensors, folder, max_shard_bytes or 2**62, tokenizer_path, progress)
    return config
