"""karpathy's llama2.c formats: model ``.bin`` checkpoints and ``tokenizer.bin``.

A legacy (version 0) ``.bin`` is seven int32 header fields, ``dim, hidden_dim,
n_layers, n_heads, n_kv_heads, vocab_size, seq_len`` (a negative vocab_size
means the classifier is stored separately, at the end), then float32 arrays:
token embedding, then each kind of layer tensor for all layers at once (rms_att,
wq, wk, wv, wo, rms_ffn, w1, w2, w3), rms_final, two unused rotary tables, and
the classifier if it is not shared.

A version 1 file starts with the magic "ak42", a version number, the same seven
fields and a shared-classifier byte, padded to 256 bytes; its arrays are ordered
norms first. (Version 2, int8-quantised, is not read.)

llama2.c's rotary embedding uses Meta's interleaved pairs, so q/k rows are
permuted to the rotate-half layout on loading, as for Meta's checkpoints.
"""

from __future__ import annotations

import math
import os
import struct

import numpy as np

from ..config import LlamaConfig
from ..errors import CheckpointError
from ..files import MiB, check_regular_file, open_regular_file, read_limited
from ..tokenizer.bpe import BPETokenizer, BYTE, CONTROL, NORMAL, SPACE, UNKNOWN, SentencePieceModel
from .tensors import DerivedTensor, StoredTensor

MAGIC = 0x616B3432  # "ak42" little-endian
TOKENIZER_LIMIT = 64 * MiB  # Llama 2's 32000 tokens take 0.4 MiB


def _header(path: str, data: bytes):
    """(version, fields dict, shared classifier, header size) of a .bin file."""
    if len(data) < 28:
        raise CheckpointError(f"{path}: too short for a llama2.c header ({len(data)} bytes)")
    magic = struct.unpack("<I", data[:4])[0]
    if magic == MAGIC:
        if len(data) < 256:
            raise CheckpointError(f"{path}: truncated llama2.c version header")
        version = struct.unpack("<i", data[4:8])[0]
        values = struct.unpack("<7i", data[8:36])
        shared = bool(data[36])
        header_size = 256
    else:
        version = 0
        values = struct.unpack("<7i", data[:28])
        shared = values[5] > 0
        values = values[:5] + (abs(values[5]),) + values[6:]
        header_size = 28
    fields = dict(zip(("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"), values))
    if version not in (0, 1):
        raise CheckpointError(f"{path}: llama2.c version {version} is not supported (versions 0 and 1, float32, are)")
    _check_fields(path, fields)
    return version, fields, shared, header_size


def _check_fields(path: str, fields: dict) -> None:
    """Header fields positive and consistent with one another (the file size is checked against them later)."""
    bad = [f"{k}={v}" for k, v in fields.items() if v <= 0]
    if bad:
        raise CheckpointError(f"{path}: not a llama2.c checkpoint: header fields must be positive, got {', '.join(bad)}")
    dim, heads, kv_heads = fields["dim"], fields["n_heads"], fields["n_kv_heads"]
    if dim % heads or (dim // heads) % 2:
        raise CheckpointError(f"{path}: not a llama2.c checkpoint: dim={dim} must be n_heads={heads} times an even head size")
    if heads % kv_heads:
        raise CheckpointError(f"{path}: not a llama2.c checkpoint: n_heads={heads} must be a multiple of n_kv_heads={kv_heads}")


def read_llama2c_checkpoint(path: str) -> tuple[LlamaConfig, dict]:
    """Config and Hugging Face-named tensors of a llama2.c ``.bin`` (memory-mapped)."""
    path = os.fspath(path)
    try:
        check_regular_file(path, CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    with open_regular_file(path, CheckpointError) as f:  # kept open: the map below is made from this handle
        version, p, shared, offset = _header(path, f.read(256))
        return _index(path, f, os.fstat(f.fileno()).st_size, version, p, shared, offset)


def _index(path: str, f, size: int, version: int, p: dict, shared: bool, offset: int) -> tuple[LlamaConfig, dict]:
    """Config and tensors of a .bin whose header is read: every block mapped from the open file ``f``."""
    dim, hidden, layers, vocab = p["dim"], p["hidden_dim"], p["n_layers"], p["vocab_size"]
    heads, kv_heads = p["n_heads"], p["n_kv_heads"]
    head_dim = dim // heads
    kv_dim = kv_heads * head_dim

    blocks = {  # name -> shape of the whole block (all layers together for layer tensors)
        "embed": (vocab, dim), "rms_att": (layers, dim), "wq": (layers, dim, dim), "wk": (layers, kv_dim, dim),
        "wv": (layers, kv_dim, dim), "wo": (layers, dim, dim), "rms_ffn": (layers, dim),
        "w1": (layers, hidden, dim), "w2": (layers, dim, hidden), "w3": (layers, hidden, dim), "rms_final": (dim,),
        "freq_real": (p["seq_len"], head_dim // 2), "freq_imag": (p["seq_len"], head_dim // 2), "wcls": (vocab, dim),
    }
    if version == 0:
        order = ["embed", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final",
                 "freq_real", "freq_imag"]
    else:
        order = ["rms_att", "rms_ffn", "rms_final", "embed", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]
    if not shared:
        order.append("wcls")
    needed = offset + 4 * sum(math.prod(blocks[name]) for name in order)  # Python ints: no overflow
    if size < needed:
        raise CheckpointError(f"{path}: truncated: the header describes {needed} bytes, the file has {size}")
    if size > needed:
        raise CheckpointError(f"{path}: {size - needed} bytes past what the header describes ({needed} bytes expected, "
                              f"the file has {size}; does the header give fewer layers than the file holds?)")

    flat = np.memmap(f, dtype=np.float32, mode="r", offset=offset, shape=((needed - offset) // 4,))
    arrays, at = {}, 0
    for name in order:
        n = math.prod(blocks[name])
        arrays[name] = flat[at:at + n].reshape(blocks[name])
        at += n

    def stored(name, array):
        return StoredTensor(name, "F32", tuple(array.shape), path, array)

    tensors = {"model.embed_tokens.weight": stored("model.embed_tokens.weight", arrays["embed"]),
               "model.norm.weight": stored("model.norm.weight", arrays["rms_final"])}
    if not shared:
        tensors["lm_head.weight"] = stored("lm_head.weight", arrays["wcls"])
    names = {"rms_att": "input_layernorm.weight", "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
             "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight", "rms_ffn": "post_attention_layernorm.weight",
             "w1": "mlp.gate_proj.weight", "w2": "mlp.down_proj.weight", "w3": "mlp.up_proj.weight"}
    for i in range(layers):
        for key, hf in names.items():
            name = f"model.layers.{i}.{hf}"
            part = stored(name, arrays[key][i])
            rotary = heads if key == "wq" else kv_heads if key == "wk" else None
            tensors[name] = DerivedTensor(name, "F32", part.shape, path, [part], None, rotary) if rotary else part

    config = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=p["seq_len"],
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=shared, torch_dtype="float32",
                         architectures=["LlamaForCausalLM"], source=path)
    return config, tensors


def read_llama2c_tokenizer(path: str, vocab_size: int) -> BPETokenizer:
    """llama2.c's ``tokenizer.bin`` as a :class:`BPETokenizer`.

    The file is an int32 max token length, then per token a float32 score, an
    int32 byte length and the UTF-8 bytes, with spaces where sentencepiece has "▁".
    """
    data = read_limited(path, TOKENIZER_LIMIT, CheckpointError, "llama2.c tokenizer")
    pieces, scores, types, at = [], [], [], 4
    for i in range(vocab_size):
        if at + 8 > len(data):
            raise CheckpointError(f"{path}: truncated at token {i} of {vocab_size}")
        score, length = struct.unpack("<fi", data[at:at + 8])
        if not 0 <= length <= len(data) - at - 8:
            raise CheckpointError(f"{path}: token {i} claims {length} bytes, but {len(data) - at - 8} remain")
        piece = data[at + 8:at + 8 + length].decode("utf-8", errors="replace")
        at += 8 + length
        if i == 0:
            kind = UNKNOWN
        elif piece.strip() in ("<s>", "</s>"):
            kind, piece = CONTROL, piece.strip()
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            kind = BYTE
        else:
            kind = NORMAL
        pieces.append(piece.replace(" ", SPACE) if kind == NORMAL else piece)
        scores.append(score)
        types.append(kind)
    model = SentencePieceModel(pieces, scores, types, model_type=2, byte_fallback=True, add_dummy_prefix=True,
                               remove_extra_whitespaces=False, normalizer="identity")
    return BPETokenizer(model)
