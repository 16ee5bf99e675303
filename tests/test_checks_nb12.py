"""Checks of notebook 12: right answers pass, stubs are "not attempted", typical mistakes get their hint."""

import math

import pytest
from exercise_helpers import not_yet, right, stub

from course_lib import checks, frontier


def perplexity_with_error(bits):
    ppl = 2 ** bits.mean().item()
    return ppl, ppl * math.log(2) * bits.std().item() / math.sqrt(len(bits))


def expected_tokens(alpha, draft_len):
    return sum(alpha**i for i in range(draft_len + 1))


def matched(row, reference):
    return frontier.is_matched(row, reference)


MEASURED = {"ar_temperature_0.8": (4.3, 4.6), "confidence": (4.1, 4.9)}
PREDICTED = {"ar_temperature_0.8": "lower", "confidence": "lower"}


def test_right_answers_pass_and_stubs_are_not_attempted(capsys):
    assert right(checks.check_perplexity_with_error(perplexity_with_error))
    assert right(checks.check_expected_tokens_per_forward(expected_tokens))
    assert right(checks.check_matched(matched))
    assert right(checks.check_entropy_predictions(PREDICTED, MEASURED))
    assert not_yet(checks.check_perplexity_with_error(stub))
    assert not_yet(checks.check_expected_tokens_per_forward(stub))
    assert not_yet(checks.check_matched(stub))
    unanswered = {key: ... for key in PREDICTED}
    assert not_yet(checks.check_entropy_predictions(unanswered, MEASURED))
    assert capsys.readouterr().out.count("not attempted") == 4


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda b: (math.exp(b.mean().item()), 0.1), "not e \\*\\* mean"),
        (lambda b: ((2**b).mean().item(), 0.1), "Jensen"),
        (
            lambda b: (2 ** b.mean().item(), 2 ** b.mean().item() * b.std().item() / len(b) ** 0.5),
            "ln 2",
        ),
        (
            lambda b: (2 ** b.mean().item(), 2 ** b.mean().item() * math.log(2) * b.std().item()),
            "sqrt\\(n\\)",
        ),
        (
            lambda b: (
                2 ** b.mean().item(),
                2 ** b.mean().item() * math.log(2) * b.std(correction=0).item() / len(b) ** 0.5,
            ),
            "n - 1",
        ),
    ],
)
def test_perplexity_mistakes_get_their_hint(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_perplexity_with_error(wrong)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda a, g: sum(a**i for i in range(1, g + 1)), "one token of its own"),
        (lambda a, g: (1 - a**g) / (1 - a), "alpha\\*\\*i"),
        (lambda a, g: 1 / (1 - a) if a < 1 else g + 1, "alpha\\*\\*i"),
        (lambda a, g: (1 - a ** (g + 1)) / (1 - a) if a < 1 else math.inf, "alpha = 1"),
    ],
)
def test_speculative_mistakes_get_their_hint(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_expected_tokens_per_forward(wrong)


def test_the_planted_bug_is_caught_and_a_wrong_prediction_is_explained():
    def one_sided(row, reference):
        return (
            row["judge_ppl"] <= 1.10 * reference["judge_ppl"]
            and row["entropy_bits"] - reference["entropy_bits"] <= 0.15
        )

    with pytest.raises(checks.CheckFailed, match="repetitive"):
        checks.check_matched(one_sided)
    with pytest.raises(checks.CheckFailed, match="perplexity at most"):
        checks.check_matched(lambda row, reference: abs(row["entropy_bits"] - 4.5) <= 0.15)
    with pytest.raises(checks.CheckFailed, match="sharpest"):
        checks.check_entropy_predictions({**PREDICTED, "confidence": "higher"}, MEASURED)
    with pytest.raises(checks.CheckFailed, match="keys"):
        checks.check_entropy_predictions({"confidence": "lower"}, MEASURED)


def test_the_closed_form_at_alpha_one_gets_a_hint_not_a_crash():
    with pytest.raises(checks.CheckFailed, match="0/0"):
        checks.check_expected_tokens_per_forward(lambda a, g: (1 - a ** (g + 1)) / (1 - a))
