"""The walkthrough notebooks as pages of the docs site, with their outputs.

Two jobs in one file, so that the page format is defined once:

* ``python scripts/walkthrough.py [--out DIR] [NAMES...]`` executes the notebooks (on the demo
  model, as CI does) and renders each into ``DIR/NN_name.md`` plus its figures as PNG files
  (default ``build/walkthrough``, which git ignores: nothing is written into the repository's
  tracked files). Each notebook is rendered into a temporary folder and moved into place only
  when it executed, so a failed run leaves the previous pages as they were.
* As an mkdocs hook (``hooks:`` in mkdocs.yml), it adds one page per notebook under
  ``walkthrough/``: the rendered page with its outputs when ``DIR`` has one (``DIR`` is
  ``MINILLAMA_WALKTHROUGH`` if set), else the notebook's cells without outputs and a line saying
  how to render them. The site therefore always shows the whole series, builds offline, and
  never executes anything itself.

The published site is built with ``python scripts/walkthrough.py && mkdocs build --strict``.
tests/test_notebooks.py renders every notebook it executes and builds the site from those pages.
"""

from __future__ import annotations

import argparse
import base64
import glob
import os
import shutil
import sys
import tempfile

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
DEFAULT_OUT = os.path.join(ROOT, "build", "walkthrough")
PAGE_FOLDER = "walkthrough"  # the pages' folder inside the site


def notebook_paths() -> list[str]:
    """The lessons, in order: notebooks/NN_name.py (jupytext percent scripts)."""
    return sorted(glob.glob(os.path.join(NOTEBOOKS, "[0-9][0-9]_*.py")))


def rendered_folder() -> str:
    return os.environ.get("MINILLAMA_WALKTHROUGH", "") or DEFAULT_OUT


# --- notebook -> markdown ---------------------------------------------------------------------------
def _fenced(text: str, language: str = "") -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}{language}\n{text.rstrip()}\n{fence}\n"


def _joined(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def notebook_to_markdown(notebook, name: str) -> tuple[str, dict[str, bytes]]:
    """(markdown page, {figure file name: PNG bytes}) for one notebook, executed or not.

    Markdown cells are copied as they are; code cells become Python blocks; printed text and
    results become text blocks; figures become image links to the returned PNG files.
    """
    parts, figures = [], {}
    for cell in notebook["cells"]:
        source = _joined(cell["source"])
        if cell["cell_type"] == "markdown":
            parts.append(source.rstrip() + "\n")
            continue
        if cell["cell_type"] != "code" or not source.strip():
            continue
        parts.append(_fenced(source, "python"))
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "stream":
                parts.append(_fenced(_joined(output["text"]), "text"))
            elif kind in ("execute_result", "display_data"):
                data = output.get("data", {})
                if "image/png" in data:
                    figure = f"{name}_{len(figures) + 1}.png"
                    figures[figure] = base64.b64decode(_joined(data["image/png"]))
                    parts.append(f"![figure {len(figures)} of {name}]({figure})\n")
                elif "text/plain" in data:
                    parts.append(_fenced(_joined(data["text/plain"]), "text"))
            elif kind == "error":
                parts.append(_fenced(f"{output.get('ename')}: {output.get('evalue')}", "text"))
    return "\n".join(parts), figures


def write_page(notebook, name: str, out_dir: str) -> None:
    """Render one executed notebook into out_dir (its page and figures, replacing older ones)."""
    page, figures = notebook_to_markdown(notebook, name)
    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir)
    try:
        with open(os.path.join(staging, f"{name}.md"), "w", encoding="utf-8") as f:
            f.write(page)
        for figure, png in figures.items():
            with open(os.path.join(staging, figure), "wb") as f:
                f.write(png)
        for old in glob.glob(os.path.join(out_dir, f"{name}_*.png")):
            os.remove(old)
        for file in os.listdir(staging):
            os.replace(os.path.join(staging, file), os.path.join(out_dir, file))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def execute(path: str, timeout: int = 600):
    """Execute one notebook in a Jupyter kernel, from the notebooks folder; returns the notebook."""
    import jupytext
    import nbclient
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()
    return notebook


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Execute the walkthrough notebooks and render them for the docs site.")
    parser.add_argument("names", nargs="*", help="notebooks to render (e.g. 04_attention); default: all")
    parser.add_argument("--out", default=rendered_folder(), help=f"folder for the pages (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    os.environ.pop("MINILLAMA_MODEL", None)  # the site shows the demo model
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend, so figures become outputs
    paths = [p for p in notebook_paths()
             if not args.names or any(os.path.basename(p).startswith(n) for n in args.names)]
    if not paths:
        print(f"walkthrough: no notebook matches {' '.join(args.names)}", file=sys.stderr)
        return 2
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        print(f"executing {name} ...", flush=True)
        write_page(execute(path), name, args.out)
    print(f"rendered {len(paths)} notebook(s) into {args.out}")
    return 0


# --- the mkdocs hook ---------------------------------------------------------------------------------
UNRENDERED = ("> **Shown without outputs.** This build of the site has not executed the notebooks: "
              "`python scripts/walkthrough.py` executes and renders them (about ten minutes on two cores), "
              "then build the site again.\n")


def on_files(files, config):
    """Add walkthrough/NN_name.md for every notebook (rendered if available) and its figures."""
    import jupytext
    from mkdocs.structure.files import File
    folder = rendered_folder()
    for path in notebook_paths():
        name = os.path.splitext(os.path.basename(path))[0]
        rendered = os.path.join(folder, f"{name}.md")
        if os.path.isfile(rendered):
            with open(rendered, encoding="utf-8") as f:
                page = f.read()
            for figure in sorted(glob.glob(os.path.join(folder, f"{name}_*.png"))):
                with open(figure, "rb") as f:
                    files.append(File.generated(config, f"{PAGE_FOLDER}/{os.path.basename(figure)}", content=f.read()))
        else:
            page, _ = notebook_to_markdown(jupytext.read(path), name)
            title, _, rest = page.partition("\n")
            page = f"{title}\n\n{UNRENDERED}\n{rest}" if title.startswith("# ") else f"{UNRENDERED}\n{page}"
        files.append(File.generated(config, f"{PAGE_FOLDER}/{name}.md", content=page))
    return files


if __name__ == "__main__":
    sys.exit(main())
