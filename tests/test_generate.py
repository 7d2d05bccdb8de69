"""KV cache, sampling functions and generation, against recomputation and transformers."""

from __future__ import annotations

import numpy as np
import pytest

import minillama
from minillama.generation import sampling as S
from minillama.backend import get_namespace, to_numpy
from minillama.generation.generate import generate


def test_cached_logits_equal_recomputed_at_every_step(tiny, backend):
    model = minillama.LlamaForCausalLM.from_pretrained(tiny, backend=backend)
    ids = np.random.default_rng(0).integers(3, 256, size=(2, 14))
    ids[1, :5] = 0
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    full = to_numpy(model(ids, attention_mask=mask).logits)
    cache = model.new_cache(2, 14)
    pieces = [to_numpy(model(ids[:, :6], attention_mask=mask[:, :6], cache=cache).logits)]
    for t in range(6, 14):
        pieces.append(to_numpy(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits))
    stepped = np.concatenate(pieces, axis=1)
    assert np.abs(stepped - full)[mask == 1].max() < 1e-5


def test_cache_overflow_is_an_error(tiny):
    model = minillama.load(tiny)
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="holds 4 positions; 6 were asked for"):
        model(np.array([[1, 2, 3, 4, 5, 6]]), cache=cache)


def test_generate_rejects_bad_arguments(tiny):
    model = minillama.load(tiny)
    for kwargs, message in [(dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"),
                            (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
                            (dict(seed=-1), "seed must be None or an integer >= 0"), (dict(seed=1.5), "seed"),
                            (dict(temperature=float("inf")), "temperature must be a finite number"),
                            (dict(repetition_penalty=float("nan")), "repetition_penalty must be a finite number"),
                            (dict(max_new_tokens=300), "exceeds the model's context of 256")]:
        with pytest.raises(ValueError, match=message):
            generate(model, [1, 2, 3], **kwargs)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, np.zeros((1, 0), dtype=np.int64))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [1, 2], max_new_tokens=0)


def test_same_seed_same_tokens_across_backends(tiny):
    runs = [generate(minillama.LlamaForCausalLM.from_pretrained(tiny, backend=b), [1, 5, 9], max_new_tokens=12,
                     temperature=0.9, top_k=40, top_p=0.9, seed=7).new_tokens for b in ("numpy", "strict")]
    assert runs[0] == runs[1]
    other = generate(minillama.load(tiny), [1, 5, 9], max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.9, seed=8)
    assert other.new_tokens != runs[0]


def test_sampling_frequencies_match_the_distribution():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    rng = np.random.default_rng(123)
    n = 20000
    counts = np.bincount([S.choose(logits, rng, greedy=False)[0] for _ in range(n)], minlength=4)
    expected = n * np.array([0.5, 0.3, 0.15, 0.05])
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001


def test_sampled_frequencies_after_top_k_and_top_p():
    # p = (.4, .25, .15, .1, .06, .04): top-k 5 drops the last; top-p 0.75 then keeps .4, .25, .15 (sum .8 >= .75).
    p = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    logits = np.log(p)[None, :].astype(np.float32)
    processed = S.process_logits(logits, top_k_value=5, top_p_value=0.75, temperature_value=1.0)
    rng = np.random.default_rng(99)
    n = 30000
    counts = np.bincount([S.choose(processed, rng, greedy=False)[0] for _ in range(n)], minlength=6)
    assert counts[3:].sum() == 0
    expected = n * p[:3] / p[:3].sum()
    chi2 = float(((counts[:3] - expected) ** 2 / expected).sum())
    assert chi2 < 13.82  # chi-square, 2 degrees of freedom, p = 0.001


def test_repetition_penalty_in_generation_matches_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    from conftest import make_hf_checkpoint
    reference = make_hf_checkpoint(tmp_path, num_key_value_heads=2, max_position_embeddings=128)
    ids = np.array([[1, 17, 33, 8, 60, 17, 17]])
    with torch.no_grad():
        expected = reference.generate(torch.tensor(ids), do_sample=False, max_new_tokens=30, eos_token_id=None,
                                      pad_token_id=0, repetition_penalty=1.5).numpy()
    out = generate(minillama.load(tmp_path), ids, max_new_tokens=30, eos_token_id=[], repetition_penalty=1.5)
    np.testing.assert_array_equal(out.sequences, expected)


def test_processors_match_transformers(backend):
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 64)) * 3).astype(np.float32)
    ids = rng.integers(0, 64, size=(3, 9))
    xp = get_namespace(backend)
    X, T, TI = xp.asarray(x), torch.tensor(x), torch.tensor(ids)
    seen = xp.asarray(S.tokens_seen(ids, 64))
    cases = [(S.repetition_penalty(X, seen, 1.3), lp.RepetitionPenaltyLogitsProcessor(1.3)),
             (S.temperature(X, 0.7), lp.TemperatureLogitsWarper(0.7)),
             (S.top_k(X, 5), lp.TopKLogitsWarper(5)),
             (S.top_p(X, 0.7), lp.TopPLogitsWarper(0.7)),
             (S.min_p(X, 0.1), lp.MinPLogitsWarper(0.1))]
    for ours, processor in cases:
        ours, theirs = to_numpy(ours), processor(TI, T.clone()).numpy()
        np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))  # the same kept set
        kept = ~np.isinf(theirs)
        np.testing.assert_allclose(ours[kept], theirs[kept], rtol=1e-6)
        p_ours, p_theirs = (np.exp(a - a.max(-1, keepdims=True)) for a in (ours, theirs))
        np.testing.assert_allclose(p_ours / p_ours.sum(-1, keepdims=True), p_theirs / p_theirs.sum(-1, keepdims=True),
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_greedy_equals_transformers_generate(tmp_path, kv_heads):
    torch = pytest.importorskip("torch")
    from conftest import make_hf_checkpoint
    reference = make_hf_checkpoint(tmp_path, num_key_value_heads=kv_heads, max_position_embeddings=128)
    rows = [[1, 17, 33, 8, 60, 41, 5, 9], [1, 70, 12], [1, 44, 3, 90, 91]]
    width = max(len(r) for r in rows)
    ids = np.array([[0] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        expected = reference.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                      max_new_tokens=64, min_new_tokens=64, eos_token_id=None, pad_token_id=0).numpy()
    model = minillama.load(tmp_path)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=64, eos_token_id=[])
    np.testing.assert_array_equal(out.sequences, expected)
    assert out.decode_tokens == 3 * 64 and out.prefill_tokens == mask.sum()


def test_greedy_stops_at_eos_like_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    from conftest import make_hf_checkpoint
    reference = make_hf_checkpoint(tmp_path, num_key_value_heads=2, max_position_embeddings=128)
    ids = np.array([[0, 0, 1, 17, 33], [1, 70, 12, 5, 6]])
    mask = (np.arange(5)[None] >= np.array([[2], [0]])).astype(np.int64)
    model = minillama.load(tmp_path)
    free = generate(model, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=[])
    eos = free.new_tokens[0][6]  # a token row 0 really produces: make it the EOS
    with torch.no_grad():
        expected = reference.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                      max_new_tokens=20, eos_token_id=eos, pad_token_id=0).numpy()
    out = generate(model, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=0)
    np.testing.assert_array_equal(out.sequences, expected)
    assert out.new_tokens[0][-1] == eos and len(out.new_tokens[0]) <= 7
