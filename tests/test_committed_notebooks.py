"""The committed notebooks as a learner first sees them (on GitHub, or opened in JupyterLab).

Their outputs come from `scripts/regenerate_notebooks.py` in default mode. These tests read the
files only (nothing is run): what a reader meets before running anything must be clean.
"""

import json
import re

import pytest

from course_lib import env

NOTEBOOKS = sorted((env.REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted(
    (env.REPO_ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*.ipynb")
)
# an absolute path of the machine that ran the notebook: /root/..., /home/x/..., /usr/lib/...
MACHINE_PATH = re.compile(r"(?<![:\w/.])/(?:[\w.-]+/){2,}")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _outputs(notebook):
    for index, cell in enumerate(notebook["cells"]):
        for output in cell.get("outputs", []):
            yield index, output


def _text(output) -> str:
    data = output.get("data", {})
    return "".join(output.get("text", "")) + "".join(data.get("text/plain", ""))


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def notebook(request):
    return json.loads(request.param.read_text())


def test_there_are_notebooks_to_check():
    assert len(NOTEBOOKS) >= 24  # 00-11 and their solutions


def test_no_machine_paths_errors_or_stray_stderr(notebook):
    for index, output in _outputs(notebook):
        text = _text(output)
        assert output["output_type"] != "error", f"cell {index} saved an error"
        assert "Traceback" not in text, f"cell {index} shows a traceback"
        assert not MACHINE_PATH.search(text), f"cell {index} shows a path: {text[:200]!r}"
        if output.get("name") == "stderr":  # only progress bars may write there
            assert re.search(r"\d+%\|", text), f"cell {index} wrote to stderr: {text[:200]!r}"


def test_training_cells_show_the_training_not_a_resumed_run(notebook):
    """A regeneration that found an old run in data/runs/ resumes it and trains for 0 s: delete
    the run (or regenerate with a fresh COURSE_DATA_DIR) first."""
    for index, output in _outputs(notebook):
        text = _text(output)
        assert "resuming from" not in text, f"cell {index} resumed a run: {text[:120]!r}"
        assert not re.search(r"ran for 0 s|trained for 0(\.0)? s", text), f"cell {index}"


def test_no_bare_true_or_false_under_a_cell(notebook):
    for index, output in _outputs(notebook):
        if output["output_type"] == "execute_result":
            assert _text(output).strip() not in ("True", "False"), f"cell {index}"


def test_widgets_show_a_picture_or_their_final_state_where_they_cannot_run(notebook):
    """Untrusted (a fresh clone) or on GitHub, a widget's output is its picture or its text."""
    for index, output in _outputs(notebook):
        data = output.get("data", {})
        if WIDGET_VIEW not in data:
            continue
        text = "".join(data.get("text/plain", ""))
        assert not re.match(r"\w*Box\(children=", text), f"cell {index} shows a widget's repr"
        if re.search(r"\d+/\d+ \[", text):  # a progress bar: its final state, not 0%
            done, total = map(int, re.search(r"(\d+)/(\d+) \[", text).groups())
            assert done > 0, f"cell {index}: a progress bar saved at 0: {text!r}"
        else:
            assert "image/png" in data, f"cell {index}: a widget without a picture"


def test_no_nbval_directive_in_visible_source(notebook):
    for index, cell in enumerate(notebook["cells"]):
        assert "NBVAL" not in "".join(cell["source"]), f"cell {index}: use a cell tag instead"


def test_the_kernelspec_is_the_installed_kernels_own(notebook):
    """JupyterLab rewrites another display name on opening and marks the notebook unsaved."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = notebook["metadata"]["kernelspec"]
    assert spec["name"] == "python3"
    assert spec["display_name"] == KernelSpecManager().get_kernel_spec("python3").display_name


# a name in a course_lib module, reached from a module (`sampling.x`, `course_lib.ceilings.x`)
_LIBRARY_NAME = re.compile(
    r"\b(?:course_lib\.)?(?P<module>[a-z_]+)\.(?P<path>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)"
)


def _library_module(name):
    import importlib

    try:
        return importlib.import_module(f"course_lib.{name}")
    except ImportError:
        return None


def test_no_notebook_anchors_on_a_private_library_name(notebook):
    """Notebooks name public functions only: renaming a private helper breaks no notebook."""
    private = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        for match in _LIBRARY_NAME.finditer("".join(cell["source"])):
            if _library_module(match["module"]) is None:
                continue
            parts = match["path"].split(".")
            if any(p.startswith("_") and not p.startswith("__") for p in parts):
                private.append(f"cell {index}: {match.group(0)}")
    assert not private, private


def test_no_notebook_prints_a_whole_function_of_more_than_40_lines(notebook):
    """Longer library code is shown as a named excerpt (`viz.show_lines`, at most 40 lines)."""
    import inspect

    long = []
    for index, cell in enumerate(notebook["cells"]):
        source = "".join(cell["source"]) if cell["cell_type"] == "code" else ""
        for match in re.finditer(r"print\(inspect\.getsource\(([\w.]+)\)\)", source):
            parts = match[1].removeprefix("course_lib.").split(".")
            obj = _library_module(parts[0])
            if obj is None:  # a name imported from a module, e.g. SelfAttention.forward
                modules = [_library_module(m) for m in ("model", "ceilings", "diffusion")]
                obj = next(m for m in modules if hasattr(m, parts[0]))
            else:
                parts = parts[1:]
            for part in parts:
                obj = getattr(obj, part)
            n = len(inspect.getsource(obj).splitlines())
            if n > 40:
                long.append(f"cell {index}: {match[1]} ({n} lines)")
    assert not long, long


def test_each_notebook_states_the_time_its_length_gives():
    """The times in the notebooks and the README follow scripts/notebook_time.py's rule."""
    from script_helpers import load_script

    rule = load_script("notebook_time")
    readme = (env.REPO_ROOT / "README.md").read_text()
    for path in sorted((env.REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        minutes = rule.measure(path)["minutes"]
        intro = "".join(json.loads(path.read_text())["cells"][0]["source"])
        stated = re.search(r"\*\*(?:Estimated time|Time):?\*\*:? about (\d+) minutes", intro)
        assert stated, f"{path.name} states no time"
        row = re.search(rf"^\| {path.name[:2]} \|[^|]+\|[^|]+\| (\d+) min \|", readme, re.M)
        assert row, f"the README's table has no time for {path.name}"
        # one rounding step of margin: a few words more may tip the rule's 5-minute rounding
        for where, value in (("notebook", int(stated[1])), ("README", int(row[1]))):
            assert abs(value - minutes) <= 5, f"{path.name}: {where} says {value}, rule {minutes}"


def _private_library_names() -> set[str]:
    import ast

    names = set()
    for path in (env.REPO_ROOT / "course_lib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name.startswith("_"):
                if not node.name.startswith("__"):
                    names.add(node.name)
    return names


def test_no_excerpt_prints_a_private_library_name(notebook):
    """What `show_lines` and `inspect.getsource` print names public functions only."""
    private = _private_library_names()
    found = []
    for index, cell in enumerate(notebook["cells"]):
        source = "".join(cell["source"])
        if "show_lines" not in source and "getsource" not in source:
            continue
        printed = "".join(_text(output) for output in cell.get("outputs", []))
        names = set(re.findall(r"(?<![\w])_[A-Za-z]\w*", printed)) & private
        found += [f"cell {index}: {name}" for name in sorted(names)]
    assert not found, found


def test_optional_sections_shorten_the_estimate_only_where_they_exist():
    from script_helpers import load_script

    rule = load_script("notebook_time")
    for name in ("09_fast_sampler", "10_roofline"):
        m = rule.measure(env.REPO_ROOT / "notebooks" / f"{name}.ipynb")
        assert m["core_minutes"] < m["minutes"], name
    m = rule.measure(env.REPO_ROOT / "notebooks" / "00_welcome.ipynb")
    assert m["core_minutes"] == m["minutes"]
