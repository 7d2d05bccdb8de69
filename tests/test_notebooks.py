"""Every notebook executes top to bottom on the demo model, as CI runs them, and writes nothing.

Notebooks are kept as jupytext percent scripts (notebooks/NN_name.py); this test turns each
into a notebook and executes it in a Jupyter kernel. A notebook that raises, including an
exercise check or the cross-check notebook when logits differ beyond tolerance, fails the test,
and so does one that leaves a file behind in the repository.
"""

from __future__ import annotations

import glob
import os
import subprocess

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.join(os.path.dirname(__file__), "..")
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "[0-9][0-9]_*.py")))


def _repository_state() -> str | None:
    """Every file git would report (changed or untracked, ignored ones included), or None without git."""
    try:
        run = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if run.returncode != 0:
        return None
    # __pycache__ of the notebooks' own helper module is Python's doing, not the notebook's
    return "\n".join(line for line in run.stdout.splitlines() if "__pycache__" not in line)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    if "crosscheck" in path:
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
    monkeypatch.delenv("MINILLAMA_MODEL", raising=False)  # always the bundled demo model here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    before = _repository_state()
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()
    after = _repository_state()
    assert before == after, f"executing {os.path.basename(path)} changed the repository:\n{after}"
