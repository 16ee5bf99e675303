"""course_lib.train: the learning-rate schedule, learning, resume after interrupts, and DDP."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from course_lib import checkpoints, data, train
from course_lib.model import ModelConfig, Transformer

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def source():
    """Windows of 33 characters of Python source (the pystdlib corpus, encoded once)."""
    return train.TextBatches(data.load_corpus("pystdlib"), seq_len=32)


def tiny_model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return Transformer(
        ModelConfig(context_len=32, n_layer=2, n_head=2, d_model=32, dropout=dropout)
    )


# -- the learning-rate schedule ------------------------------------------------------------


def test_lr_warms_up_linearly_then_decays_by_a_cosine():
    cfg = train.TrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert [train.lr_at(s, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert train.lr_at(10, cfg) == pytest.approx(1.0)  # the cosine starts at its top
    assert train.lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway
    assert train.lr_at(35, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert train.lr_at(110, cfg) == pytest.approx(0.1)
    assert train.lr_at(500, cfg) == pytest.approx(0.1)  # stays at the floor
    decay = [train.lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


def test_lr_without_warm_up_starts_at_the_peak():
    cfg = train.TrainConfig(lr=3e-3, warmup_steps=0, steps=100, min_lr_ratio=0.0)
    assert train.lr_at(0, cfg) == pytest.approx(3e-3)
    assert train.lr_at(100, cfg) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 0), ("batch_size", 0), ("eval_every", 0), ("lr", 0.0), ("precision", "fp16")],
)
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        train.TrainConfig(**{field: value})


# -- learning -------------------------------------------------------------------------------


def test_a_short_run_lowers_the_validation_loss(source):
    cfg = train.TrainConfig(
        steps=40,
        batch_size=16,
        seq_len=32,
        lr=3e-3,
        warmup_steps=5,
        eval_every=20,
        eval_batches=4,
        checkpoint_every=40,
        precision="fp32",
    )
    model = tiny_model()
    before = train.evaluate(model, source, cfg, train.ar_loss)
    assert before == pytest.approx(math.log(98), abs=0.1)  # a fresh model guesses uniformly
    result = train.train(model, cfg, source=source, progress=False)
    assert [row["step"] for row in result.history] == [20, 40]
    assert result.final_val_loss < before - 1.0  # ln(98) = 4.58 nats down to about 3
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    row = result.history[-1]
    assert row["val_bits"] == pytest.approx(row["val_loss"] / math.log(2))
    assert row["lr"] == pytest.approx(train.lr_at(39, cfg))
    assert result.steps_done == 40 and not result.interrupted and result.checkpoint is None
    # evaluation scores fixed batches: the same number twice
    assert train.evaluate(model, source, cfg, train.ar_loss) == pytest.approx(
        result.final_val_loss, rel=1e-6
    )


# -- resume -------------------------------------------------------------------------------

RESUME_CFG = train.TrainConfig(
    objective="noisy_ar",
    steps=12,
    batch_size=8,
    seq_len=32,
    lr=3e-3,
    warmup_steps=3,
    eval_every=4,
    eval_batches=2,
    checkpoint_every=5,
    precision="fp32",
)


def noisy_ar_loss(model, batch, generator):
    """AR loss with random per-sequence weights: an objective that draws from its generator."""
    logits = model(batch[:, :-1])
    per_seq = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").mean(1)
    weights = torch.rand(batch.shape[0], generator=generator) + 0.5
    return (weights * per_seq).mean()


@pytest.fixture(scope="module")
def noisy_objective():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(train.OBJECTIVES, "noisy_ar", noisy_ar_loss)
        yield


def run(out_dir, source, **kwargs):
    """Train a fresh tiny model (dropout on) under RESUME_CFG: (model, result)."""
    model = tiny_model(dropout=0.1)
    result = train.train(
        model, RESUME_CFG, source=source, out_dir=out_dir, progress=False, **kwargs
    )
    return model, result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, source, noisy_objective):
    out = tmp_path_factory.mktemp("uninterrupted")
    model, result = run(out, source)
    assert result.steps_done == 12 and not result.interrupted
    return model, result, checkpoints.read_checkpoint(out / "last.pt")


class Interrupting:
    """A batch source that raises `error` at its `at`-th batch of `split`, after drawing it."""

    def __init__(self, source, split, at, error):
        self.source, self.split, self.at, self.error, self.calls = source, split, at, error, 0

    def get_batch(self, split, batch_size, generator):
        batch = self.source.get_batch(split, batch_size, generator)
        if split == self.split:
            self.calls += 1
            if self.calls == self.at:
                raise self.error
        return batch


def without_timing(history):
    return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in history]


def assert_same_run(model, state, reference):
    ref_model, ref_result, ref_payload = reference
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert without_timing(state["history"]) == without_timing(ref_result.history)
    ref_opt = ref_payload["train_state"]["optimizer"]["state"]
    for i, moments in state["optimizer"]["state"].items():
        for moment in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(moments[moment], ref_opt[i][moment]), (i, moment)


@pytest.mark.parametrize(
    ("where", "at", "error"),
    [
        ("on_step", 2, KeyboardInterrupt()),  # before the first evaluation
        ("on_step", 6, KeyboardInterrupt()),  # between an evaluation and a checkpoint
        ("on_step", 8, KeyboardInterrupt()),  # right after a step that evaluates
        ("on_step", 5, KeyboardInterrupt()),  # right after a step that checkpoints
        ("on_step", 7, RuntimeError("disk on fire")),  # any error, not only Ctrl-C
        ("train", 7, KeyboardInterrupt()),  # in step 7: its batch drawn, not yet trained on
        ("val", 3, KeyboardInterrupt()),  # while evaluating step 8 (2 batches per evaluation)
    ],
)
def test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_result(
    tmp_path, source, uninterrupted, where, at, error
):
    def stop(step, loss):
        if step == at:
            raise error

    if where == "on_step":
        first_source, kwargs, finished = source, {"on_step": stop}, at
    else:
        first_source, kwargs = Interrupting(source, where, at, error), {}
        finished = at - 1 if where == "train" else 8
    if isinstance(error, KeyboardInterrupt):
        _, result = run(tmp_path, first_source, **kwargs)
        assert result.interrupted and result.steps_done == finished
        assert result.checkpoint == tmp_path / "last.pt"
    else:
        with pytest.raises(RuntimeError, match="disk on fire"):
            run(tmp_path, first_source, **kwargs)
    saved = checkpoints.read_checkpoint(tmp_path / "last.pt")["train_state"]
    assert saved["step"] == finished

    model, result = run(tmp_path, source)  # the same call again: it resumes
    assert result.steps_done == 12 and not result.interrupted
    assert_same_run(
        model, checkpoints.read_checkpoint(tmp_path / "last.pt")["train_state"], uninterrupted
    )
    assert without_timing(result.history) == without_timing(uninterrupted[1].history)


def test_stopped_before_its_first_evaluation_a_run_still_reports_the_model_it_has(
    tmp_path, source, noisy_objective
):
    """Notebook 03's cell reads `result.final_val_bits` after Ctrl-C at any step."""

    def stop(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    model, result = run(tmp_path, source, on_step=stop)  # RESUME_CFG evaluates every 4 steps
    assert result.interrupted and result.steps_done == 2
    (row,) = result.history
    assert row["step"] == 2 and row["interrupted"]
    expected = train.evaluate(model, source, RESUME_CFG, noisy_ar_loss)
    assert row["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert result.final_val_bits == pytest.approx(expected / math.log(2), rel=1e-6)
    # the checkpoint keeps an uninterrupted run's history: the extra row is this call's only
    assert checkpoints.read_checkpoint(tmp_path / "last.pt")["train_state"]["history"] == []


def test_a_second_ctrl_c_skips_the_evaluation_after_an_interrupt(tmp_path, source, noisy_objective):
    def stop(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    _, result = run(tmp_path, Interrupting(source, "val", 1, KeyboardInterrupt()), on_step=stop)
    assert result.interrupted and result.steps_done == 2
    assert result.history == [] and result.final_val_bits is None


def test_a_finished_run_called_again_does_nothing(tmp_path, source, uninterrupted):
    run(tmp_path, source)
    model, result = run(tmp_path, source)
    assert result.steps_done == 12
    assert result.checkpoint == tmp_path / "last.pt"  # notebook 05 prints where it is
    assert_same_run(
        model, checkpoints.read_checkpoint(tmp_path / "last.pt")["train_state"], uninterrupted
    )


def test_resuming_with_another_config_is_refused(tmp_path, source):
    cfg = train.TrainConfig(steps=3, batch_size=4, seq_len=32, warmup_steps=1, precision="fp32")
    train.train(tiny_model(), cfg, source=source, out_dir=tmp_path, progress=False)
    changed = train.TrainConfig(
        steps=3, batch_size=4, seq_len=32, warmup_steps=1, precision="fp32", lr=5e-4
    )
    with pytest.raises(ValueError, match="another configuration") as info:
        train.train(tiny_model(), changed, source=source, out_dir=tmp_path, progress=False)
    assert "'lr': (0.001, 0.0005)" in str(info.value) and "resume=False" in str(info.value)
    result = train.train(
        tiny_model(), changed, source=source, out_dir=tmp_path, resume=False, progress=False
    )
    assert result.steps_done == 3  # starting over is allowed when asked for


def test_resuming_a_run_of_another_model_shape_says_how_to_start_over(tmp_path, source):
    """E.g. a run left in data/runs/ by a preset whose model has changed since."""
    cfg = train.TrainConfig(steps=2, batch_size=4, seq_len=32, warmup_steps=1, precision="fp32")
    train.train(tiny_model(), cfg, source=source, out_dir=tmp_path, progress=False)
    torch.manual_seed(0)
    rotary = Transformer(
        ModelConfig(context_len=32, n_layer=2, n_head=2, d_model=32, position="rotary")
    )
    with pytest.raises(ValueError, match="position: checkpoint 'learned' vs model 'rotary'") as e:
        train.train(rotary, cfg, source=source, out_dir=tmp_path, progress=False)
    assert "resume=False" in str(e.value) and "--restart" in str(e.value)


def test_a_checkpoint_without_training_state_cannot_be_resumed(tmp_path, source):
    checkpoints.save_checkpoint(tmp_path / "last.pt", tiny_model())
    cfg = train.TrainConfig(steps=2, batch_size=4, seq_len=32, precision="fp32")
    with pytest.raises(ValueError, match="no training state"):
        train.train(tiny_model(), cfg, source=source, out_dir=tmp_path, progress=False)


def test_unknown_objective_is_a_value_error():
    with pytest.raises(ValueError, match="unknown objective 'nope'") as info:
        train.get_objective("nope")
    assert "'ar'" in str(info.value)
    cfg = train.TrainConfig(objective="nope", steps=1, batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match="unknown objective"):
        train.train(tiny_model(), cfg, source=object(), progress=False)


# -- DDP ----------------------------------------------------------------------------------


def test_two_process_ddp_matches_one_process(tmp_path):
    sys.path.insert(0, str(TESTS))
    try:
        import _ddp_worker
    finally:
        sys.path.remove(str(TESTS))
    (tmp_path / "ddp").mkdir()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(TESTS / "_ddp_worker.py"),
        str(tmp_path / "ddp" / "out.json"),
    ]
    start = time.perf_counter()
    # the workers import the course_lib this test imports, installed or not
    path = os.pathsep.join(filter(None, [str(TESTS.parent), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun gives each worker one thread too: no oversubscription
    try:
        single = _ddp_worker.run(tmp_path / "single")  # meanwhile, the same run in this process
    finally:
        torch.set_num_threads(threads)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in 60 s:\n{output}")
    assert proc.returncode == 0, output
    ddp = json.loads((tmp_path / "ddp" / "out.json").read_text())
    assert ddp["world_size"] == 2
    assert len(ddp["losses"]) == len(single["losses"]) == 10
    assert single["losses"][-1] < single["losses"][0] - 0.5  # it did learn
    # the same global batch, split in two: equal up to float32 summation order (~1e-7)
    torch.testing.assert_close(
        torch.tensor(ddp["losses"]), torch.tensor(single["losses"]), rtol=1e-5, atol=0
    )
    a = checkpoints.read_checkpoint(tmp_path / "ddp" / "last.pt")
    b = checkpoints.read_checkpoint(tmp_path / "single" / "last.pt")
    assert a["train_state"]["step"] == 10
    # Compare what the models compute, not every weight: the bias of the attention keys gets
    # gradients that are pure rounding noise (softmax ignores it), which Adam rescales to
    # visible, but harmless, differences between the two runs.
    x = _ddp_worker.TEXT.val[:16]
    ids = torch.tensor([data.CharTokenizer().encode(x)])
    models = [_ddp_worker.Transformer(_ddp_worker.MODEL) for _ in (a, b)]
    for model, payload in zip(models, (a, b), strict=True):
        checkpoints.load_weights(model, payload)
    with torch.no_grad():
        torch.testing.assert_close(models[0](ids), models[1](ids), rtol=1e-5, atol=1e-6)
    assert time.perf_counter() - start < 30
