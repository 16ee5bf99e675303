"""doctor: every check reports, and a broken data folder or checkpoint is a FAIL."""

import json

from course_lib import checkpoints, doctor, env
from course_lib.model import ModelConfig, Transformer


def test_all_checks_pass_or_warn_here(capsys):
    checks = doctor.run_checks()
    assert {c.name for c in checks} >= {"python", "torch", "device", "data folder", "corpus"}
    assert all(c.status in {"ok", "warn", "FAIL"} for c in checks)
    assert doctor.main() == 0
    assert "Ready for the course." in capsys.readouterr().out


def test_unwritable_data_folder_fails(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(env, "DATA_DIR", blocker)
    check = doctor._data_dir()
    assert check.status == "FAIL" and "COURSE_DATA_DIR" in check.detail


def test_damaged_shipped_checkpoint_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(env, "DATA_DIR", tmp_path)
    model = Transformer(ModelConfig(context_len=8, n_layer=1, n_head=1, d_model=8))
    path = checkpoints.save_checkpoint(tmp_path / "checkpoints" / "m.pt", model)
    assert doctor._checkpoints().status == "ok"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    check = doctor._checkpoints()
    assert check.status == "FAIL" and "m.pt" in check.detail


def test_the_widget_extension_is_checked_in_jupyterlab_itself(tmp_path, monkeypatch):
    """ipywidgets can import while JupyterLab's extension is off: the bars then freeze as text."""
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    check = doctor._widget_extension()
    assert check.status == "ok" and "enabled" in check.detail
    (tmp_path / "labconfig").mkdir()
    disabled = {"disabledExtensions": {doctor.WIDGET_EXTENSION: True}}
    (tmp_path / "labconfig" / "page_config.json").write_text(json.dumps(disabled))
    check = doctor._widget_extension()
    assert check.status == "warn"
    assert f"jupyter labextension enable {doctor.WIDGET_EXTENSION}" in check.detail
