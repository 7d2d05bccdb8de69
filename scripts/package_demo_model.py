"""Put a finished `minillama train --preset demo` run into the package, in float16, and draw its loss curve.

    python scripts/package_demo_model.py RUN_DIR

Writes minillama/demo/model/ (config.json, model.safetensors in float16, tokenizer files,
generation_config.json, training.json: the run's steps, losses and time) and
docs/images/demo_loss.png (training and validation loss per step), which docs/demo_model.md shows.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import minillama  # noqa: E402
from minillama.tokenizer import LlamaTokenizer  # noqa: E402

TARGET = os.path.join(ROOT, "minillama", "demo", "model")
FIGURE = os.path.join(ROOT, "docs", "images", "demo_loss.png")
LIMIT = 16 * 2**20  # the package carries at most 16 MiB of demo model


def package(run: str) -> dict:
    with open(os.path.join(run, "trainer_state.json"), encoding="utf-8") as f:
        state = json.load(f)
    if os.path.exists(TARGET):
        shutil.rmtree(TARGET)
    model = minillama.load(run, dtype="float16")
    model.save_pretrained(TARGET)
    LlamaTokenizer.from_pretrained(run).save_pretrained(TARGET)
    summary = {key: state[key] for key in ("preset", "seed", "step", "elapsed_s", "val_losses") if key in state}
    summary["train_losses"] = state.get("losses", [])
    with open(os.path.join(TARGET, "training.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    size = sum(os.path.getsize(os.path.join(TARGET, name)) for name in os.listdir(TARGET))
    if size > LIMIT:
        raise SystemExit(f"the demo model takes {size / 2**20:.1f} MiB, over the {LIMIT / 2**20:.0f} MiB limit")
    print(f"wrote {TARGET}: {size / 2**20:.1f} MiB, {model.num_parameters():,} parameters")
    return summary


def plot(summary: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    train = summary["train_losses"]  # one per step, from step 1
    window = 25
    if len(train) >= window:  # the batch losses are noisy: their running mean over 25 steps
        smooth = [sum(train[i - window:i]) / window for i in range(window, len(train) + 1)]
        ax.plot(range(window, len(train) + 1), smooth, lw=1.0, label=f"training loss (mean of {window} batches)")
    val = summary["val_losses"]
    ax.plot([row[0] for row in val], [row[1] for row in val], "o-", label="validation loss (held-out tail)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title("The demo model, trained by minillama on the King James Bible")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)
    print(f"wrote {FIGURE}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/package_demo_model.py RUN_DIR")
    plot(package(sys.argv[1]))
