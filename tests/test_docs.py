"""The docs site builds offline, with no warnings (broken links and bad references fail it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_docs_site_builds_strictly(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "rms_norm" in api and "LlamaForCausalLM" in api  # the reference was generated from docstrings
    lesson = (tmp_path / "site" / "walkthrough" / "04_attention" / "index.html").read_text(encoding="utf-8")
    assert 'class="language-python"' in lesson  # each notebook is a page of the site, its code shown


def test_every_notebook_is_a_page_of_the_site():
    """mkdocs.yml's nav lists walkthrough/NN_name.md for exactly the notebooks in notebooks/."""
    import glob
    import re
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        listed = re.findall(r"walkthrough/([0-9][0-9]_\w+)\.md", f.read())
    notebooks = [os.path.splitext(os.path.basename(p))[0]
                 for p in sorted(glob.glob(os.path.join(ROOT, "notebooks", "[0-9][0-9]_*.py")))]
    assert listed == notebooks


def test_docs_images_exist():
    for name in ("demo_loss.png",):
        assert os.path.exists(os.path.join(ROOT, "docs", "images", name)), name
