"""AdamW, gradient clipping, the learning-rate schedule and the optimizer's saved state."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from minillama.backend import get_namespace, to_numpy
from minillama.errors import CheckpointError
from minillama.train import AdamW, clip_grad_norm, load_optimizer, lr_at, save_optimizer

SHAPES = {"embed": (5, 3), "norm": (3,), "out": (2, 5)}
TOLERANCE = {"float64": 1e-12, "float32": 1e-6}


def host_params(dtype: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}


def host_grads(steps: int, dtype: str, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()} for _ in range(steps)]


def on(xp, arrays: dict) -> dict:
    """Fresh backend copies of host arrays (None stays None)."""
    return {name: None if a is None else xp.asarray(np.array(a, copy=True)) for name, a in arrays.items()}


def schedule(steps: int) -> list[tuple[float, dict]]:
    """(lr, which grads) per step: the lr changes every step, and "norm" sits out steps 2 and 3."""
    lrs = [0.01, 0.03, 0.02, 0.005, 0.05, 0.001, 0.02, 0.04][:steps]
    return [(lr, {"norm"} if i in (2, 3) else set()) for i, lr in enumerate(lrs)]


def run_minillama(xp, dtype, steps, weight_decay=0.1):
    params = on(xp, host_params(dtype))
    optimizer = AdamW(params, lr=0.5, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    for (lr, skipped), grads in zip(schedule(steps), host_grads(steps, dtype)):
        optimizer.step(on(xp, {k: (None if k in skipped else g) for k, g in grads.items()}), lr=lr)
    return params, optimizer


def textbook_adamw(dtype, steps, weight_decay=0.1):
    """AdamW as the paper writes it, in float64 NumPy: the reference needing no torch."""
    params = {k: v.astype(np.float64) for k, v in host_params(dtype).items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    t = dict.fromkeys(params, 0)
    for (lr, skipped), grads in zip(schedule(steps), host_grads(steps, dtype)):
        for k, g in grads.items():
            if k in skipped:
                continue
            g = g.astype(np.float64)
            t[k] += 1
            params[k] = params[k] * (1 - lr * weight_decay)
            m[k] = 0.8 * m[k] + 0.2 * g
            v[k] = 0.95 * v[k] + 0.05 * g * g
            m_hat, v_hat = m[k] / (1 - 0.8 ** t[k]), v[k] / (1 - 0.95 ** t[k])
            params[k] = params[k] - lr * m_hat / (np.sqrt(v_hat) + 1e-6)
    return params


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_adamw_equals_the_textbook_formula(backend, dtype):
    xp = get_namespace(backend)
    params, optimizer = run_minillama(xp, dtype, 6)
    reference = textbook_adamw(dtype, 6)
    for name, p in params.items():
        assert p.dtype == getattr(xp, dtype)
        np.testing.assert_allclose(to_numpy(p), reference[name], rtol=TOLERANCE[dtype] * 10, atol=0)
    assert optimizer.step_count == 6 and optimizer.steps == {"embed": 6, "norm": 4, "out": 6}
    assert all(m.dtype == getattr(xp, dtype) for m in optimizer.exp_avg_sq.values())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_equals_torch(backend, dtype, weight_decay):
    torch = pytest.importorskip("torch")
    xp = get_namespace(backend)
    params, _ = run_minillama(xp, dtype, 8, weight_decay)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in host_params(dtype).items()}
    reference = torch.optim.AdamW(list(tensors.values()), lr=0.5, betas=(0.8, 0.95), eps=1e-6,
                                  weight_decay=weight_decay, foreach=False)
    for (lr, skipped), grads in zip(schedule(8), host_grads(8, dtype)):
        reference.param_groups[0]["lr"] = lr
        for k, t in tensors.items():
            t.grad = None if k in skipped else torch.tensor(grads[k])
        reference.step()
    for name, p in params.items():
        np.testing.assert_allclose(to_numpy(p), tensors[name].detach().numpy(), rtol=TOLERANCE[dtype], atol=0)


def test_adamw_updates_the_arrays_in_place(backend):
    xp = get_namespace(backend)
    params = on(xp, host_params("float32"))
    held = dict(params)  # what a model holds: the same array objects
    before = {k: to_numpy(v).copy() for k, v in params.items()}
    optimizer = AdamW(params, lr=0.1)
    grads = on(xp, host_grads(1, "float32")[0])
    grads["out"] = None
    del grads["norm"]
    optimizer.step(grads)
    assert all(params[k] is held[k] for k in params)
    assert not np.array_equal(to_numpy(held["embed"]), before["embed"])
    # No gradient, no update: not even weight decay, exactly as torch skips a grad of None.
    np.testing.assert_array_equal(to_numpy(held["out"]), before["out"])
    np.testing.assert_array_equal(to_numpy(held["norm"]), before["norm"])
    assert set(optimizer.exp_avg) == {"embed"}


def test_the_first_step_moves_each_weight_by_lr():
    """With m_hat / sqrt(v_hat) = g / |g| on the first step, each weight moves by lr against its gradient."""
    params = {"w": np.array([1.0, -2.0, 0.5], dtype=np.float32)}
    AdamW(params, lr=0.1, eps=0.0, weight_decay=0.5).step({"w": np.array([3.0, -0.25, 1e-3], dtype=np.float32)})
    expected = np.array([1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1, 0.5 * 0.95 - 0.1])
    np.testing.assert_allclose(params["w"], expected, rtol=1e-6)
    assert params["w"].dtype == np.float32


def test_half_precision_parameters_keep_their_dtype():
    params16 = {k: v.astype(np.float16) for k, v in host_params("float32").items()}
    params32 = {k: v.astype(np.float32) for k, v in params16.items()}
    opt16, opt32 = AdamW(params16, lr=0.01), AdamW(params32, lr=0.01)
    for grads in host_grads(3, "float16"):
        grads["norm"][:] = 0  # a zero gradient: eps (1e-8) would vanish in float16 and give 0 / 0
        opt16.step(grads)
        opt32.step({k: g.astype(np.float32) for k, g in grads.items()})
    for name, p in params16.items():
        assert p.dtype == np.float16 and opt16.exp_avg[name].dtype == np.float16
        assert np.all(np.isfinite(p))
        np.testing.assert_allclose(p.astype(np.float32), params32[name], atol=4e-3)


@pytest.mark.parametrize("bad, words", [
    (lambda o, g: o.step({**g, "nope": g["norm"]}), "'nope'"),
    (lambda o, g: o.step({"norm": g["embed"]}), "grads['norm']: shape (5, 3)"),
    (lambda o, g: o.step({"norm": [1.0, 2.0, 3.0]}), "grads['norm']"),
    (lambda o, g: o.step(g, lr=-1.0), "lr"),
    (lambda o, g: o.step(g, lr=float("nan")), "lr"),
    (lambda o, g: AdamW({}), "non-empty"),
    (lambda o, g: AdamW({"w": np.zeros(3, np.int32)}), "params['w']"),
    (lambda o, g: AdamW({"w": np.broadcast_to(np.zeros(1, np.float32), (3,))}), "read-only"),
    (lambda o, g: AdamW(g, betas=(0.9, 1.0)), "betas[1]"),
    (lambda o, g: AdamW(g, betas=0.9), "betas"),
    (lambda o, g: AdamW(g, weight_decay=-0.1), "weight_decay"),
])
def test_bad_arguments_are_one_line_value_errors(bad, words):
    params = host_params("float32")
    optimizer, grads = AdamW(params), host_grads(1, "float32")[0]
    with pytest.raises(ValueError) as caught:
        bad(optimizer, grads)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    np.testing.assert_array_equal(params["norm"], host_params("float32")["norm"])  # nothing was half done


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_equals_torch(backend, dtype, max_norm):
    torch = pytest.importorskip("torch")
    xp = get_namespace(backend)
    host = host_grads(1, dtype)[0]
    grads = on(xp, host)
    total = clip_grad_norm(grads, max_norm)
    tensors = [torch.zeros(g.shape, dtype=getattr(torch, dtype), requires_grad=True) for g in host.values()]
    for t, g in zip(tensors, host.values()):
        t.grad = torch.tensor(g)
    expected = torch.nn.utils.clip_grad_norm_(tensors, max_norm, foreach=False)
    assert isinstance(total, float)
    assert total == pytest.approx(float(expected), rel=TOLERANCE[dtype])
    for g, t in zip(grads.values(), tensors):
        assert g.dtype == getattr(xp, dtype)
        np.testing.assert_allclose(to_numpy(g), t.grad.numpy(), rtol=TOLERANCE[dtype] * 2, atol=0)


def test_clip_grad_norm_literal_values(backend):
    xp = get_namespace(backend)
    grads = {"a": xp.asarray([3.0, 0.0], dtype=xp.float32), "b": xp.asarray([[4.0]], dtype=xp.float32), "c": None}
    assert clip_grad_norm(grads, 10.0) == 5.0
    np.testing.assert_array_equal(to_numpy(grads["a"]), [3.0, 0.0])  # under the limit: untouched
    assert clip_grad_norm(grads, 1.0) == 5.0
    np.testing.assert_allclose(to_numpy(grads["a"]), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(grads["b"]), [[0.8]], rtol=1e-6)
    assert grads["a"].dtype == xp.float32
    assert clip_grad_norm(grads, 1.0) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(grads, -1.0)


def test_lr_at_literal_values():
    values = [lr_at(step, 1.0, 10, 110) for step in (0, 5, 10, 60, 110, 200)]
    assert values == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0], abs=1e-15)
    assert lr_at(35, 2e-3, 10, 110) == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-15)
    floor = [lr_at(step, 1.0, 10, 110, min_lr=0.1) for step in (5, 10, 60, 110, 1000)]
    assert floor == pytest.approx([0.5, 1.0, 0.55, 0.1, 0.1], rel=1e-14)
    assert lr_at(0, 0.3, 0, 5) == 0.3 and lr_at(3, 0.3, 0, 0) == 0.0  # no warmup; no decay steps at all


@pytest.mark.parametrize("bad, words", [
    (dict(step=-1), "step"), (dict(step=1.5), "step"), (dict(warmup_steps=200), "total_steps"),
    (dict(base_lr=-1.0), "base_lr"), (dict(min_lr=2.0), "min_lr"),
])
def test_lr_at_refuses_bad_arguments(bad, words):
    arguments = {"step": 3, "base_lr": 1.0, "warmup_steps": 10, "total_steps": 100, **bad}
    with pytest.raises(ValueError, match=words):
        lr_at(**arguments)


@pytest.mark.parametrize("warmup, total, min_lr", [(10, 100, 0.0), (0, 7, 0.0), (3, 40, 2e-4)])
def test_lr_at_equals_transformers(warmup, total, min_lr):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    base = 1e-3
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    if min_lr:
        scheduler = transformers.get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr=min_lr)
    else:
        scheduler = transformers.get_cosine_schedule_with_warmup(optimizer, warmup, total)
    for step in range(total + 1):
        assert lr_at(step, base, warmup, total, min_lr) == pytest.approx(scheduler.get_last_lr()[0], rel=1e-12, abs=1e-18)
        optimizer.step()
        scheduler.step()


def continue_run(xp, params, optimizer, grads_list):
    for i, grads in enumerate(grads_list):
        optimizer.step(on(xp, grads), lr=lr_at(optimizer.step_count, 0.05, 2, 10))
    return {k: to_numpy(v).copy() for k, v in params.items()}


@pytest.mark.parametrize("route", ["file", "state_dict"])
def test_resuming_is_bit_identical(backend, tmp_path, route):
    xp = get_namespace(backend)
    grads = host_grads(7, "float32")
    params = on(xp, host_params("float32"))
    optimizer = AdamW(params, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.02)
    continue_run(xp, params, optimizer, grads[:3])
    resumed_params = on(xp, {k: to_numpy(v) for k, v in params.items()})  # the weights, as a checkpoint keeps them
    if route == "file":
        save_optimizer(str(tmp_path / "optimizer.npz"), optimizer)
        resumed = load_optimizer(str(tmp_path / "optimizer.npz"), resumed_params)
        assert os.listdir(tmp_path) == ["optimizer.npz"]
    else:
        resumed = AdamW(resumed_params)
        resumed.load_state_dict(optimizer.state_dict())
        assert resumed.exp_avg["embed"] is not optimizer.exp_avg["embed"]  # copied, not shared
    assert (resumed.step_count, resumed.steps, resumed.betas, resumed.eps, resumed.weight_decay) == (
        3, {"embed": 3, "norm": 3, "out": 3}, (0.85, 0.99), 1e-7, 0.02)
    straight = continue_run(xp, params, optimizer, grads[3:])
    again = continue_run(xp, resumed_params, resumed, grads[3:])
    for name in SHAPES:
        np.testing.assert_array_equal(again[name], straight[name])
        assert resumed_params[name].dtype == xp.float32 and resumed.exp_avg[name].dtype == xp.float32


def saved(tmp_path, **changes) -> str:
    """A saved optimizer (3 steps), its archive then rewritten with ``changes`` (meta fields, or arrays; None drops one)."""
    import json
    params = host_params("float32")
    optimizer = AdamW(params)
    continue_run(np, params, optimizer, host_grads(3, "float32"))
    path = str(tmp_path / "optimizer.npz")
    save_optimizer(path, optimizer)
    with np.load(path) as archive:
        arrays = dict(archive)
    meta = json.loads(arrays["meta"].tobytes())
    meta.update({key: value for key, value in changes.items() if key in meta})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    for key, value in changes.items():
        if key not in meta:
            arrays[key] = value
    arrays = {key: value for key, value in arrays.items() if value is not None}
    np.savez(path, **arrays)
    return path


def refused(path, params=None, words=""):
    with pytest.raises(CheckpointError) as caught:
        load_optimizer(path, host_params("float32") if params is None else params)
    message = str(caught.value)
    assert path in message and words in message and "\n" not in message, message


def test_a_saved_optimizer_file_round_trips(tmp_path):
    optimizer = load_optimizer(saved(tmp_path), host_params("float32"))
    assert optimizer.step_count == 3 and optimizer.lr == 1e-3 and optimizer.betas == (0.9, 0.999)


@pytest.mark.parametrize("changes, words", [
    (dict(format="something else"), "meta does not describe"),
    (dict(meta=None), "meta is missing"),
    (dict(meta=np.zeros(3, dtype=np.float32)), "meta must be a uint8 JSON string"),
    (dict(hyperparameters={"lr": -1.0, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}), "lr"),
    (dict(hyperparameters={"lr": 1.0}), "hyperparameters"),
    (dict(step_count=-2), "step_count"),
    (dict(steps={"embed": 0}), "steps['embed']"),
    (dict(steps={"ghost": 1}), "'ghost'"),
    (dict(steps=[1, 2]), "steps"),
    ({"exp_avg/norm": None}, "exp_avg/norm is missing"),
    ({"exp_avg/norm": np.zeros(4, dtype=np.float32)}, "exp_avg/norm must be a (3,) float32 array, got (4,)"),
    ({"exp_avg_sq/out": np.zeros((2, 5))}, "exp_avg_sq/out must be a (2, 5) float32 array"),
    ({"exp_avg/norm": np.array([None, 1, 2], dtype=object)}, "exp_avg/norm"),
])
def test_a_bad_optimizer_file_is_a_checkpoint_error(tmp_path, changes, words):
    refused(saved(tmp_path, **changes), words=words)


def test_an_optimizer_file_for_other_parameters_is_refused(tmp_path):
    path = saved(tmp_path)
    other = host_params("float32")
    other["embed"] = np.zeros((6, 3), dtype=np.float32)
    refused(path, other, "exp_avg/embed must be a (6, 3) float32 array, got (5, 3)")
    refused(path, {k: v.astype(np.float64) for k, v in host_params("float32").items()}, "float64")
    refused(path, {"embed": other["embed"][:5]}, "'norm'")


def test_a_huge_shape_in_a_header_is_refused_before_reading(tmp_path):
    """A member claiming 40 TB (and holding nothing) is refused from its header, without allocating."""
    import zipfile
    path = saved(tmp_path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            if name != "exp_avg/norm.npy":
                archive.writestr(name, data)
        with archive.open("exp_avg/norm.npy", "w") as fp:
            np.lib.format.write_array_header_1_0(fp, {"descr": "<f4", "fortran_order": False, "shape": (10**13,)})
    refused(path, words="exp_avg/norm must be a (3,) float32 array, got (10000000000000,) float32")


def test_broken_files_are_checkpoint_errors(tmp_path):
    path = saved(tmp_path)
    with open(path, "rb") as f:
        data = f.read()
    for name, content in [("garbage.npz", b"not a zip at all" * 10), ("cut.npz", data[: len(data) // 2])]:
        (tmp_path / name).write_bytes(content)
        refused(str(tmp_path / name))
    refused(str(tmp_path), words="folder")
    with pytest.raises(FileNotFoundError):
        load_optimizer(str(tmp_path / "absent.npz"), host_params("float32"))


def test_load_state_dict_refuses_a_mismatched_state():
    optimizer = AdamW(host_params("float32"))
    continue_run(np, optimizer.params, optimizer, host_grads(1, "float32"))
    state = optimizer.state_dict()
    fresh = AdamW(host_params("float32"))
    for broken, words in [({**state, "steps": None}, "steps"), ({"steps": {}}, "expected a dict"),
                          ({**state, "exp_avg": {**state["exp_avg"], "norm": np.zeros(2, np.float32)}}, "exp_avg['norm']")]:
        with pytest.raises(ValueError, match=words.replace("[", r"\[")):
            fresh.load_state_dict(broken)
    assert fresh.step_count == 0 and fresh.exp_avg == {}  # nothing was taken over


def test_saving_is_atomic(tmp_path, monkeypatch):
    path = saved(tmp_path)
    before = open(path, "rb").read()
    optimizer = AdamW(host_params("float32"))
    import minillama.train.optim as optim

    def failing_replace(source, target):
        raise OSError("disk full")
    monkeypatch.setattr(optim.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_optimizer(path, optimizer)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["optimizer.npz"]
    with pytest.raises(ValueError, match="AdamW"):
        save_optimizer(path, {"lr": 1e-3})
