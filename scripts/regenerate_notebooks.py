"""Re-run the course notebooks and save their outputs in place (for maintainers).

The notebooks are committed with the outputs of a default-mode run, so they read well on
GitHub. After changing a notebook or the library, regenerate them:

    python scripts/regenerate_notebooks.py                 # every notebook, then the solutions
    python scripts/regenerate_notebooks.py 08 09           # only notebooks whose name starts so
    python scripts/regenerate_notebooks.py --fast 06       # fast mode: a smoke run, not for commits

Each notebook runs in a fresh kernel from the notebooks/ folder (as JupyterLab runs it) with
COURSE_FAST removed from the environment (or set to 1 with --fast). Default mode uses the
shipped checkpoints and the training runs under data/runs/ (a finished run is reused, an
unfinished one resumes), so a full regeneration takes about as long as a learner's first
pass. Run it on a quiet machine: the notebooks print timings. Then read the diff. Notebook
10's roofline figure is also saved as docs/roofline.png, the README's picture.
"""

from __future__ import annotations

import argparse
import base64
import html
import os
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
# the README's picture: the first figure of the cell of notebook 10 that draws the roofline
README_PICTURE = ("10_roofline.ipynb", "roofline.plot_roofline(", ROOT / "docs" / "roofline.png")


def find_notebooks(prefixes: list[str], folder: Path = NOTEBOOKS) -> list[Path]:
    """The course notebooks, then their solutions, whose names start with one of `prefixes`."""
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb")) + sorted(
        (folder / "solutions").glob("[0-9][0-9]_*.ipynb")
    )
    if prefixes:
        paths = [p for p in paths if any(p.name.startswith(x) for x in prefixes)]
    if not paths:
        raise SystemExit(f"no notebook in {folder} starts with any of {prefixes}")
    return paths


def run_notebook(path: Path, *, fast: bool, timeout: int) -> float:
    """Execute `path` in a fresh kernel and save it with its outputs; return the seconds taken."""
    notebook = nbformat.read(path, as_version=4)
    saved = os.environ.get("COURSE_FAST")
    os.environ.pop("COURSE_FAST", None)  # the kernel inherits this process's environment
    if fast:
        os.environ["COURSE_FAST"] = "1"
    start = time.perf_counter()
    try:
        NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
            record_timing=False,
        ).execute()
    finally:
        os.environ.pop("COURSE_FAST", None)
        if saved is not None:
            os.environ["COURSE_FAST"] = saved
    tidy(notebook)
    nbformat.write(notebook, path)
    return time.perf_counter() - start


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def tidy(notebook: nbformat.NotebookNode) -> None:
    """What a learner should see on opening the saved notebook, untrusted or not.

    - Each progress bar's text (what an untrusted notebook or GitHub shows) is its final
      state, read from the saved widget state, not the 0% it had when it was displayed.
    - The kernelspec is the installed kernel's own, so JupyterLab does not rewrite it on
      opening and mark the notebook unsaved.
    """
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            text = progress_bar_text(view["model_id"], state) if view else None
            if text is not None:
                output["data"]["text/plain"] = text
    notebook.metadata["kernelspec"] = {
        "display_name": KernelSpecManager().get_kernel_spec("python3").display_name,
        "language": "python",
        "name": "python3",
    }


def progress_bar_text(model_id: str, state: dict, width: int = 10) -> str | None:
    """tqdm's text for the notebook progress bar `model_id` as the saved state left it.

    tqdm draws a bar as an HBox of (HTML prefix, FloatProgress, HTML suffix); None for any
    other widget.
    """
    box = state.get(model_id, {})
    children = box.get("state", {}).get("children", [])
    if box.get("model_name") != "HBoxModel" or len(children) != 3:
        return None
    prefix, bar, suffix = (state.get(c.removeprefix("IPY_MODEL_"), {}) for c in children)
    names = [m.get("model_name") for m in (prefix, bar, suffix)]
    if names != ["HTMLModel", "FloatProgressModel", "HTMLModel"]:
        return None
    value, total = (float(bar["state"].get(k, 0)) for k in ("value", "max"))
    filled = round(width * value / total) if total else 0
    left, right = (
        html.unescape(m["state"].get("value", "")).replace("\u2007", " ") for m in (prefix, suffix)
    )
    return f"{left}|{'#' * filled}{' ' * (width - filled)}|{right}"


def save_figure(notebook_path: Path, marker: str, out: Path) -> bool:
    """Save the first PNG output of the first code cell containing `marker`; False if none."""
    notebook = nbformat.read(notebook_path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type != "code" or marker not in cell.source:
            continue
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(base64.b64decode(png))
                return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="*", help="e.g. 03 or 08_block (default: all)")
    parser.add_argument("--fast", action="store_true", help="fast mode (not for committing)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)
    for path in find_notebooks(args.prefixes):
        print(f"{path.relative_to(ROOT)} ...", end=" ", flush=True)
        seconds = run_notebook(path, fast=args.fast, timeout=args.timeout)
        print(f"{seconds:.0f} s")
        name, marker, picture = README_PICTURE
        if path.name == name and not args.fast and save_figure(path, marker, picture):
            print(f"  README picture: {picture.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
