"""Every notebook executes top to bottom on the stand-in model, as CI runs them.

Notebooks are kept as jupytext percent scripts (notebooks/NN_name.py); this test turns each
into a notebook and executes it in a Jupyter kernel. A notebook that raises, including the
cross-check notebook when logits differ beyond tolerance, fails the test.
"""

from __future__ import annotations

import glob
import os

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "[0-9][0-9]_*.py")))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    if "crosscheck" in path:
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
    monkeypatch.delenv("MINILLAMA_MODEL", raising=False)  # always the stand-in here
    monkeypatch.setenv("MINILLAMA_FIGURES", str(tmp_path))  # leave docs/images alone
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()
    if "save(fig" in open(path, encoding="utf-8").read():
        assert list(tmp_path.glob("*.png")), "the notebook's plots were not saved"
