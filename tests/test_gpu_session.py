"""scripts/gpu_session.py, the one command for a lent GPU: its dry run, here on the CPU."""

import json

import pytest
import torch
from script_helpers import load_script


@pytest.fixture(scope="module")
def session():
    return load_script("gpu_session")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_a_gpu_the_session_asks_for_a_dry_run(session, tmp_path, capsys):
    assert session.main(["--out", str(tmp_path)]) == 2
    assert "--dry-run" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_the_dry_run_runs_every_step_and_writes_what_it_measured(session, tmp_path):
    assert session.main(["--dry-run", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu-session-dry-run.json").read_text())
    assert result["kind"] == "dry-run" and "dry run" in result["protocol"]
    assert result["environment"]["device"] == "cpu"
    steps = {row["step"]: row for row in result["steps"]}
    assert list(steps) == ["tests", "bench", "train", "roofline"]
    assert all(row["returncode"] == 0 and row["seconds"] > 0 for row in steps.values())
    assert "skipped" in steps["tests"]["output_tail"]  # the GPU tests skip on a CPU
    bench = json.loads((tmp_path / "bench-gpu-dry-run.json").read_text())
    assert bench["rows"] and not [row for row in bench["rows"] if "error" in row]
    training = steps["train"]["training"]
    assert training["steps"] == 3 and training["history"][-1]["tokens_per_s"] > 0
    assert "float32" in steps["roofline"]["output_tail"]  # the ceilings it measured
    assert not list(tmp_path.glob("**/*.pt"))  # the training checkpoint stays out of OUT


def test_the_real_session_targets_the_gpu(session, tmp_path):
    steps = dict(session.steps("python3", tmp_path, tmp_path / "run", dry_run=False))
    assert "--device cuda" in " ".join(steps["bench"]) and "--smoke" not in steps["bench"]
    assert "--no-compile" not in steps["bench"]  # compile with CUDA graphs is measured
    assert steps["train"][steps["train"].index("--preset") + 1] == "ar-small"
    assert steps["roofline"][-1] == "cuda"
    assert "tests/test_gpu.py" in steps["tests"]
