"""A training run's checkpoint folder, written atomically, and read back to resume.

The output folder always holds the latest complete checkpoint:

    config.json, model.safetensors, generation_config.json   the model (float32), as save_pretrained writes it
    tokenizer.model, tokenizer_config.json, ...               the tokenizer
    optimizer.npz                                             AdamW's moments and step counts
    trainer_state.json                                        step, seed, preset, losses, tokens seen, time

(a LoRA run holds adapter_config.json and adapter_model.safetensors instead of the model).
Each checkpoint is written whole into a new sibling folder ``.OUT.partial-XXXX``, then swapped
in: OUT becomes ``OUT.previous``, the new folder becomes OUT, and the previous one is removed.
A crash leaves either the old checkpoint or the new one, never half of one; a crash between
the two renames leaves ``OUT.previous``, which :func:`recover` puts back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from ..errors import CheckpointError, ConfigError
from ..files import read_json_object
from .optim import save_optimizer

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FORMAT = "minillama.trainer_state"
STATE_FIELDS = {"step": int, "total_steps": int, "seed": int, "preset": str, "losses": list, "val_losses": list,
                "tokens_seen": int, "elapsed_s": (int, float)}


def is_previous_run(folder: str) -> bool:
    """Whether ``folder`` is a checkpoint of ``minillama train`` (it has a trainer_state.json)."""
    return os.path.isfile(os.path.join(folder, STATE_FILE))


def recover(out: str) -> None:
    """Put ``OUT.previous`` back as OUT when a swap was cut off between its two renames."""
    previous = out + ".previous"
    if not os.path.lexists(out) and is_previous_run(previous):
        os.rename(previous, out)


def check_out_folder(out: str, resume: bool) -> None:
    """Refuse an ``--out`` that a run cannot use: for a resume it must hold a checkpoint; for a
    fresh run it must be new, empty, or an earlier run's checkpoint (which the first save replaces)."""
    recover(out)
    if resume:
        if not is_previous_run(out):
            raise CheckpointError(f"{out}: no checkpoint to resume from ({STATE_FILE} is missing)")
        return
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if os.listdir(out) and not is_previous_run(out):
        raise ConfigError(f"--out {out}: exists and is not a previous training run (choose a new or empty folder)")


def read_state(out: str) -> dict:
    """The trainer_state.json of a checkpoint, its fields checked; a bad one is a CheckpointError naming the field."""
    path = os.path.join(out, STATE_FILE)
    state = read_json_object(path, CheckpointError)
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: format must be {STATE_FORMAT!r}, got {state.get('format')!r}")
    for name, kind in STATE_FIELDS.items():
        value = state.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CheckpointError(f"{path}: {name} is missing or of the wrong type ({value!r})")
    if not 0 <= state["step"] or state["seed"] < 0 or len(state["losses"]) != state["step"]:
        raise CheckpointError(f"{path}: step {state['step']} does not match the {len(state['losses'])} losses recorded")
    lora_r, base = state.get("lora_r"), state.get("from")
    if lora_r is not None and (isinstance(lora_r, bool) or not isinstance(lora_r, int) or lora_r < 1
                               or not isinstance(base, str)):
        raise CheckpointError(f"{path}: lora_r must be an integer >= 1 with the base model's folder in from")
    return state


def write_checkpoint(out: str, model, tokenizer, optimizer, state: dict, lora: bool = False) -> None:
    """Write the whole checkpoint into a new sibling folder, then swap it in for ``out`` (see the module docstring)."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        if lora:
            from .lora import save_lora
            save_lora(model, work)
        else:
            model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        save_optimizer(os.path.join(work, OPTIMIZER_FILE), optimizer)
        with open(os.path.join(work, STATE_FILE), "w", encoding="utf-8") as f:  # last: it marks a checkpoint
            json.dump({"format": STATE_FORMAT, **state}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(work, 0o755)  # mkdtemp made it private
        _swap(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _swap(new: str, out: str) -> None:
    """Make ``new`` the folder ``out``; the old ``out`` (if any) is removed once the new one is in place."""
    previous = out + ".previous"
    if os.path.lexists(previous):
        if not is_previous_run(previous):
            raise ConfigError(f"{previous}: in the way of the checkpoint swap, and not a training run: move it away")
        shutil.rmtree(previous)
    if os.path.lexists(out):
        os.rename(out, previous)
    os.rename(new, out)
    shutil.rmtree(previous, ignore_errors=True)
