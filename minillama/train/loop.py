"""The training loop: from a text file to a trained checkpoint folder.

    text ─► tokenizer ─► ids ─► train ids (95%) ──► batch k ─► loss_and_grads ─► clip ─► AdamW(lr_at(k))
                                └─► val ids (5%, the tail) ─► validation loss every eval_every steps

Batch k is ``batches(train_ids, ..., seed, k)`` and the learning rate of step k is
``lr_at(k, ...)`` over the preset's schedule, so what step k does depends only on the seed, k
and the state after step k - 1; that state (weights, AdamW's moments and step counts) is what
a checkpoint holds. A run resumed from a checkpoint therefore takes exactly the steps the
uninterrupted run would have, and ends with the same weights, bit for bit.

Ctrl-C (KeyboardInterrupt) saves a checkpoint at the last finished step, then is raised
again. An optimizer update is never cut in half: Ctrl-C during one takes effect after it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from ..backend import to_backend
from ..errors import ConfigError, CorpusError
from ..tokenizer import LlamaTokenizer
from .backprop import loss_and_grads
from .checkpoint import OPTIMIZER_FILE, check_out_folder, read_state, write_checkpoint
from .data import IGNORE_INDEX, batches, encode_corpus, read_corpus, split_train_val, train_tokenizer, val_batches
from .init import init_model, load_trainable
from .optim import AdamW, clip_grad_norm, load_optimizer, lr_at
from .presets import TrainPreset, check_fits, get_preset, model_config

VAL_FRACTION = 0.05


@dataclass
class TrainProgress:
    """What the progress callback receives after each step, each evaluation and each checkpoint."""

    event: str  # "step", "eval" or "save"
    step: int  # steps finished
    total: int  # the step this run stops at
    loss: float | None  # the last step's training loss
    lr: float  # the last step's learning rate
    tokens_per_s: float  # training tokens per second in this run so far
    eta_s: float  # seconds left at that speed
    val_loss: float | None = None  # the latest validation loss, if any


@dataclass
class Run:
    """Everything one run works with; ``state`` is what trainer_state.json records."""

    model: object
    tokenizer: object
    optimizer: AdamW
    preset: TrainPreset
    train_ids: np.ndarray
    val_ids: np.ndarray
    out: str
    stop: int  # the step this run ends at
    state: dict = field(default_factory=dict)
    lora: bool = False
    progress: object = None


@contextlib.contextmanager
def interrupts_held():
    """Hold Ctrl-C until the block ends (in the main thread), so an update is applied whole or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def evaluate(model, val_ids, batch_size: int, seq_len: int) -> float:
    """The mean loss per token over the validation ids, each scored exactly once (``val_batches``)."""
    seq_len = min(seq_len, len(val_ids))
    total, count = 0.0, 0
    for input_ids, labels in val_batches(val_ids, batch_size, seq_len):
        scored = int(np.sum(labels[:, 1:] != IGNORE_INDEX))
        logits = model(input_ids).logits  # (rows, seq_len, vocab)
        loss = F.causal_lm_loss(logits, to_backend(labels, model.xp))
        total += float(loss) * scored
        count += scored
    return total / max(count, 1)


def one_step(run: Run, k: int) -> tuple[float, float]:
    """Training step k: its batch, loss and gradients, clipping, then the AdamW update -> (loss, lr)."""
    p = run.preset
    input_ids, labels = batches(run.train_ids, p.batch_size, p.seq_len, run.state["seed"], k)
    loss, grads = loss_and_grads(run.model, input_ids, labels)
    if not math.isfinite(loss):
        raise ValueError(f"training diverged: the loss is {loss} at step {k} (try a lower learning rate)")
    lr = lr_at(k, p.lr, p.warmup_steps, max(run.state["total_steps"], p.warmup_steps), p.min_lr)
    with interrupts_held():
        clip_grad_norm(grads, p.grad_clip)
        run.optimizer.step(grads, lr)
        run.state["step"] = k + 1
        run.state["losses"].append(loss)
        run.state["tokens_seen"] += p.batch_size * p.seq_len
    return loss, lr


def save(run: Run, elapsed_before: float, start: float) -> None:
    """Write the checkpoint of the current step (see ``checkpoint``)."""
    run.state["elapsed_s"] = elapsed_before + (time.perf_counter() - start)
    write_checkpoint(run.out, run.model, run.tokenizer, run.optimizer, run.state, run.lora)


def run_steps(run: Run) -> dict:
    """Train from the state's step to ``run.stop``, evaluating and saving on the way; returns the state."""
    p, state = run.preset, run.state
    first, start, elapsed_before = state["step"], time.perf_counter(), state["elapsed_s"]
    val_loss = state["val_losses"][-1][1] if state["val_losses"] else None
    loss, lr = None, 0.0

    def report(event):
        done = state["step"] - first
        seconds = time.perf_counter() - start
        speed = done * p.batch_size * p.seq_len / seconds if done and seconds > 0 else 0.0
        eta = (run.stop - state["step"]) * seconds / done if done else 0.0
        if run.progress is not None:
            run.progress(TrainProgress(event, state["step"], run.stop, loss, lr, speed, eta, val_loss))

    try:
        for k in range(first, run.stop):
            loss, lr = one_step(run, k)
            report("step")
            if len(run.val_ids) >= 2 and (state["step"] % p.eval_every == 0 or state["step"] == run.stop):
                val_loss = evaluate(run.model, run.val_ids, p.batch_size, p.seq_len)
                state["val_losses"].append([state["step"], val_loss])
                report("eval")
            if state["step"] % p.save_every == 0 and state["step"] < run.stop:
                save(run, elapsed_before, start)
                report("save")
    except KeyboardInterrupt:
        save(run, elapsed_before, start)  # the last finished step; then stop as asked
        report("save")
        raise
    save(run, elapsed_before, start)
    report("save")
    return state


def _settings(out: str, preset, seed, steps, resume: bool):
    """(preset, seed, the resumed state or None): a resume takes the checkpoint's, and refuses others given."""
    check_out_folder(out, resume)
    state = read_state(out) if resume else None
    if state is not None:
        for name, given in (("preset", getattr(preset, "name", preset)), ("seed", seed)):
            if given is not None and given != state[name]:
                raise ConfigError(f"{out}: the run was started with {name} {state[name]!r}, not {given!r}")
        preset, seed = preset or state["preset"], state["seed"]
        if steps is not None and steps < state["step"]:
            raise ConfigError(f"--steps {steps}: the checkpoint in {out} is already at step {state['step']}")
    if not isinstance(preset, TrainPreset):
        preset = get_preset("tiny" if preset is None else preset)
    seed = 0 if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    return preset, seed, state


def _tokenizer_for(text: str, out: str, state, tokenizer, from_model, preset: TrainPreset, seed: int, scratch: str):
    """The run's tokenizer: the checkpoint's (resume), the one given, the base model's, or one trained on the text."""
    if state is not None:
        return LlamaTokenizer.from_pretrained(out)
    if tokenizer is not None:
        return LlamaTokenizer.from_pretrained(tokenizer)
    if from_model is not None:
        return LlamaTokenizer.from_pretrained(from_model)
    return LlamaTokenizer(train_tokenizer(text, scratch, preset.model["vocab_size"], seed))


def _split(text: str, tokenizer, preset: TrainPreset, data) -> tuple:
    """(train ids, val ids) of the text; refused when the training part is shorter than one window."""
    train_ids, val_ids = split_train_val(encode_corpus(text, tokenizer), VAL_FRACTION)
    if len(train_ids) < preset.seq_len:
        raise CorpusError(f"{data}: {len(train_ids)} training tokens is too short for windows of "
                          f"{preset.seq_len} (preset {preset.name!r})")
    return train_ids, val_ids


def _model_for(out: str, state, tokenizer, from_model, preset: TrainPreset, seed: int, backend: str):
    """The model to train: the checkpoint's, a copy of ``from_model``'s, or a fresh one of the preset's shape."""
    lora = state is not None and state.get("lora_r") is not None
    if state is not None:  # the checkpoint's weights, or for LoRA its base model (the adapters come later)
        model = load_trainable(state["from"] if lora else out, backend)
    elif from_model is not None:
        model = load_trainable(from_model, backend)
    else:
        config = model_config(preset, tokenizer.vocab_size)
        check_fits(config, preset.batch_size, preset.seq_len, preset.name)  # a given tokenizer may be larger
        return init_model(config, seed, backend)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                          f"vocab_size {model.config.vocab_size}")
    check_fits(model.config, preset.batch_size, preset.seq_len, preset.name)
    return model


def _optimizer_for(model, out: str, state, preset: TrainPreset, lora_r, seed: int):
    """AdamW over what is trained (all weights, or the LoRA adapters), with the checkpoint's state on a resume."""
    lora = lora_r is not None or (state is not None and state.get("lora_r") is not None)
    if lora:
        from .lora import add_lora, load_lora
        params = load_lora(model, out) if state is not None else add_lora(model, lora_r, 2 * lora_r, seed=seed)
    else:
        params = model.state_dict()
    if state is not None:
        return load_optimizer(os.path.join(out, OPTIMIZER_FILE), params), lora
    return AdamW(params, lr=preset.lr, betas=preset.betas, eps=1e-8, weight_decay=preset.weight_decay), lora


def train(data, out, preset: str | None = None, steps: int | None = None, seed: int | None = None,
          resume: bool = False, tokenizer=None, from_model=None, lora_r: int | None = None,
          backend: str = "numpy", progress=None) -> dict:
    """Train a model on the text ``data`` and keep its latest checkpoint in the folder ``out``; returns the trainer state.

    preset: "tiny" (default), "demo", or a TrainPreset of one's own (see ``presets``); steps: where this run stops (default:
    the preset's schedule length); seed: batches and initial weights (default 0). resume: go on
    from the checkpoint in ``out`` (its preset and seed; ``steps`` must not be behind it).
    tokenizer: a tokenizer folder or ``tokenizer.model`` to use instead of training one on the
    text. from_model: a checkpoint folder to fine-tune instead of a fresh model; lora_r: train
    only rank-r LoRA adapters on it (needs ``minillama.train.lora``). progress: called with a
    :class:`TrainProgress` after each step, evaluation and checkpoint.
    """
    out = os.path.abspath(os.fspath(out))
    if lora_r is not None:
        _check_lora(lora_r, from_model)
    preset, seed, state = _settings(out, preset, seed, steps, resume)
    if state is None and from_model is None:  # refuse a preset too large before the corpus is read
        check_fits(model_config(preset), preset.batch_size, preset.seq_len, preset.name)
    text = read_corpus(data)
    with tempfile.TemporaryDirectory(prefix="minillama-train-") as scratch:
        tok = _tokenizer_for(text, out, state, tokenizer, from_model, preset, seed, scratch)
        train_ids, val_ids = _split(text, tok, preset, data)
        model = _model_for(out, state, tok, from_model, preset, seed, backend)
        optimizer, lora = _optimizer_for(model, out, state, preset, lora_r, seed)
        if state is None:
            state = {"step": 0, "total_steps": preset.steps, "seed": seed, "preset": preset.name, "losses": [],
                     "val_losses": [], "tokens_seen": 0, "elapsed_s": 0.0, "vocab_size": tok.vocab_size,
                     "from": None if from_model is None else os.path.abspath(os.fspath(from_model)),
                     "lora_r": lora_r}
        run = Run(model, tok, optimizer, preset, train_ids, val_ids, out, steps or preset.steps, state, lora, progress)
        return run_steps(run)


def _check_lora(lora_r, from_model) -> None:
    """--lora-r needs a base model (--from), a rank >= 1, and minillama.train.lora."""
    if isinstance(lora_r, bool) or not isinstance(lora_r, int) or lora_r < 1:
        raise ConfigError(f"lora_r must be an integer >= 1, got {lora_r!r}")
    if from_model is None:
        raise ConfigError("LoRA trains adapters on an existing model: give the base model with --from DIR")
    try:
        from .lora import add_lora, load_lora, save_lora  # noqa: F401
    except ImportError:
        raise ConfigError("LoRA is not available yet (minillama.train.lora is missing)") from None
