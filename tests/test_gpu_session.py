"""scripts/gpu_session.py, the one command for a lent GPU: its dry run, here on the CPU."""

import json
import os
import sys
import time

import pytest
import torch
from script_helpers import load_script

from course_lib import data


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
    assert data.load_corpus("pystdlib").fingerprint in result["corpus"]
    steps = {row["step"]: row for row in result["steps"]}
    assert list(steps) == ["tests", "bench", "frontier", "train", "roofline", "suite"]
    assert all(row["returncode"] == 0 and row["seconds"] > 0 for row in steps.values())
    assert not any(row["timed_out"] for row in steps.values())
    assert "skipped" in steps["tests"]["output_tail"]  # the GPU tests skip on a CPU
    bench = json.loads((tmp_path / "bench-gpu-dry-run.json").read_text())
    assert bench["rows"] and not [row for row in bench["rows"] if "error" in row]
    training = steps["train"]["training"]
    assert training["steps"] == 3 and training["history"][-1]["tokens_per_s"] > 0
    assert "float32" in steps["roofline"]["output_tail"]  # the ceilings it measured
    frontier = json.loads((tmp_path / "frontier-dry-run.json").read_text())
    assert frontier["verdict"] and {"ar", "speculative", "threshold"} <= {
        row["sampler"] for row in frontier["rows"]
    }
    assert "tests collected" in steps["suite"]["output_tail"]  # a dry run only collects them
    assert not list(tmp_path.glob("**/*.pt"))  # the training checkpoint stays out of OUT


def test_the_real_session_targets_the_gpu(session, tmp_path):
    steps = dict(session.steps("python3", tmp_path, tmp_path / "run", dry_run=False))
    assert "--device cuda" in " ".join(steps["bench"]) and "--smoke" not in steps["bench"]
    assert "--no-compile" not in steps["bench"]  # compile with CUDA graphs is measured
    assert steps["train"][steps["train"].index("--preset") + 1] == "ar-small"
    assert steps["roofline"][-1] == "cuda"
    assert "tests/test_gpu.py" in steps["tests"]
    assert "--collect-only" not in steps["suite"] and steps["suite"][-1] == "tests"
    own = steps["suite"][steps["suite"].index("--deselect") + 1]  # its own dry run, by name
    assert own.split("::")[1] in globals()
    assert all(f"--ignore={path}" in steps["suite"] for path in session.GPU_TESTS)  # run once
    frontier = " ".join(steps["frontier"])
    assert all(f"--diffusion {name}" in frontier for name in session.FRONTIER_MODELS)


def test_each_step_gets_its_share_and_what_earlier_steps_left(session):
    names, shares = list(session.SHARES), session.SHARES
    share = {n: 1000.0 * shares[n] / sum(shares.values()) for n in names}
    assert session.step_timeout(names[0], names, 1000.0, 1000.0) == pytest.approx(share[names[0]])
    # the first step used 10 s of its share: the second may use the rest too
    second = session.step_timeout(names[1], names, 990.0, 1000.0)
    assert second == pytest.approx(share[names[0]] - 10.0 + share[names[1]])
    # the last step gets whatever is left; a step run alone gets the whole budget
    assert session.step_timeout(names[-1], names, 123.0, 1000.0) == pytest.approx(123.0)
    assert session.step_timeout("tests", ["tests"], 50.0, 50.0) == pytest.approx(50.0)


def test_a_step_past_its_time_is_stopped_with_its_children(session, tmp_path):
    marker = tmp_path / "child-alive"
    # the step starts a child that would write the marker after 3 s; both must die at 1 s
    child = tmp_path / "child.py"
    child.write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w')\n")
    parent = tmp_path / "parent.py"
    parent.write_text(
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, {str(child)!r}])\n"
        "print('started', flush=True)\ntime.sleep(30)\n"
    )
    row = session.run_step("sleepy", [sys.executable, str(parent)], dict(os.environ), 1.0)
    assert row["timed_out"] and row["returncode"] != 0 and row["seconds"] < 10
    assert "started" in row["output_tail"]
    time.sleep(3.5)
    assert not marker.exists()
