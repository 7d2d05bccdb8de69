"""LoRA adapters in peft's files: save_lora and load_lora, hostile folders, and peft reading and writing them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import minillama
from minillama import to_numpy
from minillama.errors import CheckpointError, ConfigError
from minillama.formats.safetensors import read_safetensors, write_safetensors
from minillama.train import add_lora, load_lora, merge_lora, save_lora
from test_lora import logits_of, randomize_B
from test_train_grads import batch, relative

# --- peft's files ----------------------------------------------------------------------------------

def test_save_and_load_lora_round_trip(tiny, tmp_path, backend):
    model = minillama.load(tiny, backend=backend)
    adapters = add_lora(model, r=4, alpha=16, target_modules=("v_proj", "q_proj", "gate_proj"))
    randomize_B(model)
    folder = tmp_path / "adapter"
    assert save_lora(model, folder) == ["adapter_model.safetensors", "adapter_config.json"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("peft_type", "r", "lora_alpha", "target_modules", "lora_dropout", "bias",
                                    "task_type", "fan_in_fan_out")} == {
        "peft_type": "LORA", "r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "gate_proj"],
        "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM", "fan_in_fan_out": False}
    stored = read_safetensors(folder / "adapter_model.safetensors")
    assert set(stored) == {"base_model.model." + name for name in adapters}
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p]
    fresh = minillama.load(tiny, backend=backend)
    loaded = load_lora(fresh, folder)
    assert list(loaded) == list(adapters)
    for name in adapters:
        np.testing.assert_array_equal(to_numpy(loaded[name]), to_numpy(adapters[name]))
    ids, mask, _, _ = batch(vocab=model.config.vocab_size)
    np.testing.assert_array_equal(logits_of(fresh, ids, mask), logits_of(model, ids, mask))
    save_lora(fresh, folder)  # into the existing folder
    assert sorted(os.listdir(folder)) == ["adapter_config.json", "adapter_model.safetensors"]


class Stored:
    """A tensor for write_safetensors from a NumPy array."""

    def __init__(self, array):
        self.array, self.shape = array, array.shape
        self.dtype = {"float32": "F32", "int32": "I32"}[array.dtype.name]

    def raw(self):
        return self.array


def write_adapter(folder, config: dict, tensors: dict):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    stored = {name: Stored(array) for name, array in tensors.items()}
    write_safetensors(os.path.join(folder, "adapter_model.safetensors"), list(stored), stored)


def test_broken_adapter_folders_are_refused_in_one_line(tiny, tmp_path):
    model = minillama.load(tiny)
    add_lora(model, r=2)
    save_lora(model, tmp_path / "good")
    config = json.loads((tmp_path / "good" / "adapter_config.json").read_text())
    stored = read_safetensors(tmp_path / "good" / "adapter_model.safetensors")
    good = {name: np.array(t.numpy()) for name, t in stored.items()}
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    cases = [
        ({**config, "peft_type": "IA3"}, good, ConfigError, "peft_type"),
        ({**config, "r": 0}, good, ConfigError, "r must be"),
        ({**config, "r": True}, good, ConfigError, "r must be"),
        ({**config, "lora_alpha": "16"}, good, ConfigError, "lora_alpha"),
        ({**config, "target_modules": "q_proj|v_proj"}, good, ConfigError, "target_modules"),
        ({**config, "target_modules": ["q_proj", "lm_head"]}, good, ConfigError, "target_modules"),
        ({**config, "use_dora": True}, good, ConfigError, "use_dora"),
        ({**config, "bias": "all"}, good, ConfigError, "bias"),
        ({k: v for k, v in config.items() if k != "r"}, good, ConfigError, "'r' is missing"),
        (config, {k: v for k, v in good.items() if k != key}, CheckpointError, "lora_A.weight' is missing"),
        (config, {**good, key: good[key][:1]}, CheckpointError, "has shape"),
        (config, {**good, key: good[key].astype(np.int32)}, CheckpointError, "dtype I32"),
        (config, {**good, key: np.full_like(good[key], np.nan)}, CheckpointError, "NaN"),
        (config, {**good, "base_model.model.lm_head.lora_A.weight": good[key]}, CheckpointError, "not an adapter"),
        ({**config, "r": 3}, good, CheckpointError, "has shape"),
    ]
    for n, (bad_config, tensors, error, message) in enumerate(cases):
        folder = str(tmp_path / f"bad{n}")
        write_adapter(folder, bad_config, tensors)
        with pytest.raises(error, match=message) as caught:
            load_lora(minillama.load(tiny), folder)
        text = str(caught.value)
        assert "\n" not in text and folder in text, (n, text)
    (tmp_path / "bad0" / "adapter_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_lora(model, tmp_path / "bad0")
    with pytest.raises(FileNotFoundError):
        load_lora(model, tmp_path / "missing")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_lora(minillama.load(tiny), tmp_path / "none")


def test_saved_adapter_loads_in_peft_with_equal_logits(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from conftest import make_hf_checkpoint
    reference = make_hf_checkpoint(tmp_path / "base")
    model = minillama.load(tmp_path / "base")
    add_lora(model, r=4, alpha=12, target_modules=("q_proj", "v_proj", "o_proj", "up_proj"), seed=2)
    randomize_B(model)
    save_lora(model, tmp_path / "adapter")
    wrapped = peft.PeftModel.from_pretrained(reference, str(tmp_path / "adapter")).eval()
    ids, mask, _, _ = batch()
    with torch.no_grad():
        expected = wrapped(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.double().numpy()
    ours = logits_of(model, ids, mask)
    assert relative(ours[mask == 1], expected[mask == 1]) <= 1e-4
    # peft's own merge gives the logits minillama's merge gives.
    merged = wrapped.merge_and_unload()
    with torch.no_grad():
        merged_logits = merged(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.double()
    merge_lora(model)
    assert relative(logits_of(model, ids, mask)[mask == 1], merged_logits.numpy()[mask == 1]) <= 1e-4


def test_a_peft_saved_adapter_loads_with_equal_logits(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from conftest import make_hf_checkpoint
    reference = make_hf_checkpoint(tmp_path / "base", num_attention_heads=4, num_key_value_heads=2)
    wrapped = peft.get_peft_model(reference, peft.LoraConfig(r=3, lora_alpha=5, target_modules=["k_proj", "down_proj"],
                                                             lora_dropout=0.1, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    wrapped.save_pretrained(tmp_path / "adapter")
    model = minillama.load(tmp_path / "base")
    adapters = load_lora(model, tmp_path / "adapter")
    assert len(adapters) == 2 * 2 * model.config.num_hidden_layers
    ids, mask, _, _ = batch()
    with torch.no_grad():
        expected = wrapped.eval()(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits
    assert relative(logits_of(model, ids, mask)[mask == 1], expected.double().numpy()[mask == 1]) <= 1e-4


def test_a_bare_llama_model_uses_peft_names_without_the_model_prefix(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from conftest import make_hf_checkpoint
    make_hf_checkpoint(tmp_path / "base", cls_name="LlamaModel")
    reference = transformers.LlamaModel.from_pretrained(tmp_path / "base", dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    model = minillama.load(tmp_path / "base")
    assert type(model).__name__ == "LlamaModel"
    add_lora(model, target_modules=("q_proj", "gate_proj"))
    randomize_B(model)
    save_lora(model, tmp_path / "adapter")
    names = set(read_safetensors(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.layers.0.self_attn.q_proj.lora_A.weight" in names
    wrapped = peft.PeftModel.from_pretrained(reference, str(tmp_path / "adapter")).eval()
    ids, mask, _, _ = batch()
    with torch.no_grad():
        expected = wrapped(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).last_hidden_state
    ours = np.asarray(to_numpy(model(ids, attention_mask=mask).last_hidden_state), dtype=np.float64)
    assert relative(ours[mask == 1], expected.double().numpy()[mask == 1]) <= 1e-4
    again = minillama.load(tmp_path / "base")
    load_lora(again, tmp_path / "adapter")
    np.testing.assert_array_equal(to_numpy(again(ids, attention_mask=mask).last_hidden_state), to_numpy(
        model(ids, attention_mask=mask).last_hidden_state))


def test_save_pretrained_refuses_a_model_with_adapters(tiny, tmp_path):
    model = minillama.load(tiny)
    add_lora(model, r=2)
    with pytest.raises(ValueError, match="LoRA adapters.*save_lora.*merge_lora"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    merge_lora(model)
    model.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").exists()
