"""LoRA: the adapter's forward and backward, the model with adapters, its gradients (against peft), merging,
training steps. peft's files: tests/test_lora_files.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minillama
from minillama import functional as F
from minillama import to_numpy
from minillama.backend import get_namespace
from minillama.model.forward import project
from minillama.train import AdamW, add_lora, loss_and_grads, lora_parameters, merge_lora
from reference_cases import VARIANTS
from test_train_grads import batch, float64_reference, relative

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def randomize_B(model, seed=1, size=0.3):
    """Give every lora_B random values (add_lora starts them at zero, where A gets no gradient)."""
    rng = np.random.default_rng(seed)
    for name, array in lora_parameters(model).items():
        if ".lora_B." in name:
            array[...] = model.xp.asarray(size * rng.standard_normal(tuple(array.shape)).astype(model.dtype))


def logits_of(model, ids, mask=None):
    return np.asarray(to_numpy(model(ids, attention_mask=mask).logits), dtype=np.float64)


# --- functional.lora -------------------------------------------------------------------------------

def delta_case(xp, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x, A, B, R = (rng.standard_normal(s) for s in ((2, 3, 5), (2, 5), (4, 2), (2, 3, 4)))
    return [xp.asarray(a.astype(dtype)) for a in (x, A, B, R)]


def test_lora_delta_is_scaled_B_A_x(backend):
    xp = get_namespace(backend)
    x, A, B, _ = delta_case(xp, "float64")
    got = to_numpy(F.lora_delta(x, A, B, 1.5))
    hx, hA, hB = (to_numpy(a) for a in (x, A, B))
    expected = 1.5 * np.einsum("or,ri,bsi->bso", hB, hA, hx)
    np.testing.assert_allclose(got, expected, rtol=1e-13)


def test_lora_delta_backward_equals_finite_differences(backend):
    xp = get_namespace(backend)
    x, A, B, R = delta_case(xp, "float64")
    scale = 1.7
    grads = [to_numpy(g) for g in F.lora_delta_backward(R, x, A, B, scale)]  # of sum(delta * R)
    inputs = [np.array(to_numpy(a)) for a in (x, A, B)]
    h = 1e-6
    for which, (host, grad) in enumerate(zip(inputs, grads)):
        assert grad.shape == host.shape
        for index in np.ndindex(*host.shape):
            values = []
            for step in (h, -h):
                args = [a.copy() for a in inputs]
                args[which][index] += step
                args = [xp.asarray(a) for a in args]
                values.append(float(xp.sum(F.lora_delta(args[0], args[1], args[2], scale) * R)))
            numeric = (values[0] - values[1]) / (2 * h)
            assert abs(numeric - grad[index]) <= 1e-7 * max(1.0, abs(grad[index])), (which, index)


def test_lora_delta_float32_in_float32_out(backend):
    xp = get_namespace(backend)
    x, A, B, R = delta_case(xp, "float32")
    assert F.lora_delta(x, A, B, 2.0).dtype == xp.float32
    assert all(g.dtype == xp.float32 for g in F.lora_delta_backward(R, x, A, B, 2.0))


def test_lora_delta_backward_equals_torch_autograd():
    torch = pytest.importorskip("torch")
    x, A, B, R = delta_case(np, "float64")
    tx, tA, tB = (torch.tensor(a, requires_grad=True) for a in (x, A, B))
    (((tx @ tA.T) @ tB.T * 0.75) * torch.tensor(R)).sum().backward()
    for ours, theirs in zip(F.lora_delta_backward(R, x, A, B, 0.75), (tx, tA, tB)):
        assert relative(ours, theirs.grad.numpy()) <= 1e-12


# --- adapters on a model ---------------------------------------------------------------------------

def test_add_lora_names_shapes_and_peft_init(tiny):
    model = minillama.load(tiny)
    assert model.assembly.name == "cpu"
    adapters = add_lora(model, r=4, alpha=8, target_modules=["v_proj", "q_proj", "down_proj"], seed=3)
    assert model.assembly is minillama.model.REFERENCE  # the fused path knows nothing of adapters
    c = model.config
    names = [f"model.layers.{i}.{m}.{p}.weight" for i in range(c.num_hidden_layers)
             for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj") for p in ("lora_A", "lora_B")]
    assert list(adapters) == names
    assert adapters["model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, c.hidden_size)
    assert adapters["model.layers.0.self_attn.v_proj.lora_B.weight"].shape == (c.num_key_value_heads * c.head_dim, 4)
    assert adapters["model.layers.1.mlp.down_proj.lora_A.weight"].shape == (4, c.intermediate_size)
    # A is the seeded draw, uniform in +-1/sqrt(in) (peft's kaiming_uniform with a=sqrt(5)); B is zero.
    rng = np.random.default_rng(3)
    first = rng.uniform(-1 / math.sqrt(c.hidden_size), 1 / math.sqrt(c.hidden_size), size=(4, c.hidden_size))
    np.testing.assert_array_equal(adapters[names[0]], first.astype(np.float32))
    for name, array in adapters.items():
        assert array.dtype == np.float32
        if ".lora_B." in name:
            assert not np.any(array)
        else:
            assert 0.5 / math.sqrt(array.shape[1]) < np.max(np.abs(array)) <= 1 / math.sqrt(array.shape[1])
    assert lora_parameters(model).keys() == adapters.keys()
    assert all(lora_parameters(model)[n] is a for n, a in adapters.items())  # live arrays
    assert model.state_dict().keys() == minillama.load(tiny).state_dict().keys()  # the base weights only


def test_zero_B_gives_the_base_logits(tiny, backend):
    base = minillama.load(tiny, dtype="float64", backend=backend, assembly="reference")
    ids, mask, _, _ = batch(vocab=base.config.vocab_size)
    expected = logits_of(base, ids, mask)
    model = minillama.load(tiny, dtype="float64", backend=backend)
    add_lora(model, target_modules=ALL)
    np.testing.assert_array_equal(logits_of(model, ids, mask), expected)


def test_random_B_logits_equal_a_hand_computation(tiny, backend):
    model = minillama.load(tiny, dtype="float64", backend=backend)
    adapters = add_lora(model, r=3, alpha=5, target_modules=("k_proj", "o_proj", "up_proj"))
    randomize_B(model)
    ids, mask, _, _ = batch(vocab=model.config.vocab_size)
    # One projection: W x + (alpha / r) B A x.
    layer = model.weights.layers[1]
    x = np.random.default_rng(5).standard_normal((2, 3, model.config.hidden_size))
    A, B = (to_numpy(adapters[f"model.layers.1.mlp.up_proj.{p}.weight"]) for p in ("lora_A", "lora_B"))
    expected = x @ to_numpy(layer.up_proj).T + (5 / 3) * (x @ A.T) @ B.T
    np.testing.assert_allclose(to_numpy(project(model.xp.asarray(x), layer, "up_proj")), expected, rtol=1e-12)
    # The whole model: the same logits as the base model with W + (alpha / r) B A written into its weights.
    by_hand = minillama.load(tiny, dtype="float64", assembly="reference")
    for i, w in enumerate(by_hand.weights.layers):
        for field, module in (("k_proj", "self_attn.k_proj"), ("o_proj", "self_attn.o_proj"),
                              ("up_proj", "mlp.up_proj")):
            A, B = (to_numpy(adapters[f"model.layers.{i}.{module}.{p}.weight"]) for p in ("lora_A", "lora_B"))
            setattr(w, field, getattr(w, field) + (5 / 3) * B @ A)
    got = logits_of(model, ids, mask)
    np.testing.assert_allclose(got, logits_of(by_hand, ids, mask), rtol=1e-11, atol=1e-11)
    assert np.max(np.abs(got - logits_of(minillama.load(tiny, dtype="float64"), ids, mask))) > 1e-3  # B matters


def test_bad_add_lora_arguments_are_refused(tiny):
    model = minillama.load(tiny)
    for kwargs, message in ((dict(r=0), "r must be"), (dict(alpha=float("nan")), "lora_alpha"),
                            (dict(target_modules="q_proj"), "target_modules"),
                            (dict(target_modules=["lm_head"]), "target_modules"),
                            (dict(target_modules=[]), "target_modules"), (dict(seed=-1), "seed")):
        with pytest.raises(ValueError, match=message):
            add_lora(model, **kwargs)
    assert model.assembly.name == "cpu"  # nothing changed
    add_lora(model)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model)
    with pytest.raises(ValueError, match="lazy=False"):
        add_lora(minillama.load(tiny, lazy=True))


# --- gradients -------------------------------------------------------------------------------------

def test_lora_gradients_are_the_adapters_only_and_equal_finite_differences(tiny, backend):
    model = minillama.load(tiny, dtype="float64", backend=backend)
    adapters = add_lora(model, r=2, alpha=3, target_modules=ALL)
    randomize_B(model)
    ids, mask, labels, _ = batch(vocab=model.config.vocab_size)
    loss, grads = loss_and_grads(model, ids, labels, attention_mask=mask)
    assert set(grads) == set(adapters)  # the frozen weights get none
    for name, grad in grads.items():
        assert tuple(grad.shape) == tuple(adapters[name].shape) and grad.dtype == model.xp.float64, name
    rng = np.random.default_rng(2)
    h = 1e-6
    for name in ["model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.1.self_attn.k_proj.lora_B.weight",
                 "model.layers.2.self_attn.v_proj.lora_A.weight", "model.layers.3.self_attn.o_proj.lora_B.weight",
                 "model.layers.0.mlp.gate_proj.lora_A.weight", "model.layers.1.mlp.up_proj.lora_B.weight",
                 "model.layers.3.mlp.down_proj.lora_A.weight"]:
        p = adapters[name]
        host = np.array(to_numpy(p))
        index = tuple(int(rng.integers(0, n)) for n in host.shape)
        values = []
        for step in (h, -h):
            nudged = host.copy()
            nudged[index] += step
            p[...] = model.xp.asarray(nudged)
            values.append(loss_and_grads(model, ids, labels, attention_mask=mask)[0])
        p[...] = model.xp.asarray(host)
        numeric = (values[0] - values[1]) / (2 * h)
        analytic = float(to_numpy(grads[name])[index])
        assert abs(analytic) > 1e-6, name  # a gradient that can be told from zero
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (name, index, numeric, analytic)
    again, regrads = loss_and_grads(model, ids, labels, attention_mask=mask, recompute=True)
    assert again == loss
    for name in grads:
        np.testing.assert_array_equal(to_numpy(regrads[name]), to_numpy(grads[name]))


def test_frozen_weight_gradients_are_not_computed(tiny, monkeypatch):
    model = minillama.load(tiny)
    add_lora(model, target_modules=ALL)

    def refuse(*args, **kwargs):
        raise AssertionError("a frozen weight's gradient was computed")
    for name in ("linear_backward", "swiglu_mlp_backward", "embedding_backward"):
        monkeypatch.setattr(F, name, refuse)
    loss, grads = loss_and_grads(model, *batch(vocab=model.config.vocab_size)[:1])
    assert np.isfinite(loss) and all(".lora_" in name for name in grads)


def test_float32_lora_gradients_are_float32(tiny, backend):
    model = minillama.load(tiny, backend=backend)
    add_lora(model)
    randomize_B(model)
    ids, mask, labels, _ = batch(vocab=model.config.vocab_size)
    _, grads = loss_and_grads(model, ids, labels, attention_mask=mask)
    assert len(grads) == 2 * 2 * model.config.num_hidden_layers
    assert all(g.dtype == model.xp.float32 for g in grads.values())


def test_adamw_steps_change_only_the_adapters(tiny, backend):
    model = minillama.load(tiny, backend=backend)
    adapters = add_lora(model, target_modules=("q_proj", "v_proj", "down_proj"))
    base = {name: np.array(to_numpy(a)) for name, a in model.state_dict().items()}
    start = {name: np.array(to_numpy(a)) for name, a in adapters.items()}
    ids, mask, labels, _ = batch(vocab=model.config.vocab_size)
    optimizer = AdamW(adapters, lr=1e-2)
    losses = []
    for _ in range(3):
        loss, grads = loss_and_grads(model, ids, labels, attention_mask=mask)
        optimizer.step(grads)
        losses.append(loss)
    assert losses[-1] < losses[0]
    for name, array in model.state_dict().items():
        np.testing.assert_array_equal(to_numpy(array), base[name], err_msg=name)
    for name, array in adapters.items():
        assert not np.array_equal(to_numpy(array), start[name]), name
        assert lora_parameters(model)[name] is array  # updated in place, still the model's


# --- merging ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("assembly", [None, "reference"])  # the fused layout; read-only mapped weights
def test_merge_lora_keeps_the_logits(tiny, backend, assembly):
    if backend != "numpy" and assembly is None:
        pytest.skip("the default assembly off NumPy is the reference")
    model = minillama.load(tiny, backend=backend, assembly=assembly)  # float32
    add_lora(model, r=4, alpha=8, target_modules=ALL)
    randomize_B(model, size=0.5)
    ids, mask, _, _ = batch(vocab=model.config.vocab_size)
    before = logits_of(model, ids, mask)
    assert np.max(np.abs(before - logits_of(minillama.load(tiny, backend=backend), ids, mask))) > 1e-2
    assert merge_lora(model) is model
    assert all(layer.lora is None for layer in model.weights.layers) and lora_parameters(model) == {}
    np.testing.assert_allclose(logits_of(model, ids, mask), before, rtol=1e-5, atol=1e-5)
    _, grads = loss_and_grads(model, ids, attention_mask=mask)  # a plain model again: every weight trains
    assert "model.embed_tokens.weight" in grads and not any(".lora_" in name for name in grads)


def test_generation_with_adapters_equals_the_merged_model(tiny):
    # Decoding runs the KV cache path: every step must see the adapters too.
    model = minillama.load(tiny, dtype="float64")
    add_lora(model, target_modules=ALL)
    randomize_B(model, size=1.0)
    prompt = [[5, 17, 3, 99]]
    with_adapters = model.generate(prompt, max_new_tokens=8)
    plain = minillama.load(tiny, dtype="float64").generate(prompt, max_new_tokens=8)
    assert not np.array_equal(with_adapters, plain)
    np.testing.assert_array_equal(merge_lora(model).generate(prompt, max_new_tokens=8), with_adapters)


# --- against peft on transformers' Llama -----------------------------------------------------------

def peft_model_with_our_adapters(reference, model, targets, r, alpha):
    """peft.get_peft_model on the transformers model, with minillama's A and B copied in."""
    import torch
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(reference, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                                             lora_dropout=0.0))
    ours = lora_parameters(model)
    theirs = {name: p for name, p in wrapped.named_parameters() if p.requires_grad}
    assert set(theirs) == {"base_model.model." + n.replace(".weight", ".default.weight") for n in ours}
    with torch.no_grad():
        for name, array in ours.items():
            theirs["base_model.model." + name.replace(".weight", ".default.weight")].copy_(
                torch.from_numpy(np.asarray(to_numpy(array))))
    return wrapped, theirs


@pytest.mark.parametrize("variant", ["gqa_4to1", "biases", "tied_embeddings"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_loss_and_adapter_gradients_equal_peft(tmp_path, monkeypatch, dtype, variant):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from conftest import make_hf_checkpoint
    reference = make_hf_checkpoint(tmp_path, **VARIANTS[variant])
    if dtype == "float64":
        reference = float64_reference(reference, monkeypatch, minillama.LlamaConfig.from_pretrained(tmp_path))
    model = minillama.load(tmp_path, dtype=dtype)
    add_lora(model, r=4, alpha=8, target_modules=ALL, seed=7)
    randomize_B(model)
    wrapped, theirs = peft_model_with_our_adapters(reference, model, ALL, 4, 8)
    ids, mask, labels, positions = batch()
    logits = wrapped(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                     position_ids=torch.as_tensor(positions)).logits
    expected_loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                      torch.as_tensor(labels)[:, 1:].reshape(-1), ignore_index=-100)
    expected_loss.backward()
    expected_loss = float(expected_loss.detach())
    loss, grads = loss_and_grads(model, ids, labels, attention_mask=mask, position_ids=positions)
    tol = 1e-8 if dtype == "float64" else 1e-4
    assert abs(loss - expected_loss) <= tol * abs(expected_loss)
    assert set(grads) == set(lora_parameters(model))
    for name, grad in grads.items():
        expected = theirs["base_model.model." + name.replace(".weight", ".default.weight")].grad.double().numpy()
        assert grad.dtype == np.dtype(dtype)
        assert relative(grad, expected) <= tol, name
