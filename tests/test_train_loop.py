"""The training loop: initialisation, a short run, checkpoints (loadable, atomic), exact resume, Ctrl-C."""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest

from minillama import LlamaForCausalLM
from minillama.errors import CheckpointError, ConfigError, CorpusError
from minillama.formats.safetensors import read_safetensors
from minillama.tokenizer import LlamaTokenizer
from minillama.train import TrainPreset, evaluate, init_model, model_config, train
from minillama.train import checkpoint as checkpoint_module
from minillama.train import presets as presets_module
from minillama.train.init import load_trainable

# A model small enough to take a step in milliseconds; the schedule warms up over 2 of its 6 steps.
MICRO = TrainPreset(name="micro", model=dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32),
                    seq_len=32, batch_size=4, steps=6, lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_every=3, save_every=3)


def generated_text(n_paragraphs: int = 60, seed: int = 0) -> str:
    """English-like paragraphs over a vocabulary of 150 made-up words: enough for a 400-piece BPE."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ther", "an", "sto", "ri", "ven", "ul", "da", "pre", "on", "se", "tu", "bar"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(150)]
    paragraphs = []
    for _ in range(n_paragraphs):
        sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))).capitalize() + "."
                     for _ in range(rng.randint(2, 5))]
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(generated_text(), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):
    """An uninterrupted run of 6 steps: (out folder, trainer state)."""
    out = str(tmp_path_factory.mktemp("runs") / "full")
    return out, train(corpus, out, preset=MICRO, steps=6, seed=3)


def weights_of(folder: str) -> dict:
    return {name: t.numpy() for name, t in read_safetensors(os.path.join(folder, "model.safetensors")).items()}


def assert_same_weights(a: str, b: str) -> None:
    wa, wb = weights_of(a), weights_of(b)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        assert wa[name].dtype == np.float32
        assert np.array_equal(wa[name], wb[name]), name


def test_init_draws_normal_matrices_and_unit_norms(backend):
    config = model_config(MICRO)
    model = init_model(config, seed=5, backend=backend)
    again, other = init_model(config, seed=5), init_model(config, seed=6)
    state = {name: np.asarray(a) if backend == "numpy" else np.from_dlpack(a) for name, a in model.state_dict().items()}
    assert len(state) == 2 + 2 * 9 + 1  # embedding, 9 tensors per layer, final norm, untied LM head
    for name, value in state.items():
        assert value.dtype == np.float32 and value.flags.writeable
        assert np.array_equal(value, np.asarray(again.state_dict()[name]))  # seeded: the same on every backend
        if name.endswith("norm.weight"):
            assert np.all(value == 1.0)
        else:
            n = value.size  # normal(0, initializer_range): within 5 standard errors
            assert abs(float(value.std()) - 0.02) < 5 * 0.02 / math.sqrt(2 * n), name
            assert abs(float(value.mean())) < 5 * 0.02 / math.sqrt(n), name
            assert not np.array_equal(value, np.asarray(other.state_dict()[name]))


def test_a_fresh_model_starts_at_the_uniform_loss_and_a_short_run_lowers_it(finished):
    out, state = finished
    losses = state["losses"]
    assert len(losses) == 6 and state["step"] == 6 and state["tokens_seen"] == 6 * 4 * 32
    assert abs(losses[0] - math.log(state["vocab_size"])) < 0.05  # std 0.02 weights: almost uniform predictions
    assert [s for s, _ in state["val_losses"]] == [3, 6]
    assert state["val_losses"][-1][1] < losses[0] - 0.3


def test_the_checkpoint_folder_loads_in_minillama_and_holds_the_trainer_state(finished, corpus):
    out, state = finished
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors", "optimizer.npz",
                                       "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json",
                                       "trainer_state.json"]
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["step"] == 6 and saved["seed"] == 3 and saved["preset"] == "micro" and saved["losses"] == state["losses"]
    model = LlamaForCausalLM.from_pretrained(out)
    tokenizer = LlamaTokenizer.from_pretrained(out)
    assert tokenizer.vocab_size == model.config.vocab_size == 400
    ids = np.asarray(tokenizer.encode("Kalo mither anri.")).reshape(1, -1)
    assert ids[0, 0] == 1 and ids.shape[1] > 3
    from minillama.train.data import encode_corpus, read_corpus, split_train_val
    _, val_ids = split_train_val(encode_corpus(read_corpus(corpus), tokenizer))
    assert evaluate(model, val_ids, 4, 32) == pytest.approx(state["val_losses"][-1][1], rel=1e-6)


def test_the_checkpoint_gives_transformers_the_same_logits(finished):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out, _ = finished
    ids = [[1, 17, 99, 250, 3, 399, 42]]
    ours = np.asarray(LlamaForCausalLM.from_pretrained(out)(ids).logits)
    theirs = transformers.LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    with torch.no_grad():
        expected = theirs(torch.tensor(ids)).logits.numpy()
    assert np.max(np.abs(ours - expected)) < 1e-4 * max(1.0, float(np.max(np.abs(expected))))
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("Kalo mither anri.")["input_ids"] == LlamaTokenizer.from_pretrained(out).encode("Kalo mither anri.")


def test_three_steps_then_a_resume_to_six_equal_six_steps_bit_for_bit(finished, corpus, tmp_path):
    out, state = finished
    part = str(tmp_path / "part")
    first = train(corpus, part, preset=MICRO, steps=3, seed=3)
    assert first["step"] == 3
    resumed = train(corpus, part, preset=MICRO, steps=6, resume=True)  # the seed comes from the checkpoint
    assert resumed["losses"] == state["losses"]
    assert_same_weights(part, out)


def test_ctrl_c_saves_the_last_finished_step_and_a_resume_carries_on_exactly(finished, corpus, tmp_path):
    out, _ = finished
    part = str(tmp_path / "interrupted")

    def press_ctrl_c(p):
        if p.event == "step" and p.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(corpus, part, preset=MICRO, steps=6, seed=3, progress=press_ctrl_c)
    assert checkpoint_module.read_state(part)["step"] == 4
    assert train(corpus, part, preset=MICRO, resume=True)["step"] == 6  # MICRO.steps is the default end
    assert_same_weights(part, out)


def test_a_real_ctrl_c_during_an_update_waits_for_the_update_to_finish(finished, corpus, tmp_path, monkeypatch):
    import signal
    from minillama.train import AdamW
    part = str(tmp_path / "interrupted")
    real_step = AdamW.step

    def step_with_ctrl_c(self, grads, lr=None):
        if self.step_count == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the third update is under way
        real_step(self, grads, lr)

    monkeypatch.setattr(AdamW, "step", step_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(corpus, part, preset=MICRO, steps=6, seed=3)
    monkeypatch.setattr(AdamW, "step", real_step)
    assert checkpoint_module.read_state(part)["step"] == 3  # the update finished, then the run stopped
    train(corpus, part, preset=MICRO, resume=True)
    assert_same_weights(part, finished[0])


def test_a_failed_save_leaves_the_previous_checkpoint_whole(corpus, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    train(corpus, out, preset=MICRO, steps=3, seed=3)
    before = weights_of(out)

    def broken(path, optimizer):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_optimizer", broken)
    with pytest.raises(OSError, match="No space left"):
        train(corpus, out, preset=MICRO, steps=6, resume=True)
    assert checkpoint_module.read_state(out)["step"] == 3
    assert all(np.array_equal(before[n], w) for n, w in weights_of(out).items())
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no half-written sibling left behind


def test_a_swap_cut_off_between_its_renames_is_recovered(finished, corpus, tmp_path):
    out = str(tmp_path / "run")
    train(corpus, out, preset=MICRO, steps=3, seed=3)
    os.rename(out, out + ".previous")  # as if the process died after the first rename
    assert train(corpus, out, preset=MICRO, steps=6, resume=True)["step"] == 6
    assert_same_weights(out, finished[0])
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_resume_refuses_another_seed_or_preset_and_steps_behind_it(corpus, tmp_path):
    out = str(tmp_path / "run")
    train(corpus, out, preset=MICRO, steps=3, seed=3)
    with pytest.raises(ConfigError, match="seed 3"):
        train(corpus, out, preset=MICRO, seed=4, resume=True)
    with pytest.raises(ConfigError, match="preset 'micro'"):
        train(corpus, out, preset="tiny", resume=True)
    with pytest.raises(ConfigError, match="already at step 3"):
        train(corpus, out, preset=MICRO, steps=2, resume=True)


def test_bad_output_folders_are_refused(corpus, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a previous training run"):
        train(corpus, str(other), preset=MICRO, steps=1)
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        train(corpus, str(tmp_path / "new"), preset=MICRO, resume=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_a_text_too_short_for_one_window_is_refused(finished, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text(generated_text(3), encoding="utf-8")
    long_windows = TrainPreset(**{**MICRO.__dict__, "seq_len": 1000})
    with pytest.raises(CorpusError, match="training tokens is too short for windows of 1000"):
        train(str(path), str(tmp_path / "out"), preset=long_windows, tokenizer=finished[0])


def test_a_preset_larger_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(presets_module, "available_memory", lambda: 2**20)
    with pytest.raises(ConfigError, match=r"preset 'demo' needs about 0\.\d\d GiB"):
        train(str(tmp_path / "missing.txt"), str(tmp_path / "out"), preset="demo")


def test_memory_estimate_counts_parameters_optimizer_and_activations():
    config = model_config(presets_module.PRESETS["demo"])
    assert presets_module.count_parameters(config) == init_model(config).num_parameters() == 6_819_072
    needed = presets_module.memory_needed(config, 8, 256)
    assert 4 * 4 * 6_819_072 < needed < 2**30


def test_fine_tuning_from_a_checkpoint_resumes_from_its_own_weights(finished, corpus, tmp_path):
    whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
    state = train(corpus, whole, preset=MICRO, steps=4, from_model=finished[0])
    assert state["from"] == finished[0] and state["losses"][0] < finished[1]["losses"][0] - 0.3  # starts trained
    train(corpus, part, preset=MICRO, steps=2, from_model=finished[0])
    assert train(corpus, part, preset=MICRO, steps=4, resume=True)["losses"] == state["losses"]
    assert_same_weights(part, whole)


def test_lora_trains_only_adapters_and_resumes_exactly(finished, corpus, tmp_path):
    pytest.importorskip("minillama.train.lora")
    whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
    state = train(corpus, whole, preset=MICRO, steps=4, from_model=finished[0], lora_r=4)
    assert "model.safetensors" not in os.listdir(whole) and "adapter_model.safetensors" in os.listdir(whole)
    assert state["lora_r"] == 4 and abs(state["losses"][0] - finished[1]["losses"][-1]) < 0.5  # B = 0: the base model
    train(corpus, part, preset=MICRO, steps=2, from_model=finished[0], lora_r=4)
    assert train(corpus, part, preset=MICRO, steps=4, resume=True)["losses"] == state["losses"]
    adapters = [read_safetensors(os.path.join(f, "adapter_model.safetensors")) for f in (whole, part)]
    assert len(adapters[0]) == 2 * 2 * 2  # q_proj and v_proj of 2 layers, A and B each
    for name, tensor in adapters[0].items():
        assert np.array_equal(tensor.numpy(), adapters[1][name].numpy()), name


def test_the_strict_array_api_backend_trains_like_numpy(finished, corpus, tmp_path):
    state = train(corpus, str(tmp_path / "strict"), preset=MICRO, steps=3, seed=3, backend="strict")
    assert state["losses"] == pytest.approx(finished[1]["losses"][:3], rel=1e-5)
    assert weights_of(str(tmp_path / "strict"))["model.norm.weight"].dtype == np.float32


def test_a_given_tokenizer_is_used_and_saved_instead_of_training_one(finished, corpus, tmp_path):
    given = os.path.join(finished[0], "tokenizer.model")
    out = str(tmp_path / "run")
    preset = TrainPreset(**{**MICRO.__dict__, "model": {**MICRO.model, "vocab_size": 256}})  # vocab_size: the tokenizer's
    state = train(corpus, out, preset=preset, steps=1, tokenizer=given)
    assert state["vocab_size"] == LlamaForCausalLM.from_pretrained(out).config.vocab_size == 400
    with open(given, "rb") as a, open(os.path.join(out, "tokenizer.model"), "rb") as b:
        assert a.read() == b.read()


def test_a_loaded_model_is_copied_into_writable_arrays(finished):
    model = load_trainable(finished[0])
    assert model.assembly.name == "reference"
    for name, array in model.state_dict().items():
        assert isinstance(array, np.ndarray) and array.flags.writeable and array.dtype == np.float32, name
        assert not isinstance(array, np.memmap)
