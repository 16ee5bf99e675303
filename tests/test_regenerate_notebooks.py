"""scripts/regenerate_notebooks.py: runs notebooks in the right mode and saves their outputs."""

import base64
import os

import nbformat
import pytest
from script_helpers import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("regenerate_notebooks")


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


def _bar_state(model_id, value, total, left, right):
    def model(name, **state):
        return {"model_name": name, "state": state}

    return {
        model_id: model("HBoxModel", children=[f"IPY_MODEL_{model_id}{i}" for i in range(3)]),
        f"{model_id}0": model("HTMLModel", value=left),
        f"{model_id}1": model("FloatProgressModel", value=value, max=total),
        f"{model_id}2": model("HTMLModel", value=right),
    }


def test_tidy_saves_each_progress_bars_final_state_and_the_installed_kernelspec(script):
    from jupyter_client.kernelspec import KernelSpecManager

    state = _bar_state(
        "bar", 400.0, 400.0, "train:\u2007100%", "\u2007400/400\u2007[02:41&lt;00:00]"
    )
    state.update(_bar_state("half", 5.0, 10.0, "eval:\u200750%", "\u20075/10"))
    state["slider"] = {"model_name": "VBoxModel", "state": {"children": []}}
    views = ["bar", "half", "slider"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "x",
            outputs=[
                nbformat.v4.new_output(
                    "display_data",
                    data={
                        script.WIDGET_VIEW: {"model_id": view},
                        "text/plain": "train:   0%|          | 0/400",
                    },
                )
                for view in views
            ],
        )
    ]
    nb.metadata["widgets"] = {script.WIDGET_STATE: {"state": state}}
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    script.tidy(nb)
    texts = [o["data"]["text/plain"] for o in nb.cells[0].outputs]
    assert texts[0] == "train: 100%|##########| 400/400 [02:41<00:00]"
    assert texts[1] == "eval: 50%|#####     | 5/10"
    assert texts[2] == "train:   0%|          | 0/400"  # not a progress bar: left alone
    expected = KernelSpecManager().get_kernel_spec("python3").display_name
    assert nb.metadata["kernelspec"]["display_name"] == expected
