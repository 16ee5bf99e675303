"""Checks for notebook 12 (matched quality): a perplexity's error bar, speculative decoding's
tokens per forward, what sharpening does to entropy, and a matched-quality test with a bug."""

from __future__ import annotations

import math

import torch

from course_lib.checks._core import CheckFailed, as_number, run_check

SOLUTION = "see notebooks/solutions/12_matched_quality_solutions.ipynb"


def check_perplexity_with_error(perplexity_with_error) -> bool:
    """`perplexity_with_error(bits)`: (2 ** mean, its standard error by the delta method)."""

    def test() -> str:
        generator = torch.Generator().manual_seed(12)
        for n in (5, 40):
            bits = 2.0 + 0.6 * torch.rand(n, generator=generator, dtype=torch.float64)
            out = perplexity_with_error(bits.clone())
            if not isinstance(out, tuple | list) or len(out) != 2:
                raise CheckFailed("return two numbers: (perplexity, standard_error)")
            ppl, se = as_number(out[0], "the perplexity"), as_number(out[1], "the standard error")
            mean = bits.mean().item()
            want_ppl = 2.0**mean
            want_se = want_ppl * math.log(2) * bits.std().item() / math.sqrt(n)
            population = want_ppl * math.log(2) * bits.std(correction=0).item() / math.sqrt(n)
            # (answer, what a typical mistake gives, rel_tol, hint): checked in this order
            mistakes = [
                (
                    ppl,
                    math.exp(mean),
                    1e-6,
                    "the samples' scores are bits (log base 2): the "
                    "perplexity is 2 ** mean, not e ** mean",
                ),
                (
                    ppl,
                    (2.0**bits).mean().item(),
                    1e-9,
                    "you averaged the samples' perplexities: "
                    "average their bits, then exponentiate (a mean of 2**b is larger than "
                    "2**(mean b): Jensen's inequality)",
                ),
                (
                    se,
                    want_se / math.log(2),
                    1e-4,
                    "close: the derivative of 2**m is 2**m * ln 2, not 2**m; the ln 2 is missing",
                ),
                (
                    se,
                    want_se * math.sqrt(n),
                    1e-4,
                    "that is the spread of one sample's score, "
                    "not of the mean: divide the standard deviation by sqrt(n)",
                ),
                (
                    se,
                    population,
                    1e-6,
                    "use the sample standard deviation (divide by n - 1: "
                    "torch's default), the usual estimate of the spread from n samples",
                ),
            ]
            for answer, mistaken, rtol, hint in mistakes:
                if math.isclose(answer, mistaken, rel_tol=rtol):
                    raise CheckFailed(hint)
            if not math.isclose(ppl, want_ppl, rel_tol=1e-6):
                raise CheckFailed(
                    f"for these {n} samples the perplexity should be 2 ** mean(bits) = "
                    f"{want_ppl:.4f}, got {ppl:.4f}"
                )
            if not math.isclose(se, want_se, rel_tol=1e-4):
                raise CheckFailed(
                    f"the standard error should be {want_se:.4f} for these {n} samples, got "
                    f"{se:.4f}: d(2**m)/dm times the standard error of the mean bits"
                )
        return "The judge reports every perplexity with this error bar."

    return run_check("perplexity_with_error", SOLUTION, test)


def check_expected_tokens_per_forward(expected_tokens) -> bool:
    """`expected_tokens(alpha, draft_len)`: E[tokens per target forward] of speculative decoding."""

    def want(alpha: float, gamma: int) -> float:
        return gamma + 1.0 if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)

    def test() -> str:
        cases = [(0.0, 4), (0.5, 1), (0.6, 4), (0.8, 2), (0.9, 7), (1.0, 3), (0.75, 0)]
        for alpha, gamma in cases:
            try:
                answer = expected_tokens(alpha, gamma)
            except ZeroDivisionError as err:
                raise CheckFailed(
                    f"expected_tokens({alpha}, {gamma}) divided by zero. At alpha = 1 the closed "
                    "form (1 - alpha**(g+1)) / (1 - alpha) is 0/0, but the sum it stands for, "
                    "1 + alpha + ... + alpha**g, is g + 1: return that there"
                ) from err
            got = as_number(answer, f"expected_tokens({alpha}, {gamma})")
            w = want(alpha, gamma)
            if math.isclose(got, w - 1, rel_tol=1e-9, abs_tol=1e-12):
                raise CheckFailed(
                    "you counted only the drafted tokens kept: every round also writes one token "
                    "of its own (the resampled one after a rejection, or a bonus one after none)"
                )
            if not math.isclose(got, w, rel_tol=1e-9):
                hint = (
                    "a round keeps drafted token i only if tokens 1..i were all kept "
                    "(probability alpha**i), plus the one token every round writes"
                )
                if alpha == 1.0:
                    hint = "with alpha = 1 every drafted token is kept: draft_len + 1 tokens"
                raise CheckFailed(
                    f"expected_tokens({alpha}, {gamma}) should be {w:.4f}, got {got:.4f}: {hint}"
                )
        return (
            "At alpha = 0.8 and 4 drafted tokens a target forward writes 3.36 tokens on "
            "average, exactly from the target's distribution."
        )

    return run_check("expected_tokens_per_forward", SOLUTION, test)


ENTROPY_QUESTIONS = {
    "ar_temperature_0.8": "AR at temperature 0.8, against AR at temperature 1.0",
    "confidence": "a diffusion model's confidence decoding, against its ancestral decoding "
    "with the same number of steps",
}


def check_entropy_predictions(predictions: dict, measured: dict) -> bool:
    """Predictions ("lower" or "higher") of each setting's entropy, against `measured`.

    `measured[key]` is (entropy of the setting, entropy of what it is compared with), from
    the frontier's rows.
    """

    def test() -> str:
        if isinstance(predictions, dict) and ... in predictions.values():
            raise NotImplementedError
        if not isinstance(predictions, dict) or set(predictions) != set(ENTROPY_QUESTIONS):
            raise CheckFailed(
                f"predictions should be a dict with the keys {sorted(ENTROPY_QUESTIONS)}"
            )
        lines = []
        for key, question in ENTROPY_QUESTIONS.items():
            guess = predictions[key]
            if guess not in ("lower", "higher"):
                raise CheckFailed(
                    f'predictions[{key!r}] should be "lower" or "higher", got {guess!r}'
                )
            setting, other = measured[key]
            truth = "lower" if setting < other else "higher"
            lines.append(f"{question}: {setting:.2f} against {other:.2f} bits ({truth})")
            if guess != truth:
                raise CheckFailed(
                    f"measured: {lines[-1]}. Think again about why: a temperature below 1 "
                    "sharpens every draw; confidence decoding commits first the positions whose "
                    "distribution is sharpest, while ancestral decoding commits a random set of "
                    "positions per step, each drawn independently from its marginal (notebook "
                    "07: the product of the marginals is more spread out than the joint)"
                )
        return "Both lower, as measured above: each sharpens what is drawn."

    return run_check("entropy_predictions", SOLUTION, test)


def check_matched(matched) -> bool:
    """`matched(row, reference)`: the fixed matched-quality test (perplexity and entropy band)."""

    def test() -> str:
        ref = {"judge_ppl": 4.0, "entropy_bits": 4.5}
        cases = [
            ({"judge_ppl": 4.2, "entropy_bits": 4.4}, True, "a close row"),
            ({"judge_ppl": 4.2, "entropy_bits": 4.6}, True, "a close row, slightly more varied"),
            ({"judge_ppl": 4.5, "entropy_bits": 4.5}, False, "a row with 1.125x the perplexity"),
            (
                {"judge_ppl": 2.1, "entropy_bits": 3.6},
                False,
                "a repetitive row: low perplexity because its entropy collapsed",
            ),
            ({"judge_ppl": 4.0, "entropy_bits": 4.8}, False, "a row 0.3 bits more random"),
            ({"judge_ppl": 3.0, "entropy_bits": 4.45}, True, "a better row"),
        ]
        for row, want, what in cases:
            got = matched(dict(row), dict(ref))
            if bool(got) != want:
                raise CheckFailed(
                    f"{what} ({row} against AR's {ref}) should be "
                    f"{'matched' if want else 'not matched'}. Matched means perplexity at most "
                    "1.10x AR's and entropy within 0.15 bits of AR's, on either side"
                )
        return "The band is two-sided: a sampler cannot buy perplexity by repeating itself."

    return run_check("matched", SOLUTION, test)
