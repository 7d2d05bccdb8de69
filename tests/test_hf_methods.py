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


# ---- 2. model.save_pretrained -------------------------------------------------------------------

IDS = np.array([[1, 5, 9, 33, 2, 70], [4, 4, 80, 17, 60, 3]])


def _header(path):
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size))


def _transformers_logits(folder, ids=IDS, dtype="float32"):
    import torch
    import transformers
    theirs = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype),
                                                           attn_implementation="eager").eval()
    return torch_forward(theirs, ids).logits.float().numpy()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("shard", [None, 30_000], ids=["one-file", "sharded"])
def test_save_pretrained_loads_in_transformers(tmp_path, tied, shard):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    make_hf_checkpoint(tmp_path / "source", tie_word_embeddings=tied)
    model = minillama.load(tmp_path / "source")
    ours = model(IDS).logits
    written = model.save_pretrained(tmp_path / "saved", **({"max_shard_size": shard} if shard else {}))
    files = sorted(os.listdir(tmp_path / "saved"))
    assert files == sorted(written) and "generation_config.json" in files and "config.json" in files
    np.testing.assert_allclose(_transformers_logits(tmp_path / "saved"), ours, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(minillama.load(tmp_path / "saved")(IDS).logits, ours)
    shards = [n for n in files if n.endswith(".safetensors")]
    names = set().union(*[_header(tmp_path / "saved" / n).keys() for n in shards]) - {"__metadata__"}
    assert ("lm_head.weight" in names) == (not tied)  # a tied head is stored once, as the embedding
    if shard:
        index = json.load(open(tmp_path / "saved" / "model.safetensors.index.json"))
        assert len(shards) > 1 and set(index["weight_map"]) == names
        assert index["metadata"]["total_parameters"] == model.num_parameters()
        for n in shards:  # no shard over the limit, unless it holds one tensor only
            assert os.path.getsize(tmp_path / "saved" / n) < shard + 4096 or len(_header(tmp_path / "saved" / n)) == 2
    else:
        assert shards == ["model.safetensors"]


def test_save_pretrained_float16_stays_float16(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    make_hf_checkpoint(tmp_path / "source", save_dtype="float16")
    model = minillama.load(tmp_path / "source", dtype="float16")
    model.save_pretrained(tmp_path / "saved")
    header = _header(tmp_path / "saved" / "model.safetensors")
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    assert json.load(open(tmp_path / "saved" / "config.json"))["dtype"] == "float16"
    theirs = _transformers_logits(tmp_path / "saved")  # float16 weights, computed in float32
    np.testing.assert_allclose(theirs, _transformers_logits(tmp_path / "source"), atol=0, rtol=0)
    np.testing.assert_allclose(model(IDS).logits.astype(np.float32), theirs, atol=0.05, rtol=0)


def test_save_pretrained_classifier_and_base_model_load_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    make_hf_checkpoint(tmp_path / "cls", cls_name="LlamaForSequenceClassification", num_labels=3, pad_token_id=0)
    classifier = minillama.load(tmp_path / "cls")
    classifier.save_pretrained(tmp_path / "cls-saved")
    assert classifier.generation_config is None and "generation_config.json" not in os.listdir(tmp_path / "cls-saved")
    theirs = transformers.LlamaForSequenceClassification.from_pretrained(tmp_path / "cls-saved", dtype=torch.float32)
    np.testing.assert_allclose(torch_forward(theirs.eval(), IDS).logits.numpy(), classifier(IDS).logits, atol=1e-5)
    base = minillama.LlamaModel.from_pretrained(tmp_path / "cls")
    base.save_pretrained(tmp_path / "base-saved")
    assert "embed_tokens.weight" in _header(tmp_path / "base-saved" / "model.safetensors")  # no "model." prefix
    theirs = transformers.LlamaModel.from_pretrained(tmp_path / "base-saved", dtype=torch.float32).eval()
    np.testing.assert_allclose(torch_forward(theirs, IDS).last_hidden_state.numpy(), base(IDS).last_hidden_state,
                               atol=1e-5)


def test_save_pretrained_round_trips_without_torch(tmp_path, tiny):
    model = minillama.load(tiny)
    model.save_pretrained(tmp_path / "saved", max_shard_size="0.2MB")
    again = minillama.load(tmp_path / "saved")
    assert again.config == model.config and again.generation_config == model.generation_config
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], value, err_msg=name)
    assert len([n for n in os.listdir(tmp_path / "saved") if n.endswith(".safetensors")]) > 1


def test_save_pretrained_streams_a_lazy_model(tmp_path, monkeypatch):
    from minillama import modeling_save
    write_random_checkpoint(tmp_path / "source", dtype="float16")
    eager = minillama.load(tmp_path / "source")
    lazy = minillama.load(tmp_path / "source", lazy=True)
    made, alive_at_each_call = [], []
    original = modeling_save.SavedTensor.raw

    def tracked(self):
        import weakref
        alive_at_each_call.append(sum(ref() is not None for ref in made))
        array = original(self)
        made.append(weakref.ref(array))
        return array
    monkeypatch.setattr(modeling_save.SavedTensor, "raw", tracked)
    lazy.save_pretrained(tmp_path / "lazy")
    assert len(made) == len(lazy.state_dict()) and max(alive_at_each_call) <= 1  # one tensor in memory at a time
    monkeypatch.undo()
    eager.save_pretrained(tmp_path / "eager")
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert open(tmp_path / "lazy" / name, "rb").read() == open(tmp_path / "eager" / name, "rb").read(), name


def test_save_pretrained_into_an_existing_folder(tmp_path, tiny):
    model = minillama.load(tiny)
    target = tmp_path / "target"
    model.save_pretrained(target, max_shard_size="0.2MB")
    (target / "tokenizer.model").write_bytes(b"kept")
    model.save_pretrained(target)  # one file now: the old shards and index go, other files stay
    assert sorted(os.listdir(target)) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.model"]
    again = minillama.load(target)
    np.testing.assert_array_equal(again(IDS).logits, model(IDS).logits)
    assert sorted(os.listdir(tmp_path)) == ["target"]  # no temporary folder left beside it


def test_save_pretrained_over_its_own_source_folder(tmp_path):
    write_random_checkpoint(tmp_path / "model")
    model = minillama.load(tmp_path / "model")  # float32 weights memory-mapped from the files replaced
    before = model(IDS).logits
    model.save_pretrained(tmp_path / "model")
    np.testing.assert_array_equal(model(IDS).logits, before)
    np.testing.assert_array_equal(minillama.load(tmp_path / "model")(IDS).logits, before)


def test_save_pretrained_failure_leaves_nothing_half_written(tmp_path, tiny, monkeypatch):
    from minillama import modeling_save
    model = minillama.load(tiny)
    model.save_pretrained(tmp_path / "old")
    before = {n: open(tmp_path / "old" / n, "rb").read() for n in os.listdir(tmp_path / "old")}
    calls, real_write = [], modeling_save.write_safetensors

    def failing(path, names, tensors, progress=None):  # the second shard fails, as a full disk would
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(path, names, tensors, progress)
    monkeypatch.setattr(modeling_save, "write_safetensors", failing)
    for target in ("old", "new"):
        calls.clear()
        with pytest.raises(OSError, match="disk full"):
            model.save_pretrained(tmp_path / target, max_shard_size="0.2MB")
    assert sorted(os.listdir(tmp_path)) == ["old"]  # "new" never appeared, no temporary folder is left
    assert {n: open(tmp_path / "old" / n, "rb").read() for n in os.listdir(tmp_path / "old")} == before


def test_save_pretrained_bad_arguments(tmp_path, tiny):
    model = minillama.load(tiny)
    with pytest.raises(ValueError, match="safe_serialization"):
        model.save_pretrained(tmp_path / "x", safe_serialization=False)
    for bad in ("5 parsecs", "", "-1GB", 0, -5, 2.5, True):
        with pytest.raises(ValueError, match="max_shard_size"):
            model.save_pretrained(tmp_path / "x", max_shard_size=bad)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        model.save_pretrained(tmp_path / "file")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_parse_shard_size_reads_sizes_as_transformers():
    from minillama.modeling_save import parse_shard_size
    assert parse_shard_size("5GB") == 5 * 10**9 and parse_shard_size("500MB") == 500 * 10**6
    assert parse_shard_size("1.5kb") == 1500 and parse_shard_size(" 2TB ") == 2 * 10**12
    assert parse_shard_size("2GiB") == 2 * 2**30 and parse_shard_size("3MiB") == 3 * 2**20 and parse_shard_size(7) == 7
    hub = pytest.importorskip("huggingface_hub.serialization._base")
    for size in ("5GB", "500MB", "1.5kb", " 2TB ", "0.3MB"):
        assert parse_shard_size(size) == hub.parse_size_to_int(size)


def test_generation_config_json_is_read_and_saved_again(tmp_path, tiny):
    import shutil
    shutil.copytree(tiny, tmp_path / "model")
    (tmp_path / "model" / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_length": 40, "bos_token_id": 1}))
    model = minillama.load(tmp_path / "model")
    assert model.generation_config.temperature == 0.6 and model.generation_config.top_k is None
    model.save_pretrained(tmp_path / "saved")
    assert json.load(open(tmp_path / "saved" / "generation_config.json")) == \
        {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_length": 40, "bos_token_id": 1}
    (tmp_path / "model" / "generation_config.json").write_text("[1, 2]")
    with pytest.raises(minillama.errors.ConfigError, match="generation_config.json"):
        minillama.load(tmp_path / "model")


# ---- 3. resize_token_embeddings -----------------------------------------------------------------

def test_resize_grows_rows_near_the_old_mean(tiny):
    model = minillama.load(tiny)
    old_embed, old_head = np.array(model.weights.embed_tokens), np.array(model.weights.lm_head)
    before = model(IDS).logits
    returned = model.resize_token_embeddings(512 + 4000)
    assert returned is model.weights.embed_tokens and returned.shape == (4512, 64) and model.config.vocab_size == 4512
    np.testing.assert_array_equal(returned[:512], old_embed)
    np.testing.assert_array_equal(model.weights.lm_head[:512], old_head)
    np.testing.assert_allclose(model(IDS).logits[..., :512], before, atol=1e-5, rtol=0)  # BLAS blocks by size
    for new, old in ((returned[512:], old_embed), (model.weights.lm_head[512:], old_head)):
        mean = old.mean(axis=0)
        centered = old - mean
        covariance = centered.T @ centered / len(old)
        np.testing.assert_allclose(new.mean(axis=0), mean, atol=2e-6)  # the sample mean: the old mean
        # The spread: 1e-9 times the old covariance (its diagonal, within sampling error of 4000 rows).
        np.testing.assert_allclose(new.var(axis=0) / (1e-9 * np.diag(covariance)), 1.0, atol=0.15)
        assert not np.array_equal(new[0], new[1])  # drawn, not copied
    assert model(np.array([[4511, 1]])).logits.shape == (1, 2, 4512)


def test_resize_is_seeded(tiny):
    first, second, third = (minillama.load(tiny) for _ in range(3))
    np.testing.assert_array_equal(first.resize_token_embeddings(520), second.resize_token_embeddings(520))
    assert not np.array_equal(first.weights.embed_tokens, third.resize_token_embeddings(520, seed=1))


def test_resize_exact_mean_when_the_covariance_is_singular(tmp_path):
    write_random_checkpoint(tmp_path, {"vocab_size": 40})  # 40 rows of 64 columns: covariance of rank < 64
    model = minillama.load(tmp_path)
    old = np.array(model.weights.embed_tokens)
    model.resize_token_embeddings(43)
    np.testing.assert_array_equal(model.weights.embed_tokens[40:], np.tile(old.mean(axis=0, dtype=np.float32), (3, 1)))


def test_resize_without_mean_resizing_is_normal_with_initializer_range(tiny):
    model = minillama.load(tiny)
    model.resize_token_embeddings(512 + 3000, mean_resizing=False)
    for new in (model.weights.embed_tokens[512:], model.weights.lm_head[512:]):
        assert abs(float(new.mean())) < 1e-3 and abs(float(new.std()) - 0.02) < 1e-3
    model.config.initializer_range = 0.5  # read from config.json's initializer_range, as transformers does
    assert abs(float(model.resize_token_embeddings(4000 + 3000, mean_resizing=False)[4000:].std()) - 0.5) < 0.02


def test_resize_pad_to_multiple_shrink_tied_and_no_op(tmp_path, tiny):
    model = minillama.load(tiny)
    assert model.resize_token_embeddings(600, pad_to_multiple_of=64).shape == (640, 64)
    assert model.resize_token_embeddings(pad_to_multiple_of=100).shape == (700, 64) and model.config.vocab_size == 700
    kept = model.weights.embed_tokens
    assert model.resize_token_embeddings() is kept and model.resize_token_embeddings(700) is kept
    before = model(IDS).logits
    assert model.resize_token_embeddings(100).shape == (100, 64) and model.weights.lm_head.shape == (100, 64)
    np.testing.assert_allclose(model(IDS).logits, before[..., :100], atol=1e-5, rtol=0)
    write_random_checkpoint(tmp_path / "tied", {"tie_word_embeddings": True, "pad_token_id": 300})
    tied = minillama.load(tmp_path / "tied")
    tied.resize_token_embeddings(530)
    assert tied.weights.lm_head is tied.weights.embed_tokens and tied.state_dict().keys() == \
        minillama.load(tmp_path / "tied").state_dict().keys()
    tied.resize_token_embeddings(200)
    assert tied.config.pad_token_id is None  # the pad row is gone
    tied.save_pretrained(tmp_path / "tied-saved")  # the resized model saves and reloads
    np.testing.assert_array_equal(minillama.load(tmp_path / "tied-saved")(IDS).logits, tied(IDS).logits)


def test_resize_bad_arguments(tiny):
    model = minillama.load(tiny)
    for kwargs in ({"new_num_tokens": 0}, {"new_num_tokens": 2.5}, {"new_num_tokens": True},
                   {"new_num_tokens": 10, "pad_to_multiple_of": 0}, {"pad_to_multiple_of": "8"}):
        with pytest.raises(ValueError, match=next(iter(kwargs)) if len(kwargs) == 1 else "pad_to_multiple_of"):
            model.resize_token_embeddings(**kwargs)
    with pytest.raises(ValueError, match="lazy=False"):
        minillama.load(tiny, lazy=True).resize_token_embeddings(600)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_resize_matches_transformers(tmp_path, tied):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    # vocab 48 < hidden 64: the covariance is singular, so both fill new rows with the exact mean.
    theirs = make_hf_checkpoint(tmp_path, vocab_size=48, tie_word_embeddings=tied)
    ours = minillama.load(tmp_path)
    for new_num_tokens, multiple in ((53, None), (None, 32), (70, 16), (40, None)):
        embedding = theirs.resize_token_embeddings(new_num_tokens, pad_to_multiple_of=multiple)
        returned = ours.resize_token_embeddings(new_num_tokens, pad_to_multiple_of=multiple)
        assert returned.shape == tuple(embedding.weight.shape) and ours.config.vocab_size == theirs.config.vocab_size
        np.testing.assert_allclose(returned, embedding.weight.detach().numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(ours.weights.lm_head, theirs.lm_head.weight.detach().numpy(), atol=1e-6, rtol=0)
        ids = np.array([[1, 5, ours.config.vocab_size - 1, 7]])
        np.testing.assert_allclose(ours(ids).logits, torch_forward(theirs, ids).logits.numpy(), atol=1e-5, rtol=0)


def test_resize_positive_definite_case_matches_transformers_statistics(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    theirs = make_hf_checkpoint(tmp_path)  # vocab 96 > hidden 64: a positive definite covariance
    ours = minillama.load(tmp_path)
    mean = np.array(ours.weights.embed_tokens).mean(axis=0)
    added = theirs.resize_token_embeddings(96 + 500).weight.detach().numpy()[96:]
    mine = ours.resize_token_embeddings(96 + 500)[96:]
    spread = lambda rows: np.abs(rows - mean).max()  # noqa: E731
    assert 0 < spread(mine) < 1e-3 and 0 < spread(added) < 1e-3  # both drawn, both next to the mean
    assert 0.5 < spread(mine) / spread(added) < 2
    head = theirs.lm_head.weight.detach().numpy()[96:]
    np.testing.assert_allclose(ours.weights.lm_head[96:].mean(axis=0), head.mean(axis=0), atol=1e-4)


def test_resize_mean_resizing_false_matches_transformers_statistics(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    theirs = make_hf_checkpoint(tmp_path)
    ours = minillama.load(tmp_path)
    added = theirs.resize_token_embeddings(96 + 2000, mean_resizing=False).weight.detach().numpy()[96:]
    mine = ours.resize_token_embeddings(96 + 2000, mean_resizing=False)[96:]
    assert mine.shape == added.shape
    assert abs(float(mine.std()) - float(added.std())) < 1e-3 and abs(float(mine.mean()) - float(added.mean())) < 1e-3


# ---- 4. model.generate --------------------------------------------------------------------------

PROMPTS = np.array([[0, 0, 1, 5, 9, 33], [1, 7, 8, 9, 10, 11], [0, 1, 40, 41, 42, 43]])
PROMPT_MASK = (PROMPTS != 0).astype(np.int64)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A transformers model and minillama's load of the very same random checkpoint (no generation_config.json)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("generate")
    theirs = make_hf_checkpoint(folder, max_position_embeddings=64)
    os.remove(folder / "generation_config.json")
    return theirs, minillama.load(folder), folder


def _their_generate(theirs, ids, **kwargs):
    import warnings

    import torch
    tensors = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers warns about the default max_length
        return theirs.generate(torch.as_tensor(ids), **tensors).numpy()


@pytest.mark.parametrize("kwargs", [
    {},  # transformers' defaults: greedy, 20 new tokens
    {"max_new_tokens": 9},
    {"max_length": 11},
    {"max_new_tokens": 5, "max_length": 30},  # max_new_tokens wins
    {"max_new_tokens": 14, "eos_token_id": [53, 10], "pad_token_id": 0},
    {"max_new_tokens": 14, "eos_token_id": [53, 28]},  # finished rows padded with the first EOS
    {"max_new_tokens": 12, "repetition_penalty": 1.3},
    {"max_new_tokens": 6, "do_sample": False, "temperature": 0.3, "top_k": 3},  # greedy whatever they say
], ids=["defaults", "max_new_tokens", "max_length", "both-lengths", "eos-pad", "eos-pads-eos", "repetition", "greedy"])
def test_greedy_generate_matches_transformers(pair, kwargs):
    theirs, ours, _ = pair
    for ids, mask in ((PROMPTS[1:2], None), (PROMPTS, PROMPT_MASK)):
        extra = {"attention_mask": mask} if mask is not None else {}
        expected = _their_generate(theirs, ids, **extra, **kwargs)
        got = ours.generate(ids, **extra, **kwargs)
        assert isinstance(got, np.ndarray) and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_generate_pads_finished_rows_and_infers_the_mask(pair):
    theirs, ours, _ = pair
    # Row 0 stops at 53 after two tokens (see the eos-pad case); later positions hold the pad id.
    got = ours.generate(PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=14, eos_token_id=[53], pad_token_id=3)
    assert got[0, 6:8].tolist() == [83, 53] and set(got[0, 8:].tolist()) == {3}
    # No mask given: transformers (and minillama) mask the pad ids when the pad is not an EOS.
    expected = _their_generate(theirs, PROMPTS, max_new_tokens=8, pad_token_id=0)
    np.testing.assert_array_equal(ours.generate(PROMPTS, max_new_tokens=8, pad_token_id=0), expected)
    np.testing.assert_array_equal(ours.generate(PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=8), expected)


def test_sampling_is_seeded(pair):
    _, ours, _ = pair
    first = ours.generate(PROMPTS, attention_mask=PROMPT_MASK, do_sample=True, max_new_tokens=10, seed=7)
    np.testing.assert_array_equal(ours.generate(PROMPTS, attention_mask=PROMPT_MASK, do_sample=True,
                                                max_new_tokens=10, seed=7), first)
    others = [ours.generate(PROMPTS, attention_mask=PROMPT_MASK, do_sample=True, max_new_tokens=10, seed=s)
              for s in range(3)]
    assert any(not np.array_equal(o, first) for o in others)
    greedy = ours.generate(PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=10)
    assert not all(np.array_equal(o, greedy) for o in others)  # sampling, not the argmax
    # top_k=1 keeps only the argmax: sampling then is greedy, as in transformers.
    np.testing.assert_array_equal(ours.generate(PROMPTS, attention_mask=PROMPT_MASK, do_sample=True, top_k=1,
                                                max_new_tokens=10, seed=3), greedy)


def test_generation_config_json_defaults_are_honoured(pair, tmp_path):
    import shutil

    import transformers
    theirs, _, folder = pair
    shutil.copytree(folder, tmp_path / "model")
    settings = {"max_length": 13, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [28, 53], "pad_token_id": 5}
    (tmp_path / "model" / "generation_config.json").write_text(json.dumps(settings))
    ours = minillama.load(tmp_path / "model")
    theirs.generation_config = transformers.GenerationConfig.from_pretrained(tmp_path / "model")
    try:
        expected = _their_generate(theirs, PROMPTS, attention_mask=PROMPT_MASK)  # greedy: do_sample unset
        got = ours.generate(PROMPTS, attention_mask=PROMPT_MASK)
        assert got.shape == expected.shape and got.shape[1] <= 13  # max_length from the file counts the prompt
        np.testing.assert_array_equal(got, expected)
        assert 5 in got[:, 6:]  # a finished row is padded with the file's pad id
        # Arguments and a generation_config passed in win over the file.
        np.testing.assert_array_equal(ours.generate(PROMPTS, attention_mask=PROMPT_MASK, max_length=9),
                                      _their_generate(theirs, PROMPTS, attention_mask=PROMPT_MASK, max_length=9))
        np.testing.assert_array_equal(ours.generate(PROMPTS, attention_mask=PROMPT_MASK,
                                                    generation_config={"max_new_tokens": 4, "eos_token_id": []}),
                                      ours.generate(PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=4,
                                                    eos_token_id=[]))
    finally:
        theirs.generation_config = transformers.GenerationConfig.from_model_config(theirs.config)


def test_generation_config_do_sample_from_the_file(tiny, tmp_path):
    import shutil
    shutil.copytree(tiny, tmp_path / "model")
    ids = np.array([[1, 17, 40, 200]])
    greedy = minillama.load(tiny).generate(ids, max_new_tokens=12)
    (tmp_path / "model" / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 1.5, "top_k": 0, "max_new_tokens": 12}))
    model = minillama.load(tmp_path / "model")
    samples = [model.generate(ids, seed=s) for s in range(4)]
    assert all(s.shape == (1, 16) for s in samples) and any(not np.array_equal(s, greedy) for s in samples)
    np.testing.assert_array_equal(model.generate(ids, seed=2), samples[2])
    np.testing.assert_array_equal(model.generate(ids, do_sample=False), greedy)  # the argument wins


def test_generate_bad_arguments(tiny):
    model = minillama.load(tiny)
    ids = np.array([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="max_length"):
        model.generate(ids, max_length=4)
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(ids, num_beams=4)
    with pytest.raises(ValueError, match="'typo'"):
        model.generate(ids, typo=1)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids, do_sample=True, top_p=0.0)
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(np.zeros((1, 0), dtype=np.int64))
    assert model.generate(ids, num_beams=1, use_cache=True, max_new_tokens=2).shape == (1, 6)
    assert model.generate([1, 2, 3], max_new_tokens=2).shape == (1, 5)  # a list, one row


def _argmax_loop(model, ids, mask, steps):
    """Greedy decoding by full forward passes, no cache: the reference generate must match without torch."""
    ids, mask = np.array(ids), np.array(mask)
    for _ in range(steps):
        logits = minillama.to_numpy(model(ids, attention_mask=mask).logits)[:, -1, :]
        ids = np.concatenate([ids, logits.argmax(axis=-1)[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones((len(ids), 1), dtype=np.int64)], axis=1)
    return ids


def test_greedy_generate_is_the_argmax_of_each_step(tiny):
    model = minillama.load(tiny)
    prompts = np.array([[0, 0, 1, 17, 40, 200], [1, 5, 9, 300, 301, 302]])
    mask = (prompts != 0).astype(np.int64)
    expected = _argmax_loop(model, prompts, mask, 20)
    np.testing.assert_array_equal(model.generate(prompts, attention_mask=mask), expected)  # 20 new by default
    np.testing.assert_array_equal(model.generate(prompts, attention_mask=mask, max_length=10), expected[:, :10])
    # Stopping: each row ends at its first EOS, later positions hold the pad id.
    eos = int(expected[0, 8])
    end = 6 + expected[0, 6:].tolist().index(eos)  # where row 0 first makes it
    got = model.generate(prompts, attention_mask=mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=7)
    np.testing.assert_array_equal(got[0, :end + 1], expected[0, :end + 1])
    assert set(got[0, end + 1:].tolist()) <= {7}


def test_hf_methods_on_the_strict_backend(tiny, tmp_path):
    reference, strict = minillama.load(tiny), minillama.load(tiny, backend="strict")
    ids = np.array([[1, 17, 40, 200]])
    np.testing.assert_array_equal(strict.generate(ids, max_new_tokens=6), reference.generate(ids, max_new_tokens=6))
    resized = strict.resize_token_embeddings(520)
    np.testing.assert_array_equal(minillama.to_numpy(resized), reference.resize_token_embeddings(520))
    strict.save_pretrained(tmp_path / "strict")
    reference.save_pretrained(tmp_path / "numpy")
    assert open(tmp_path / "strict" / "model.safetensors", "rb").read() == \
        open(tmp_path / "numpy" / "model.safetensors", "rb").read()


def test_forward_with_labels_returns_the_shifted_mean_loss(tiny):
    model = minillama.load(tiny, dtype="float64")
    ids = np.random.default_rng(0).integers(0, 512, size=(2, 9))
    labels = ids.copy()
    labels[0, 3] = -100
    out = model(ids, labels=labels)
    logits = np.asarray(out.logits)[:, :-1]  # position t predicts label t + 1
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
    target = labels[:, 1:]
    kept = target != -100
    expected = -log_probs[kept, target[kept]].mean()
    assert isinstance(out.loss, float) and abs(out.loss - expected) < 1e-12
    assert model(ids).loss is None
    with pytest.raises(ValueError, match="labels has shape"):
        model(ids, labels=labels[:, :4])


def test_forward_loss_equals_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    from conftest import make_hf_checkpoint
    reference = make_hf_checkpoint(tmp_path, num_key_value_heads=2)
    ids = np.random.default_rng(1).integers(0, 96, size=(2, 12))
    labels = ids.copy()
    labels[1, :5] = -100
    with torch.no_grad():
        expected = float(reference(torch.as_tensor(ids), labels=torch.as_tensor(labels)).loss)
    assert abs(minillama.load(tmp_path)(ids, labels=labels).loss - expected) < 1e-5


def test_load_state_dict_copies_in_place(tiny, tmp_path):
    model = minillama.load(tiny, dtype="float64")
    other = minillama.load(tiny, dtype="float64")
    ids = np.array([[1, 5, 9, 200]])
    params = model.state_dict()
    new = {name: np.asarray(p) * 0.5 for name, p in params.items()}
    other.load_state_dict(new)
    q = other.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(np.asarray(q), new["model.layers.0.self_attn.q_proj.weight"])
    assert not np.array_equal(np.asarray(other(ids).logits), np.asarray(model(ids).logits))
    other.load_state_dict({name: np.asarray(p) for name, p in params.items()})
    np.testing.assert_array_equal(np.asarray(other(ids).logits), np.asarray(model(ids).logits))
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"model.norm.weight": new["model.norm.weight"]})
    with pytest.raises(ValueError, match="has shape"):
        other.load_state_dict({**new, "model.norm.weight": np.zeros(3)})
