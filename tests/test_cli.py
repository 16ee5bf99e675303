"""`python -m course_lib`: the command line, run in-process through `main(argv)`."""

import pytest
import torch

from course_lib import checkpoints, presets
from course_lib.__main__ import main


@pytest.fixture(autouse=True)
def _fp32(monkeypatch):
    monkeypatch.setenv("COURSE_BF16", "0")  # "auto" precision without measuring bf16


def test_train_a_preset_for_a_few_steps_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "ar-tiny", "--out", str(out), "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "preset ar-tiny" in printed and "pystdlib" in printed
    assert "step 3: validation" in printed and "bits per token" in printed
    payload = checkpoints.read_checkpoint(out / "last.pt")
    assert payload["train_state"]["step"] == 3
    assert payload["config"] == presets.get_preset("ar-tiny").model.to_dict()
    assert payload["train_state"]["train_config"]["steps"] == 3  # the override was used
    # the same command again resumes and finds nothing left to do
    assert main(["train", "--preset", "ar-tiny", "--out", str(out), "--steps", "3"]) == 0
    assert "resuming" in capsys.readouterr().out
    after = checkpoints.read_checkpoint(out / "last.pt")
    assert all(torch.equal(after["model"][k], v) for k, v in payload["model"].items())


def test_changing_the_run_in_the_same_folder_says_how_to_restart(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--preset", "ar-tiny", "--out", out, "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["train", "--preset", "ar-tiny", "--out", out, "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "--restart" in err
    assert main(["train", "--preset", "ar-tiny", "--out", out, "--steps", "3", "--restart"]) == 0
    assert checkpoints.read_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["step"] == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "ar-huge"], "unknown preset 'ar-huge': choose one of"),
        (["--preset", "ar-tiny", "--steps", "0"], "steps must be >= 1"),
        (["--preset", "ar-tiny", "--device", "banana"], "unknown device 'banana'"),
    ],
)
def test_bad_arguments_exit_with_code_2_and_a_clear_message(argv, message, tmp_path, capsys):
    assert main(["train", *argv, "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "last.pt").exists()


def test_unknown_preset_lists_the_presets(capsys):
    assert main(["train", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    for name in presets.PRESETS:
        assert name in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_on_a_cpu_machine_is_a_clear_error(tmp_path, capsys):
    argv = ["train", "--preset", "ar-tiny", "--steps", "1", "--device", "cuda"]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_a_missing_command_or_preset_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["train"])
    assert info.value.code == 2
    assert "--preset" in capsys.readouterr().err


def test_presets_are_valid_and_overridable():
    tiny = presets.get_preset("ar-tiny", steps=5)
    assert tiny.train.steps == 5 and presets.PRESETS["ar-tiny"].train.steps != 5
    for preset in presets.PRESETS.values():
        assert preset.train.seq_len <= preset.model.context_len, preset.name
        assert preset.out_dir.name == preset.name
    with pytest.raises(ValueError, match=r"\['stpes'\] are not TrainConfig fields"):
        presets.get_preset("ar-tiny", stpes=1)


def test_an_init_from_preset_starts_from_the_shipped_weights():
    from course_lib import env

    across = 0  # presets that start a block-causal model from a causal one's weights
    for preset in presets.PRESETS.values():
        if preset.init_from is None:
            continue
        start = presets.initial_model(preset)
        shipped = checkpoints.load_checkpoint(
            env.DATA_DIR / "checkpoints" / f"{preset.init_from}.pt"
        )
        across += start.config.attention != shipped.config.attention
        for name, weight in shipped.state_dict().items():
            assert torch.equal(start.state_dict()[name], weight), (preset.name, name)
    assert across >= 3


# -- evaluate ----------------------------------------------------------------------------------


def test_evaluate_reproduces_the_recorded_checkpoint_metrics(tmp_path, capsys):
    """data/results/checkpoint-metrics.json's quick rows, recomputed within their stated SE."""
    import json

    from course_lib import env
    from course_lib.__main__ import QUICK_WINDOWS

    recorded = json.loads((env.DATA_DIR / "results" / "checkpoint-metrics.json").read_text())
    manifest = checkpoints.read_manifest(env.DATA_DIR / "checkpoints")
    quick = {r["checkpoint"]: r for r in recorded["rows"] if r["max_windows"] == QUICK_WINDOWS}
    full = {r["checkpoint"] for r in recorded["rows"] if r["max_windows"] is None}
    assert set(quick) == set(manifest) == full, "run `python -m course_lib evaluate` again"
    out = tmp_path / "metrics.json"
    for name, row in quick.items():
        assert row["sha256"] == manifest[name]["sha256"], (
            f"{name} changed since its metrics were recorded: run `python -m course_lib evaluate`"
        )
        argv = ["evaluate", "--checkpoint", name.removesuffix(".pt"), "--out", str(out)]
        assert main([*argv, "--max-windows", str(QUICK_WINDOWS)]) == 0
        (new,) = [r for r in json.loads(out.read_text())["rows"] if r["checkpoint"] == name]
        assert new["n_chars"] == row["n_chars"] and new["method"] == row["method"]
        assert abs(new["bits_per_char"] - row["bits_per_char"]) <= row["standard_error"]
        # a block model without the shift: its exact left-to-right likelihood too (no sampling)
        assert ("left_to_right_bits" in new) == ("left_to_right_bits" in row), name
        if "left_to_right_bits" in row:
            assert abs(new["left_to_right_bits"] - row["left_to_right_bits"]) < 1e-6, name
    assert "bits per char" in capsys.readouterr().out


def test_evaluate_an_unknown_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", "gpt-9", "--out", str(tmp_path / "m.json")]) == 2
    assert "gpt-9" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_ship_records_the_checkpoint_a_fine_tuned_run_started_from(tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from course_lib import env

    monkeypatch.setattr(env, "DATA_DIR", tmp_path)
    tuned = replace(
        presets.get_preset("bd3lm-tiny"), name="bd3lm-tiny-from-ar", init_from="ar-tiny"
    )
    monkeypatch.setitem(presets.PRESETS, tuned.name, tuned)
    for name in ("ar-tiny", tuned.name):
        assert main(["train", "--preset", name, "--steps", "2"]) == 0
        assert main(["ship", "--preset", name]) == 2  # 2 of 60 steps: refused
        assert main(["ship", "--preset", name, "--unfinished"]) == 0
    manifest = checkpoints.read_manifest(tmp_path / "checkpoints")
    assert manifest[f"{tuned.name}.pt"]["init_from"] == "ar-tiny.pt"
    assert "init_from" not in manifest["ar-tiny.pt"]
    assert manifest[f"{tuned.name}.pt"]["training_tokens"] == 2 * 16 * 64  # this run's only
    capsys.readouterr()


def test_ship_records_the_training_curve_with_or_without_the_weights(tmp_path, monkeypatch):
    import json

    from course_lib import env

    monkeypatch.setattr(env, "DATA_DIR", tmp_path)
    assert main(["train", "--preset", "ar-tiny", "--steps", "40"]) == 0
    assert main(["ship", "--preset", "ar-tiny", "--unfinished", "--curve-only"]) == 0
    assert not (tmp_path / "checkpoints" / "ar-tiny.pt").exists()  # only the curve
    curves = json.loads((tmp_path / "results" / "training-curves.json").read_text())
    run = checkpoints.read_checkpoint(tmp_path / "runs" / "ar-tiny" / "last.pt")["train_state"]
    assert [row["step"] for row in curves["ar-tiny"]["history"]] == [20, 40]  # eval_every 20
    assert [row["val_bits"] for row in curves["ar-tiny"]["history"]] == [
        row["val_bits"] for row in run["history"]
    ]
    assert curves["ar-tiny"]["tokens_per_step"] == 16 * 64
    assert main(["ship", "--preset", "mdlm-tiny", "--curve-only"]) == 2  # no run: refused
    assert main(["ship", "--preset", "ar-tiny", "--unfinished"]) == 0  # weights and curve
    assert (tmp_path / "checkpoints" / "ar-tiny.pt").exists()
    assert set(json.loads((tmp_path / "results" / "training-curves.json").read_text())) == {
        "ar-tiny"
    }
