"""The sampling functions on literal values, and live against transformers' logits warpers (ties included)."""

from __future__ import annotations

import numpy as np
import pytest

from minillama.backend import get_namespace, to_numpy
from minillama.generation import sampling as S


def kept(x) -> np.ndarray:
    """The ids a warper left in play (finite logits), per row."""
    return np.isfinite(to_numpy(x))


def test_top_p_all_equal_logits_keeps_two_of_four(backend):
    xp = get_namespace(backend)
    out = kept(S.top_p(xp.asarray(np.zeros((1, 4), dtype=np.float32)), 0.5))
    # cumulative .25 .5 .75 1: the first two (<= 0.5) go; the stable sort puts the lower ids first
    np.testing.assert_array_equal(out, [[False, False, True, True]])


def test_top_p_one_big_logit_among_twenty_equal_keeps_thirteen(backend):
    xp = get_namespace(backend)
    x = np.array([[3.0] + [0.0] * 20], dtype=np.float32)
    # p(big) = e^3 / (e^3 + 20) = .501, each other .0249: eight of those add up to .1996 <= 0.2 and go
    out = kept(S.top_p(xp.asarray(x), 0.8))
    assert out.sum() == 13 and out[0, 0]
    np.testing.assert_array_equal(out[0, 1:], [False] * 8 + [True] * 12)


def test_top_p_keeps_at_least_min_tokens():
    x = np.array([[10.0, 0.0, 0.0, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(kept(S.top_p(x, 0.01)), [[True, False, False, False]])
    np.testing.assert_array_equal(kept(S.top_p(x, 0.01, min_tokens_to_keep=3)), [[True, True, True, False]])
    np.testing.assert_array_equal(kept(S.top_p(x, 1.0)), [[True] * 4])  # p = 1 removes nothing


def test_top_k_and_min_p_keep_ties():
    x = np.array([[1.0, 1.0, 1.0, 0.0], [2.0, 2.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(kept(S.top_k(x, 2)), [[True, True, True, False], [True, True, False, False]])
    np.testing.assert_array_equal(kept(S.min_p(x, 1.0)), [[True, True, True, False], [True, True, False, False]])


def test_process_logits_works_in_float32_from_float16():
    rng = np.random.default_rng(5)
    x16 = (rng.standard_normal((4, 32000)) * 2).astype(np.float16)
    out = S.process_logits(x16, temperature_value=0.7, top_k_value=50, top_p_value=0.9, min_p_value=0.05)
    assert out.dtype == np.float32
    reference = S.process_logits(x16.astype(np.float32), temperature_value=0.7, top_k_value=50, top_p_value=0.9,
                                 min_p_value=0.05)
    np.testing.assert_array_equal(out, reference)


def test_nucleus_from_float16_logits_equals_the_float32_one():
    # A flat row of 32000 logits: summed in float16, the cumulative probability stalls (float16 has
    # 11 bits), so a float16 nucleus would differ; cast first, it is the float32 one.
    rng = np.random.default_rng(0)
    x16 = (rng.standard_normal((2, 32000)) * 0.5).astype(np.float16)
    ours = kept(S.process_logits(x16, top_p_value=0.9))
    expected = kept(S.top_p(x16.astype(np.float32), 0.9))
    np.testing.assert_array_equal(ours, expected)
    assert 20000 < expected.sum() < 64000  # a real nucleus, not everything and not one token
    assert not np.array_equal(kept(S.top_p(x16, 0.9)), expected)  # what computing in float16 would give


def warper_kept(warper, x):
    torch = pytest.importorskip("torch")
    return np.isfinite(warper(None, torch.tensor(x)).numpy())


def test_top_p_matches_transformers():
    pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 500)) * 3).astype(np.float32)  # no ties: the very same kept set
    for p in (0.1, 0.5, 0.9, 0.99):
        np.testing.assert_array_equal(kept(S.top_p(x, p)), warper_kept(lp.TopPLogitsWarper(p), x))
    # With ties, which of the tied ids goes depends on the sort; how many go does not.
    for x, p in [(np.zeros((1, 4), np.float32), 0.5), (np.array([[3.0] + [0.0] * 20], np.float32), 0.8),
                 (np.round(x / 2), 0.7)]:
        ours, theirs = kept(S.top_p(x, p)), warper_kept(lp.TopPLogitsWarper(p), x)
        np.testing.assert_array_equal(ours.sum(-1), theirs.sum(-1))


def test_top_k_and_min_p_ties_match_transformers():
    pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    x = np.array([[1.0, 1.0, 1.0, 0.0], [2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    for k in (1, 2, 3, 4):
        np.testing.assert_array_equal(kept(S.top_k(x, k)), warper_kept(lp.TopKLogitsWarper(k), x))
    for p in (0.1, 0.5, 1.0):
        np.testing.assert_array_equal(kept(S.min_p(x, p)), warper_kept(lp.MinPLogitsWarper(p), x))


def test_generation_samples_a_float16_model_in_float32(tiny, monkeypatch):
    import importlib

    import minillama
    G = importlib.import_module("minillama.generation.generate")  # the module, not the function of that name
    model = minillama.load(tiny, dtype="float16")
    dtypes = []

    def recording_choose(logits, rng, greedy):
        dtypes.append(logits.dtype)
        return S.choose(logits, rng, greedy)

    monkeypatch.setattr(G, "choose", recording_choose)
    out = G.generate(model, [1, 5, 9], max_new_tokens=3, temperature=0.8, top_p=0.9, repetition_penalty=1.2, seed=1)
    assert len(out.new_tokens[0]) == 3 and dtypes == [np.float32] * 3
