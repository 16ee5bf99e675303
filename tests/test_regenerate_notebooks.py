"""scripts/regenerate_notebooks.py: runs notebooks in the right mode and saves their outputs."""

import base64
import importlib.util
import os

import nbformat
import pytest

from course_lib import env

SCRIPT = env.DATA_DIR.parent / "scripts" / "regenerate_notebooks.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("regenerate_notebooks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebook(folder, name):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import os\nprint(os.environ.get('COURSE_FAST'), os.getcwd())")
    ]
    path = folder / name
    nbformat.write(nb, path)
    return path


def test_runs_in_default_mode_from_the_notebooks_folder_and_saves_outputs(script, tmp_path):
    path = _notebook(tmp_path, "00_demo.ipynb")
    assert os.environ.get("COURSE_FAST") == "1"  # the test suite runs in fast mode...
    script.run_notebook(path, fast=False, timeout=120)
    (output,) = nbformat.read(path, as_version=4).cells[0].outputs
    assert output["text"].strip() == f"None {tmp_path}"  # ...the regenerated outputs do not
    assert os.environ.get("COURSE_FAST") == "1"  # and this process's environment is restored
    script.run_notebook(path, fast=True, timeout=120)
    (output,) = nbformat.read(path, as_version=4).cells[0].outputs
    assert output["text"].startswith("1 ")


def test_finds_notebooks_then_solutions_by_prefix(script, tmp_path):
    (tmp_path / "solutions").mkdir()
    for name in ("00_a.ipynb", "01_b.ipynb", "solutions/01_b_solutions.ipynb", "notes.ipynb"):
        (tmp_path / name).touch()
    names = [p.name for p in script.find_notebooks([], tmp_path)]
    assert names == ["00_a.ipynb", "01_b.ipynb", "01_b_solutions.ipynb"]
    assert [p.name for p in script.find_notebooks(["01"], tmp_path)] == names[1:]
    with pytest.raises(SystemExit, match="starts with"):
        script.find_notebooks(["42"], tmp_path)
    assert [p.name for p in script.find_notebooks([])][:2] == [
        "00_welcome.ipynb",
        "01_data_and_tokens.ipynb",
    ]


def test_saves_the_readme_picture_from_its_cell(script, tmp_path):
    png = b"\x89PNG\r\n\x1a\nfake"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("print(1)"),
        nbformat.v4.new_code_cell(
            "figure = roofline.plot_roofline(c)",
            outputs=[
                nbformat.v4.new_output(
                    "display_data", data={"image/png": base64.b64encode(png).decode()}
                )
            ],
        ),
    ]
    path = tmp_path / "10_roofline.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "docs" / "roofline.png"
    assert script.save_figure(path, "roofline.plot_roofline(", out)
    assert out.read_bytes() == png
    assert not script.save_figure(path, "no such cell", tmp_path / "none.png")
    name, marker, picture = script.README_PICTURE
    assert script.save_figure(script.NOTEBOOKS / name, marker, tmp_path / "committed.png")
    assert picture.exists(), "docs/roofline.png (the README's picture) is missing"
