"""AdamW, gradient clipping and the learning-rate schedule, written against the ``xp`` namespace.

The optimizer holds the model's live parameter arrays (a dict name -> array) and
updates them in place, so the model sees every step without being rebuilt. It is
numerically the same as ``torch.optim.AdamW`` (the single-tensor path): the same
order of operations, the same placement of ``eps``, a step count per parameter.
Its state (moments, step counts, hyperparameters) goes to a NumPy ``.npz`` file
with :func:`save_optimizer` and comes back with :func:`load_optimizer`; a resumed
run then takes bit-identical steps.
"""

from __future__ import annotations

import json
import math
import os
import zipfile

import array_api_compat
import numpy as np

from ..backend import namespace_of, to_numpy
from ..errors import CheckpointError
from ..files import JSON_LIMIT, check_regular_file, open_regular_file

FORMAT = "minillama.AdamW"  # the "format" field of a saved optimizer's metadata
MOMENTS = ("exp_avg", "exp_avg_sq")  # first moment m and second moment v, as torch names them


def _number(name: str, value, low: float = 0.0, high: float = math.inf, error=ValueError) -> float:
    """``value`` as a Python float in ``[low, high)`` (``high`` itself allowed when infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    if not low <= value < high:
        raise error(f"{name} must be in [{low}, {high}), got {value!r}")
    return float(value)


def _count(name: str, value, low: int = 0, error=ValueError) -> int:
    """``value`` as a Python int of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise error(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _dtype_name(dtype) -> str:
    """"float32" for NumPy's, CuPy's and array_api_strict's float32 alike."""
    return str(dtype).rsplit(".", 1)[-1]


def _check_params(params: dict) -> dict:
    """The parameter dict, refused unless it maps names to floating-point arrays of one library."""
    if not isinstance(params, dict) or not params:
        raise ValueError("params must be a non-empty dict of name -> parameter array")
    for name, p in params.items():
        if not isinstance(name, str) or not array_api_compat.is_array_api_obj(p):
            raise ValueError(f"params[{name!r}] must be an array under a string name, got {type(p).__name__}")
        if not namespace_of(p).isdtype(p.dtype, "real floating"):
            raise ValueError(f"params[{name!r}]: dtype {_dtype_name(p.dtype)} is not floating point")
        if not getattr(getattr(p, "flags", None), "writeable", True):
            raise ValueError(f"params[{name!r}] is read-only (memory-mapped from a checkpoint?): train on a copy")
    namespace_of(*params.values())  # raises if the arrays come from different libraries
    return params


def _check_grad(name, grad, params: dict):
    """One gradient: a parameter's name, and an array of that parameter's shape and library (or None)."""
    if name not in params:
        raise ValueError(f"grads[{name!r}]: not a parameter of this optimizer")
    if grad is None:
        return
    p = params[name]
    if not array_api_compat.is_array_api_obj(grad) or type(grad) is not type(p):
        raise ValueError(f"grads[{name!r}]: expected an array like the parameter's ({type(p).__name__}), "
                         f"got {type(grad).__name__}")
    if tuple(grad.shape) != tuple(p.shape):
        raise ValueError(f"grads[{name!r}]: shape {tuple(grad.shape)} does not match the parameter's {tuple(p.shape)}")
    if not namespace_of(grad).isdtype(grad.dtype, "real floating"):
        raise ValueError(f"grads[{name!r}]: dtype {_dtype_name(grad.dtype)} is not floating point")


def _hyperparameters(lr, betas, eps, weight_decay, error=ValueError) -> tuple:
    """The checked hyperparameters as Python floats: (lr, (beta1, beta2), eps, weight_decay)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise error(f"betas must be a pair of numbers, got {betas!r}")
    betas = (_number("betas[0]", betas[0], high=1.0, error=error), _number("betas[1]", betas[1], high=1.0, error=error))
    return (_number("lr", lr, error=error), betas, _number("eps", eps, error=error),
            _number("weight_decay", weight_decay, error=error))


def _adamw_update(p, grad, m, v, step: int, lr: float, betas, eps: float, weight_decay: float) -> None:
    """One AdamW update of ``p`` and its moments ``m``, ``v``, all in place (torch's order of operations).

    p <- p * (1 - lr * wd);  m <- m + (1 - b1) (g - m);  v <- b2 v + (1 - b2) g^2;
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    All arrays share one shape and dtype; the scalars are Python floats, so float32 stays float32.
    """
    xp = namespace_of(p)
    beta1, beta2 = betas
    if weight_decay != 0:
        p *= 1 - lr * weight_decay  # decoupled weight decay, before the moments see the gradient
    # Each temporary below is made once and then scaled in place (four full-size arrays, not nine).
    delta = grad - m
    delta *= 1 - beta1
    m += delta  # torch's lerp(m, g, 1 - b1)
    square = grad * grad
    square *= 1 - beta2
    v *= beta2
    v += square
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = xp.sqrt(v)
    denom /= bias_correction2_sqrt
    denom += eps
    update = m / denom
    update *= step_size
    p -= update


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), numerically ``torch.optim.AdamW``.

    params: dict name -> the model's live parameter arrays, updated in place by :meth:`step`.
    Each parameter gets its moments (``exp_avg``, ``exp_avg_sq``: its shape and dtype) and its
    own step count on its first gradient, as in torch. A half-precision parameter is updated
    in float32 and written back (its eps would vanish in float16); its moments stay in its dtype.
    """

    def __init__(self, params: dict, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        self.params = _check_params(params)
        self.lr, self.betas, self.eps, self.weight_decay = _hyperparameters(lr, betas, eps, weight_decay)
        self.step_count = 0  # calls of step() so far: where a resumed schedule carries on
        self.steps: dict[str, int] = {}  # name -> updates of that parameter so far (its bias correction)
        self.exp_avg: dict = {}  # name -> first moment m
        self.exp_avg_sq: dict = {}  # name -> second moment v

    def step(self, grads: dict, lr: float | None = None) -> None:
        """Update every parameter that has a gradient in ``grads`` (name -> array or None), in place.

        ``lr`` replaces the optimizer's learning rate for this step only (a schedule's value);
        names left out of ``grads``, or given None, are not touched, like a torch grad of None.
        """
        lr = self.lr if lr is None else _number("lr", lr)
        if not isinstance(grads, dict):
            raise ValueError(f"grads must be a dict of name -> gradient array, got {type(grads).__name__}")
        for name, grad in grads.items():
            _check_grad(name, grad, self.params)
        for name, grad in grads.items():
            if grad is not None:
                self._update(name, grad, lr)
        self.step_count += 1

    def _update(self, name: str, grad, lr: float) -> None:
        p = self.params[name]
        xp = namespace_of(p)
        if name not in self.steps:
            self.steps[name] = 0
            self.exp_avg[name], self.exp_avg_sq[name] = xp.zeros_like(p), xp.zeros_like(p)
        self.steps[name] += 1
        arrays = (p, grad, self.exp_avg[name], self.exp_avg_sq[name])
        hyper = (self.steps[name], lr, self.betas, self.eps, self.weight_decay)
        if p.dtype in (xp.float32, xp.float64):
            _adamw_update(p, xp.astype(grad, p.dtype, copy=False), *arrays[2:], *hyper)
            return
        wide = [xp.astype(a, xp.float32) for a in arrays]  # half precision: work in float32, write back
        _adamw_update(*wide, *hyper)
        for target, value in zip(arrays, wide):
            if target is not grad:
                target[...] = xp.astype(value, p.dtype)

    def state_dict(self) -> dict:
        """Hyperparameters, step counts and moments. The moment arrays are the live ones (as in torch)."""
        return {
            "hyperparameters": {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                                "weight_decay": self.weight_decay},
            "step_count": self.step_count,
            "steps": dict(self.steps),
            "exp_avg": dict(self.exp_avg),
            "exp_avg_sq": dict(self.exp_avg_sq),
        }

    def load_state_dict(self, state: dict) -> None:
        """Take over a :meth:`state_dict` (copying its arrays); a bad one is a one-line ValueError."""
        self._load_state(state, ValueError, "state_dict")

    def _load_state(self, state, error, source: str) -> None:
        """Check ``state`` against the parameters, then copy it in; ``error`` names ``source``."""
        keys = ("hyperparameters", "step_count", "steps") + MOMENTS
        if not isinstance(state, dict) or any(k not in state for k in keys):
            raise error(f"{source}: expected a dict with the keys {', '.join(keys)}")
        hyper = state["hyperparameters"]
        if not isinstance(hyper, dict) or sorted(hyper) != ["betas", "eps", "lr", "weight_decay"]:
            raise error(f"{source}: hyperparameters must hold exactly lr, betas, eps and weight_decay")
        steps = _check_steps(state["steps"], self.params, error, source)
        step_count = _count(f"{source}: step_count", state["step_count"], error=error)
        moments = {key: _check_moments(state[key], key, steps, self.params, error, source) for key in MOMENTS}
        try:
            hyperparameters = _hyperparameters(**hyper, error=error)
        except error as problem:
            raise error(f"{source}: {problem}") from None
        self.lr, self.betas, self.eps, self.weight_decay = hyperparameters
        self.step_count, self.steps = step_count, steps
        self.exp_avg, self.exp_avg_sq = (_copies(moments[key], self.params) for key in MOMENTS)


def _copies(arrays: dict, params: dict) -> dict:
    """Fresh arrays in the parameters' library (a NumPy array from a file moves to the backend)."""
    xp = namespace_of(*params.values())
    out = {}
    for name, a in arrays.items():
        out[name] = xp.asarray(a if type(a) is type(params[name]) else to_numpy(a), copy=True)
    return out


def _check_steps(steps, params: dict, error, source: str) -> dict:
    """Per-parameter step counts: names of parameters, counts of at least 1."""
    if not isinstance(steps, dict):
        raise error(f"{source}: steps must be a dict of parameter name -> step count")
    for name, count in steps.items():
        if name not in params:
            raise error(f"{source}: state for {name!r}, which is not among the parameters given")
        _count(f"{source}: steps[{name!r}]", count, low=1, error=error)
    return dict(steps)


def _check_moments(moments, key: str, steps: dict, params: dict, error, source: str) -> dict:
    """One moment per stepped parameter, each of that parameter's shape and dtype."""
    if not isinstance(moments, dict) or set(moments) != set(steps):
        raise error(f"{source}: {key} must hold one array for each parameter in steps")
    for name, moment in moments.items():
        p = params[name]
        if not (array_api_compat.is_array_api_obj(moment) and tuple(moment.shape) == tuple(p.shape)
                and _dtype_name(moment.dtype) == _dtype_name(p.dtype)):
            got = f"{tuple(getattr(moment, 'shape', ()))} {_dtype_name(getattr(moment, 'dtype', type(moment)))}"
            raise error(f"{source}: {key}[{name!r}] must be a {tuple(p.shape)} {_dtype_name(p.dtype)} array, got {got}")
    return moments


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients together, in place, so their global L2 norm is at most ``max_norm``.

    The norm is taken over every gradient at once (as one long vector); the gradients are
    multiplied by min(max_norm / (norm + 1e-6), 1), as ``torch.nn.utils.clip_grad_norm_`` does.
    Returns the norm before clipping as a Python float. A non-finite norm is returned as is and,
    as in torch, spoils the gradients (check it before stepping). Half-precision gradients are
    measured in float32; None values are skipped.
    """
    max_norm = _number("max_norm", max_norm)
    if not isinstance(grads, dict):
        raise ValueError(f"grads must be a dict of name -> gradient array, got {type(grads).__name__}")
    arrays = [g for g in grads.values() if g is not None]
    squares = 0.0
    for g in arrays:
        xp = namespace_of(g)
        wide = g if g.dtype in (xp.float32, xp.float64) else xp.astype(g, xp.float32)
        squares += float(xp.linalg.vector_norm(wide)) ** 2
    total = math.sqrt(squares)
    clip_coef = max_norm / (total + 1e-6)
    if clip_coef < 1.0 or math.isnan(clip_coef):
        for g in arrays:
            g *= clip_coef
    return total


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate of optimizer step ``step`` (counted from 0): linear warmup, then cosine decay.

    During warmup lr = base_lr * step / warmup_steps (so step 0 has lr 0, as in transformers'
    ``get_cosine_schedule_with_warmup``); then lr = min_lr + (base_lr - min_lr) * (1 + cos(pi p)) / 2
    with p = (step - warmup_steps) / (total_steps - warmup_steps), which reaches min_lr at
    ``total_steps`` and stays there (transformers' cosine would rise again past the end).
    """
    step = _count("step", step)
    warmup_steps = _count("warmup_steps", warmup_steps)
    total_steps = _count("total_steps", total_steps, low=warmup_steps)
    base_lr = _number("base_lr", base_lr)
    min_lr = _number("min_lr", min_lr)
    if min_lr > base_lr:
        raise ValueError(f"min_lr ({min_lr}) must not exceed base_lr ({base_lr})")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def save_optimizer(path: str, optimizer: AdamW) -> None:
    """Write ``optimizer``'s state to the ``.npz`` file ``path``, atomically.

    The archive holds ``meta`` (UTF-8 JSON: format, hyperparameters, step counts) and one
    array per moment, ``exp_avg/<name>`` and ``exp_avg_sq/<name>``. It is written to a
    temporary file beside ``path`` and moved into place, so a crash never leaves half a file.
    """
    if not isinstance(optimizer, AdamW):
        raise ValueError(f"save_optimizer saves an AdamW, got {type(optimizer).__name__}")
    state = optimizer.state_dict()
    meta = {"format": FORMAT, "version": 1, "hyperparameters": state["hyperparameters"],
            "step_count": state["step_count"], "steps": state["steps"]}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    for key in MOMENTS:
        arrays.update({f"{key}/{name}": to_numpy(a) for name, a in state[key].items()})
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_optimizer(path: str, params: dict) -> AdamW:
    """An :class:`AdamW` over ``params`` with the state :func:`save_optimizer` wrote to ``path``.

    A file that is not such an archive, or whose moments do not fit ``params`` (a missing
    name, another shape or dtype), is a one-line :class:`CheckpointError` naming the file and
    the entry; every array's header is checked before its data is read.
    """
    optimizer = AdamW(params)
    check_regular_file(path, CheckpointError)
    with open_regular_file(path, CheckpointError) as f:
        try:
            archive = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise CheckpointError(f"{path}: not an optimizer file (not a .npz archive)") from None
        with archive:
            state = _read_meta(archive, path)
            _check_steps(state["steps"], optimizer.params, CheckpointError, path)
            for key in MOMENTS:
                state[key] = {name: _read_member(archive, f"{key}/{name}", optimizer.params[name], path)
                              for name in state["steps"]}
    optimizer._load_state(state, CheckpointError, path)
    return optimizer


def _read_meta(archive: zipfile.ZipFile, path: str) -> dict:
    """The JSON metadata of a saved optimizer, its steps restricted to checked names."""
    raw = _read_array(archive, "meta", path, lambda shape, dtype: dtype == np.uint8 and len(shape) == 1
                      and shape[0] <= JSON_LIMIT, "a uint8 JSON string")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"), parse_constant=lambda name: float("nan"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{path}: meta is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != 1:
        raise CheckpointError(f"{path}: meta does not describe a {FORMAT} state (format, version 1)")
    if not isinstance(meta.get("steps"), dict):
        raise CheckpointError(f"{path}: meta's steps must be an object of parameter name -> step count")
    return {key: meta.get(key) for key in ("hyperparameters", "step_count", "steps")}


def _read_member(archive: zipfile.ZipFile, key: str, p, path: str) -> np.ndarray:
    """The moment ``key`` for parameter ``p``, refused unless its header says p's shape and dtype."""
    shape, dtype = tuple(p.shape), _dtype_name(p.dtype)
    return _read_array(archive, key, path, lambda s, d: s == shape and str(d) == dtype,
                       f"a {shape} {dtype} array")


def _read_array(archive: zipfile.ZipFile, key: str, path: str, fits, expected: str) -> np.ndarray:
    """Array ``key`` of the archive; its .npy header must satisfy ``fits(shape, dtype)`` before any data is read."""
    member = f"{key}.npy"
    if member not in archive.NameToInfo:
        raise CheckpointError(f"{path}: {key} is missing")
    try:
        with archive.open(member) as fp:
            version = np.lib.format.read_magic(fp)
            if version not in ((1, 0), (2, 0)):
                raise CheckpointError(f"{path}: {key} has .npy format version {version}, not 1.0 or 2.0")
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = header(fp)
            if dtype.hasobject or not fits(shape, dtype):
                raise CheckpointError(f"{path}: {key} must be {expected}, got {shape} {dtype}")
        with archive.open(member) as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)
    except CheckpointError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as problem:
        reason = str(problem).splitlines()[0] if str(problem) else type(problem).__name__
        raise CheckpointError(f"{path}: {key} is unreadable ({reason})") from None
