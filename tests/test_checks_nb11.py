"""Checks of notebook 11: right answers pass, stubs are "not attempted", typical mistakes get their hint."""

import pytest
import torch
from exercise_helpers import not_yet, right

from course_lib import checks


def shard(batch, rank, world_size):
    if batch.shape[0] % world_size:
        raise ValueError("uneven")
    n = batch.shape[0] // world_size
    return batch[rank * n : (rank + 1) * n]


def average(per_process):
    return [sum(grads) / len(per_process) for grads in zip(*per_process, strict=True)]


def stub(*args):
    raise NotImplementedError


def test_right_answers_pass_and_stubs_are_not_attempted(capsys):
    assert right(checks.check_shard(shard))
    assert right(checks.check_average_gradients(average))
    assert not_yet(checks.check_shard(stub))
    assert not_yet(checks.check_average_gradients(stub))
    assert "not attempted" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda b, r, w: b[:, r * (b.shape[1] // w) : (r + 1) * (b.shape[1] // w)], "slice rows"),
        (lambda b, r, w: b[r::w], "out of order"),
        (
            lambda b, r, w: b[r * (b.shape[0] // w) : (r + 1) * (b.shape[0] // w)],
            "raise ValueError",
        ),
        (lambda b, r, w: b[: b.shape[0] // w], "exactly once"),
    ],
)
def test_typical_shard_mistakes_get_their_hint(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_shard(wrong)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda per: [sum(g) for g in zip(*per, strict=True)], "summed"),
        (lambda per: per[0], "the averaged gradient|one averaged gradient"),
        (lambda per: sum(g for gs in per for g in gs) / len(per), "one averaged gradient"),
    ],
)
def test_typical_averaging_mistakes_get_their_hint(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_average_gradients(wrong)


def test_the_check_uses_real_gradients():
    # the averaged gradient of equal shards is the whole batch's: the identity the check relies on
    w = torch.randn(3, 2, requires_grad=True)
    x = torch.randn(8, 3)
    (full,) = torch.autograd.grad(((x @ w) ** 2).mean(), w)
    parts = [torch.autograd.grad(((x[i : i + 2] @ w) ** 2).mean(), w)[0] for i in range(0, 8, 2)]
    assert torch.allclose(sum(parts) / 4, full, atol=1e-6)


def test_the_two_process_prediction_is_judged_against_the_runs(capsys):
    assert right(checks.check_two_process_prediction("rounding", 1.2e-7))
    assert right(checks.check_two_process_prediction("identical", 0.0))
    assert "rounding" in capsys.readouterr().out
    assert not_yet(checks.check_two_process_prediction(..., 1.2e-7))
    for guess, hint in (("identical", "not associative"), ("noise", "same seed"), ("?", "one of")):
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_two_process_prediction(guess, 1.2e-7)


def test_the_fixed_loader_passes_and_the_planted_bug_is_named(capsys):
    from course_lib.checks.nb11_scaling_out import N_ROWS, colleagues_rows

    def fixed(batch_size, rank, world_size, seed):
        rows = torch.randint(
            0, N_ROWS, (batch_size,), generator=torch.Generator().manual_seed(seed)
        )
        n = batch_size // world_size
        return rows[rank * n : (rank + 1) * n]

    def reversed_ranks(batch_size, rank, world_size, seed):
        return fixed(batch_size, world_size - 1 - rank, world_size, seed)

    assert right(checks.check_rows_fix(fixed))
    assert "course_lib.train does" in capsys.readouterr().out
    assert not_yet(checks.check_rows_fix(lambda *a: (_ for _ in ()).throw(NotImplementedError)))
    with pytest.raises(checks.CheckFailed, match="still the colleague's"):
        checks.check_rows_fix(colleagues_rows)
    with pytest.raises(checks.CheckFailed, match="another order"):
        checks.check_rows_fix(reversed_ranks)
