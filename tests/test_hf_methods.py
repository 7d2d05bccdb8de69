"""The Hugging Face methods users reach for: save_pretrained, resize_token_embeddings, generate.

Each is checked against minillama itself (always) and against transformers live (when
torch and transformers are installed).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import minillama
from minillama.config import LlamaConfig
from minillama.formats.synthetic import write_random_checkpoint

from conftest import make_hf_checkpoint, torch_forward

SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 1024}
CONFIGS = [
    dict(SMALL),
    dict(SMALL, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, max_position_embeddings=4096, num_labels=5,
         torch_dtype="bfloat16", tie_word_embeddings=True, eos_token_id=[2, 3], pad_token_id=0,
         architectures=["LlamaForCausalLM"], attention_bias=True),
]
# Fields transformers and minillama both have, compared after a save.
SHARED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                 "attention_bias", "mlp_bias", "tie_word_embeddings", "pretraining_tp", "pad_token_id",
                 "bos_token_id", "eos_token_id", "num_labels", "architectures")


# ---- 1. LlamaConfig.save_pretrained -------------------------------------------------------------

@pytest.mark.parametrize("overrides", CONFIGS, ids=["plain", "llama3-rope-labels-tied"])
def test_config_save_pretrained_rereads_equal(tmp_path, overrides):
    config = LlamaConfig(**overrides)
    path = config.save_pretrained(tmp_path / "saved")
    assert path == os.path.join(tmp_path / "saved", "config.json")
    assert LlamaConfig.from_pretrained(tmp_path / "saved") == config
    assert LlamaConfig.from_dict(config.to_dict()) == config
    written = json.load(open(path))
    assert written["model_type"] == "llama"
    assert written["rope_parameters"]["rope_theta"] == config.rope_theta
    assert [n for n in os.listdir(tmp_path / "saved")] == ["config.json"]  # no temporary file left


def test_config_save_pretrained_layout(tmp_path):
    config = LlamaConfig(**CONFIGS[1])
    written = json.load(open(config.save_pretrained(tmp_path)))
    assert written["rope_parameters"] == {"rope_theta": 500000.0, **LLAMA3_ROPE}
    assert written["dtype"] == written["torch_dtype"] == "bfloat16"
    assert written["architectures"] == ["LlamaForCausalLM"]
    assert written["id2label"] == {str(i): f"LABEL_{i}" for i in range(5)} and "num_labels" not in written
    plain = json.load(open(LlamaConfig(**SMALL).save_pretrained(tmp_path / "plain")))
    assert "architectures" not in plain and "dtype" not in plain and "id2label" not in plain
    assert plain["rope_parameters"] == {"rope_theta": 10000.0, "rope_type": "default"}


def test_config_save_pretrained_refuses_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        LlamaConfig(**SMALL).save_pretrained(tmp_path / "file")


@pytest.mark.parametrize("overrides", CONFIGS, ids=["plain", "llama3-rope-labels-tied"])
def test_config_save_pretrained_reads_in_transformers(tmp_path, overrides):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    import torch
    config = LlamaConfig(**overrides)
    config.save_pretrained(tmp_path)
    theirs = transformers.LlamaConfig.from_pretrained(tmp_path)
    for name in SHARED_FIELDS:
        assert getattr(theirs, name) == getattr(config, name), name
    rope = theirs.rope_parameters
    assert rope["rope_theta"] == config.rope_theta
    assert {k: v for k, v in rope.items() if k != "rope_theta"} == (config.rope_scaling or {"rope_type": "default"})
    assert theirs.dtype == (getattr(torch, config.torch_dtype) if config.torch_dtype else None)
    theirs.save_pretrained(tmp_path / "back")  # and what transformers writes back reads equal here
    assert LlamaConfig.from_pretrained(tmp_path / "back") == config
