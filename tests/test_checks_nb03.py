"""Notebook 03's exercise checks: right answers pass, stubs are "not attempted", and each
typical mistake is refused with the hint a TA would give."""

import math

import pytest
import torch
import torch.nn.functional as F
from exercise_helpers import assert_correct, assert_not_attempted, right, stub

from course_lib import checks
from course_lib.checks import CheckFailed
from course_lib.train import lr_at

# -- exercise 1: next-token cross-entropy in bits ---------------------------------------------


def bits_right(model, batch):
    logits = model(batch[:, :-1])
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
    ) / math.log(2)


def bits_right_full_forward(model, batch):
    """Run the whole batch and drop the last position's logits: also right for a causal model."""
    logits = model(batch)[:, :-1]
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, batch[:, 1:, None])
    return -log_probs.mean() / math.log(2)


def bits_in_nats(model, batch):
    return bits_right(model, batch) * math.log(2)


def bits_negative(model, batch):
    return -bits_right(model, batch)


def bits_summed(model, batch):
    logits = model(batch[:, :-1])
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
    ) / math.log(2)


def bits_summed_per_sequence(model, batch):
    return bits_right(model, batch) * (batch.shape[1] - 1)


def bits_unshifted(model, batch):
    logits = model(batch[:, :-1])
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch[:, :-1].reshape(-1)
    ) / math.log(2)


def bits_no_log_softmax(model, batch):
    logits = model(batch[:, :-1])
    return -logits.gather(-1, batch[:, 1:, None]).mean() / math.log(2)


def bits_per_position(model, batch):
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none") / math.log(2)


@pytest.mark.parametrize("answer", [bits_right, bits_right_full_forward])
def test_next_token_bits_accepts_right_answers(answer, capsys):
    assert_correct(checks.check_next_token_bits, answer, capsys)


def test_next_token_bits_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_next_token_bits, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (bits_in_nats, "in nats"),
        (bits_negative, "negative"),
        (bits_summed, "summed -log p over all"),
        (bits_summed_per_sequence, "summed over the positions of each sequence"),
        (bits_unshifted, "NEXT character"),
        (bits_no_log_softmax, "log_softmax"),
        (bits_per_position, "one number"),
    ],
)
def test_next_token_bits_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_next_token_bits(answer)


# -- exercise 2: warm-up + cosine learning rate -----------------------------------------------


def lr_right(step, cfg):
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def _lr_with(step, cfg, *, start=1, floor=True, from_start=False, half=True, clamp=True):
    if step < cfg.warmup_steps:
        return cfg.lr * (step + start) / cfg.warmup_steps
    if from_start:
        progress = step / cfg.steps
    else:
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, progress) if clamp else progress
    cosine = math.cos(math.pi * progress)
    cosine = 0.5 * (1 + cosine) if half else cosine
    low = cfg.min_lr_ratio if floor else 0.0
    return cfg.lr * (low + (1 - low) * cosine)


def lr_divides_by_zero(step, cfg):
    warm_fraction = (step + 1) / cfg.warmup_steps  # fails when warmup_steps == 0
    return cfg.lr * warm_fraction if warm_fraction < 1 else lr_right(step, cfg)


def lr_constant(step, cfg):
    return cfg.lr


@pytest.mark.parametrize("answer", [lr_right, lr_at])
def test_lr_schedule_accepts_right_answers(answer, capsys):
    assert_correct(checks.check_lr_schedule, answer, capsys)


def test_lr_schedule_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_lr_schedule, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda s, c: _lr_with(s, c, start=0), "at step 0 your learning rate is 0"),
        (lambda s, c: _lr_with(s, c, floor=False), "decays to 0"),
        (lambda s, c: _lr_with(s, c, from_start=True), r"\(step - warmup_steps\)"),
        (lambda s, c: _lr_with(s, c, half=False), r"0.5 \* \(1 \+ cos"),
        (lambda s, c: _lr_with(s, c, clamp=False), "clamp the progress at 1"),
        (lr_divides_by_zero, "division by zero"),
        (lr_constant, r"at step 0 \(warm-up phase\) expected"),
    ],
)
def test_lr_schedule_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_lr_schedule(answer)


# -- exercise 3: temperature ------------------------------------------------------------------


def temperature_right(logits, temperature):
    return torch.softmax(logits / temperature, dim=-1)


def temperature_multiplied(logits, temperature):
    return torch.softmax(logits * temperature, dim=-1)


def temperature_on_probabilities(logits, temperature):
    probs = torch.softmax(logits, dim=-1) / temperature
    return probs / probs.sum(-1, keepdim=True)


def temperature_no_softmax(logits, temperature):
    return logits / temperature


def temperature_naive_exp(logits, temperature):
    e = torch.exp(logits / temperature)
    return e / e.sum(-1, keepdim=True)


def temperature_wrong_dim(logits, temperature):
    return torch.softmax(logits / temperature, dim=0)


def temperature_float_list(logits, temperature):
    return torch.softmax(logits / temperature, dim=-1).tolist()


def test_temperature_accepts_the_right_answer(capsys):
    assert_correct(checks.check_temperature_probs, temperature_right, capsys)


def test_temperature_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_temperature_probs, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (temperature_multiplied, "multiplied the logits"),
        (temperature_on_probabilities, "do not change with the temperature"),
        (temperature_no_softmax, "scaled logits"),
        (temperature_naive_exp, "exp\\(\\) overflows"),
        (temperature_wrong_dim, "each row should sum to 1"),
        (temperature_float_list, "return a tensor"),
    ],
)
def test_temperature_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_temperature_probs(answer)


# -- exercise 3 (derive) and exercise 4 (predict, then run) ----------------------------------


def test_the_kv_cache_bytes_match_new_cache_and_slips_get_their_hint(capsys):
    assert right(checks.check_kv_cache_bytes(lambda L, d, n, b, s: 2 * L * d * n * b * s))
    assert "2 GiB" in capsys.readouterr().out
    assert not checks.check_kv_cache_bytes(stub)
    for wrong, hint in (
        (lambda L, d, n, b, s: L * d * n * b * s, "key AND a value"),
        (lambda L, d, n, b, s: 2 * d * n * b * s, "every layer"),
        (lambda L, d, n, b, s: 2 * L * d * n * s, "every sequence"),
        (lambda L, d, n, b, s: 2 * L * d * n * b, "not bytes"),
        (lambda L, d, n, b, s: 1, "one layer store"),
    ):
        with pytest.raises(CheckFailed, match=hint):
            checks.check_kv_cache_bytes(wrong)


def test_the_cache_speedup_prediction_is_judged_against_the_measurement(capsys):
    assert right(checks.check_cache_speedup_prediction(3.5, 3.9))
    assert "x3.9" in capsys.readouterr().out
    assert not checks.check_cache_speedup_prediction(..., 3.9)
    with pytest.raises(CheckFailed, match="you counted positions"):
        checks.check_cache_speedup_prediction(60, 3.9)
    with pytest.raises(CheckFailed, match="prefix still costs"):
        checks.check_cache_speedup_prediction(1.2, 3.9)
