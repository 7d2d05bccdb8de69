"""Whole-model loss and gradients: against torch autograd on transformers' Llama, and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import minillama
from minillama import to_numpy
from minillama.train.backprop import loss_and_grads
from reference_cases import VARIANTS

PADDED_VARIANTS = ["mha", "gqa_4to1", "mqa", "head_dim_not_hidden_over_heads", "rope_llama3", "rope_linear",
                   "rope_dynamic", "rope_theta_1e6", "biases", "tied_embeddings", "pretraining_tp_2"]


def batch(vocab=96, seed=0):
    """Two rows, the second left-padded by 3, with a few labels ignored.

    The padded row's first real token is ignored too, so no loss term is predicted from a
    padding position: there every key is masked, and autograd through transformers' additive
    mask sends a gradient into scores whose computed value is the constant finfo.min (the
    true derivative of what was computed is zero, which is what minillama gives).
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(2, 11))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    labels = np.where(mask == 1, ids, -100)
    labels[0, 4] = -100
    labels[1, 3] = -100
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return ids, mask, labels, positions


def relative(ours, theirs):
    ours = np.asarray(to_numpy(ours), dtype=np.float64)
    return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-30))


def wide_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention with the softmax in the inputs' dtype (its own is always float32).

    For float64 references only: transformers' eager softmax rounds float64 scores to float32,
    which no float64 gradient check could get past.
    """
    import torch
    groups = module.num_key_value_groups
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def wide_rms_norm(self, hidden_states):
    """LlamaRMSNorm in the input's dtype (transformers' own always normalises in float32)."""
    import torch
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def float64_reference(reference, monkeypatch, config):
    """transformers' model in float64 throughout: its softmax and RMSNorm otherwise compute in float32.

    The rotation tables are inputs, not parameters; both libraries compute them in float32, where
    torch's and NumPy's pow differ by an ulp (6e-8), so the reference is handed minillama's tables.
    """
    import torch
    from transformers.models.llama import modeling_llama
    from minillama.model.forward import rotary_tables

    def same_rotary(self, x, position_ids):
        cos, sin = rotary_tables(config, position_ids.numpy(), np.float64)
        return torch.from_numpy(np.asarray(cos)).to(x.dtype), torch.from_numpy(np.asarray(sin)).to(x.dtype)

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", wide_rms_norm)
    monkeypatch.setattr(modeling_llama.LlamaRotaryEmbedding, "forward", same_rotary)
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    AttentionInterface.register("eager_float64", wide_eager_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("eager_float64", eager_mask)
    reference = reference.to(torch.float64)
    reference.config._attn_implementation = "eager_float64"
    return reference


def torch_loss_and_grads(reference, ids, mask, labels, positions):
    """transformers' logits, torch's shifted cross-entropy in the logits' dtype (transformers' own
    loss widens to float32 only), and autograd's gradients."""
    import torch
    reference.zero_grad()
    logits = reference(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                       position_ids=torch.as_tensor(positions)).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             torch.as_tensor(labels)[:, 1:].reshape(-1), ignore_index=-100)
    loss.backward()
    grads = {name: p.grad.detach().double().numpy() for name, p in reference.named_parameters()}
    return float(loss.detach()), grads


@pytest.mark.parametrize("variant", PADDED_VARIANTS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradients_equal_torch_autograd(tmp_path, monkeypatch, variant, dtype):
    torch = pytest.importorskip("torch")
    from conftest import make_hf_checkpoint
    reference = make_hf_checkpoint(tmp_path, **VARIANTS[variant])
    if dtype == "float64":
        reference = float64_reference(reference, monkeypatch, minillama.LlamaConfig.from_pretrained(tmp_path))
    ids, mask, labels, positions = batch()
    expected_loss, expected = torch_loss_and_grads(reference, ids, mask, labels, positions)
    model = minillama.load(tmp_path, dtype=dtype)
    loss, grads = loss_and_grads(model, ids, labels, attention_mask=mask, position_ids=positions)
    tol = 1e-8 if dtype == "float64" else 1e-4
    assert isinstance(loss, float) and abs(loss - expected_loss) <= tol * abs(expected_loss)
    assert set(grads) == set(expected)
    for name, grad in grads.items():
        assert grad.dtype == np.dtype(dtype) and tuple(grad.shape) == expected[name].shape, name
        assert relative(grad, expected[name]) <= tol, name


@pytest.mark.parametrize("variant", ["gqa_4to1", "mqa", "biases", "tied_embeddings"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_unpadded_gradients_equal_torch_autograd(tmp_path, monkeypatch, variant, dtype):
    # No attention mask: the training step's blocked causal attention (fast.train_attention), in
    # blocks of 4 over 11 tokens, against autograd.
    pytest.importorskip("torch")
    from conftest import make_hf_checkpoint
    from minillama.fast import train_attention
    monkeypatch.setattr(train_attention, "QUERY_BLOCK", 4)
    reference = make_hf_checkpoint(tmp_path, **VARIANTS[variant])
    if dtype == "float64":
        reference = float64_reference(reference, monkeypatch, minillama.LlamaConfig.from_pretrained(tmp_path))
    ids = np.random.default_rng(2).integers(0, 96, size=(2, 11))
    labels = ids.copy()
    labels[0, 4] = -100
    positions = np.broadcast_to(np.arange(11), ids.shape).copy()
    expected_loss, expected = torch_loss_and_grads(reference, ids, np.ones_like(ids), labels, positions)
    model = minillama.load(tmp_path, dtype=dtype)
    loss, grads = loss_and_grads(model, ids, labels)
    tol = 1e-8 if dtype == "float64" else 1e-4
    assert abs(loss - expected_loss) <= tol * abs(expected_loss)
    assert set(grads) == set(expected)
    for name, grad in grads.items():
        assert grad.dtype == np.dtype(dtype), name
        assert relative(grad, expected[name]) <= tol, name


def test_default_labels_are_the_inputs_with_padding_ignored(tiny):
    model = minillama.load(tiny, dtype="float64")
    ids, mask, labels, positions = batch(vocab=model.config.vocab_size)
    loss, _ = loss_and_grads(model, ids, attention_mask=mask)
    explicit, _ = loss_and_grads(model, ids, np.where(mask == 1, ids, -100), attention_mask=mask)
    assert loss == explicit


def test_gradients_equal_finite_differences(tiny, backend):
    # float64, no torch: nudge a few entries of several parameters and watch the loss move.
    model = minillama.load(tiny, dtype="float64", backend=backend)
    ids, mask, labels, positions = batch(vocab=model.config.vocab_size)
    loss, grads = loss_and_grads(model, ids, labels, attention_mask=mask)
    params = model.state_dict()
    rng = np.random.default_rng(1)
    h = 1e-6
    for name in ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.layers.1.input_layernorm.weight", "model.norm.weight", "lm_head.weight"]:
        p = params[name]
        host = np.array(to_numpy(p))
        for _ in range(2):
            index = tuple(int(rng.integers(0, n)) for n in host.shape)
            if name == "model.embed_tokens.weight":
                index = (int(ids[0, 2]),) + index[1:]  # a row that is used
            values = []
            for step in (h, -h):
                nudged = host.copy()
                nudged[index] += step
                p[...] = model.xp.asarray(nudged)
                values.append(loss_and_grads(model, ids, labels, attention_mask=mask)[0])
            p[...] = model.xp.asarray(host)
            numeric = (values[0] - values[1]) / (2 * h)
            analytic = float(to_numpy(grads[name])[index])
            assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (name, index, numeric, analytic)


def test_recompute_gives_the_same_gradients(tiny):
    model = minillama.load(tiny, dtype="float64")
    ids, mask, labels, _ = batch(vocab=model.config.vocab_size)
    loss, grads = loss_and_grads(model, ids, labels, attention_mask=mask)
    again, regrads = loss_and_grads(model, ids, labels, attention_mask=mask, recompute=True)
    assert loss == again
    for name in grads:
        np.testing.assert_array_equal(to_numpy(grads[name]), to_numpy(regrads[name]))


def test_float32_in_float32_out(tiny, backend):
    model = minillama.load(tiny, backend=backend)
    ids, mask, labels, _ = batch(vocab=model.config.vocab_size)
    loss, grads = loss_and_grads(model, ids, labels, attention_mask=mask)
    assert np.isfinite(loss)
    assert all(g.dtype == model.xp.float32 for g in grads.values())


def test_bad_labels_are_refused(tiny):
    model = minillama.load(tiny)
    with pytest.raises(ValueError, match="labels has shape"):
        loss_and_grads(model, [[1, 2, 3]], [[1, 2]])
