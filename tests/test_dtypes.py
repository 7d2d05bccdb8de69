"""float32 in means float32 out: no silent upcast to float64 anywhere in a forward pass."""

from __future__ import annotations

import numpy as np
import pytest

import minillama
import minillama.formats.hf
from minillama import functional as F
from minillama.backend import get_namespace
from minillama.functional.rope import apply_rotary, inverse_frequencies, rope_cos_sin
from minillama.formats.synthetic import write_random_checkpoint


def test_forward_outputs_stay_float32(tiny, backend):
    model = minillama.LlamaForCausalLM.from_pretrained(tiny, backend=backend)
    xp = model.xp
    ids = np.array([[1, 2, 3, 4, 5], [0, 0, 7, 8, 9]])
    out = model(ids, attention_mask=(ids != 0).astype(np.int64), output_hidden_states=True, output_attentions=True)
    for array in (out.logits, out.last_hidden_state, *out.hidden_states, *out.attentions):
        assert array.dtype == xp.float32


def test_every_weight_is_float32(tiny, backend):
    model = minillama.LlamaForCausalLM.from_pretrained(tiny, backend=backend)
    w = model.weights
    arrays = [w.embed_tokens, w.norm, w.lm_head] + [a for layer in w.layers for a in vars(layer).values() if a is not None]
    assert all(a.dtype == model.xp.float32 for a in arrays)


def test_float16_compute_stays_float16(tmp_path):
    write_random_checkpoint(tmp_path, dtype="float32")
    model = minillama.LlamaForCausalLM.from_pretrained(tmp_path, dtype="float16")
    out = model(np.array([[1, 2, 3]]), output_hidden_states=True)
    assert out.logits.dtype == np.float16 and all(h.dtype == np.float16 for h in out.hidden_states)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_components_keep_dtype(dtype):
    xp = get_namespace("numpy")
    dt = getattr(xp, dtype)
    x = xp.asarray(np.ones((1, 3, 16)), dtype=dt)
    assert F.rms_norm(x, xp.ones(16, dtype=dt), 1e-6).dtype == dt
    assert F.silu(x).dtype == dt
    assert F.softmax(x).dtype == dt
    q = xp.reshape(x, (1, 1, 3, 16))
    out, probs = F.attention(q, q, q, F.attention_mask(3, 3, xp))
    assert out.dtype == dt and probs.dtype == dt
    config = minillama.LlamaConfig(hidden_size=64, num_attention_heads=4)
    cos, sin = rope_cos_sin(xp.asarray([[0, 1, 2]]), inverse_frequencies(config, xp), dt)
    assert apply_rotary(q, cos, sin).dtype == dt


def test_float32_checkpoint_is_not_held_twice(tiny):
    model = minillama.LlamaForCausalLM.from_pretrained(tiny)
    layer = model.weights.layers[0]

    def root(array):
        while getattr(array, "base", None) is not None and not isinstance(array, np.memmap):
            array = array.base
        return array
    # Unfused weights are views of the file; fused ones are views of one fused matrix each.
    assert isinstance(root(layer.o_proj), np.memmap) and isinstance(root(layer.down_proj), np.memmap)
    assert np.shares_memory(layer.q_proj, layer.qkv_proj) and np.shares_memory(layer.v_proj, layer.qkv_proj)
    assert np.shares_memory(layer.up_proj, layer.gate_up_proj)
    assert model.num_parameters() == sum(int(np.prod(t.shape)) for t in
                                         minillama.formats.hf.read_hf_checkpoint(tiny).values())


@pytest.mark.parametrize("stored", ["float16", "float32"])
def test_lazy_weights_give_the_same_logits(tmp_path, backend, stored):
    write_random_checkpoint(tmp_path, dtype=stored, seed=4)
    ids = np.array([[1, 2, 3, 4, 5, 6], [0, 0, 7, 8, 9, 10]])
    mask = (ids != 0).astype(np.int64)
    eager = minillama.load(tmp_path, backend=backend, lazy=False)
    lazy = minillama.load(tmp_path, backend=backend, lazy=True)
    assert lazy.weights.lazy_dtype is not None and not hasattr(lazy.weights.layers[0].q_proj, "__array_namespace__")
    a, b = eager(ids, attention_mask=mask).logits, lazy(ids, attention_mask=mask).logits
    assert b.dtype == eager.xp.float32
    # Equal up to summation order (eager NumPy stores wide matrices column-major for speed).
    np.testing.assert_allclose(minillama.to_numpy(a), minillama.to_numpy(b), rtol=1e-5, atol=1e-5)


def test_numpy_scalars_in_the_config_do_not_upcast(tiny):
    # np.float64 is a subclass of float, and NumPy 2 does not treat it as weakly typed.
    model = minillama.load(tiny)
    model.config.rms_norm_eps = np.float64(1e-5)
    model.config.rope_theta = np.float64(10000.0)
    model.config.validate()
    assert type(model.config.rms_norm_eps) is float and type(model.config.rope_theta) is float
    out = model(np.array([[1, 2, 3]]), output_hidden_states=True)
    assert out.logits.dtype == np.float32 and all(h.dtype == np.float32 for h in out.hidden_states)
