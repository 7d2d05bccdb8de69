"""Every notebook executes top to bottom on the demo model, as CI runs them, and writes nothing.

Notebooks are kept as jupytext percent scripts (notebooks/NN_name.py); this test turns each
into a notebook and executes it in a Jupyter kernel. A notebook that raises, including an
exercise check or the cross-check notebook when logits differ beyond tolerance, fails the test,
and so does one that leaves a file behind in the repository. Each executed notebook is rendered
with its outputs (scripts/walkthrough.py), and the last test builds the docs site from those pages.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.join(os.path.dirname(__file__), "..")
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "[0-9][0-9]_*.py")))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import walkthrough  # noqa: E402  (the docs site's renderer of executed notebooks)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The folder that collects each executed notebook's page, for the docs-site test at the end."""
    return tmp_path_factory.mktemp("walkthrough")


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
def test_notebook_runs(path, monkeypatch, rendered):
    if "crosscheck" in path:
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
    monkeypatch.delenv("MINILLAMA_MODEL", raising=False)  # always the bundled demo model here
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: figures become outputs
    before = _repository_state()
    notebook = walkthrough.execute(path)
    after = _repository_state()
    assert before == after, f"executing {os.path.basename(path)} changed the repository:\n{after}"
    walkthrough.write_page(notebook, os.path.splitext(os.path.basename(path))[0], str(rendered))


def test_the_site_shows_the_executed_series(rendered, tmp_path):
    """The docs site built from the pages rendered above: every executed lesson with its outputs."""
    pytest.importorskip("mkdocs")
    pages = sorted(p.stem for p in rendered.glob("*.md"))
    if not pages:
        pytest.skip("no notebook was executed in this run")
    env = dict(os.environ, MINILLAMA_WALKTHROUGH=str(rendered))
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = 0
    for name in pages:
        html = (tmp_path / "site" / "walkthrough" / name / "index.html").read_text(encoding="utf-8")
        assert "Shown without outputs" not in html, name
        figures += html.count("<img")
    assert figures >= len(pages), f"{figures} figures in {len(pages)} rendered lessons"
