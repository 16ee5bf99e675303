"""Checks for notebook 07 (evaluating samples).

- `check_perplexity(fn)`: fn(log_probs) -> exp(-mean) of natural-log token probabilities
  (B, T), pooled over all tokens.
- `check_tv_distance(fn)`: fn(p, q) -> total variation distance between two distributions
  given as dicts {outcome: probability}.
- `check_parallel_tv(fn)`: fn(vocab_size, n_pairs, steps) -> the exact total variation
  distance between `synthetic.RepeatedPairs` and what the ancestral sampler draws from its
  oracle in `steps` steps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from course_lib.checks._core import CheckFailed, as_number, close, run_check
from course_lib.checks.nb06_sampling import expected_cached_calls

SOLUTIONS = "The solutions are in notebooks/solutions/07_evaluation_solutions.ipynb."


def _as_number(value, what: str) -> float:
    return as_number(value, what, hint="pool everything into a single value")


_close = functools.partial(close, rtol=1e-6, atol=1e-9)


# -- exercise 1: perplexity from log-probabilities --------------------------------------------


def _perplexity_case() -> torch.Tensor:
    """(3, 5) natural-log probabilities: an easy, a middling and a hard sample."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 5, generator=generator, dtype=torch.float64)
    probs = probs * torch.tensor([[0.1], [0.5], [0.9]], dtype=torch.float64) + torch.tensor(
        [[0.9], [0.3], [0.02]], dtype=torch.float64
    )
    return torch.log(probs)


def _test_perplexity(fn) -> str:
    log_probs = _perplexity_case()
    expected = math.exp(-log_probs.mean().item())
    got = fn(log_probs.clone())
    if isinstance(got, torch.Tensor) and got.numel() == log_probs.shape[0]:
        raise CheckFailed(
            f"you returned one perplexity per sample (shape {tuple(got.shape)}); return one "
            "number for all the tokens of all the samples."
        )
    got = _as_number(got, "perplexity(log_probs)")
    if _close(got, expected):
        return (
            "Perplexity is exp of the mean negative log-probability per token: the number of "
            "equally likely choices that would be as surprising."
        )
    mean = log_probs.mean().item()
    per_sample = torch.exp(-log_probs.mean(1))
    diagnoses = [
        (math.exp(mean), "your perplexity is below 1: it is exp(MINUS the mean log-probability)"),
        (
            -mean,
            "that is the cross-entropy in nats per token; the perplexity is its exponential, "
            "exp(-mean log p)",
        ),
        (
            2.0 ** (-mean),
            "these log-probabilities are natural logarithms: exponentiate with exp, not 2 ** "
            "(2 ** x goes with log2)",
        ),
        (
            math.exp(-log_probs.sum().item()),
            "you exponentiated the SUM of the log-probabilities (the inverse probability of "
            "everything); perplexity is per token: average before exponentiating",
        ),
        (
            per_sample.mean().item(),
            "you averaged the perplexities of the samples. Pool the log-probabilities of all "
            "tokens first, then exponentiate: exp(-log_probs.mean()). (An average of "
            "perplexities is dominated by the worst sample: exp is convex)",
        ),
    ]
    for value, hint in diagnoses:
        if _close(got, value):
            raise CheckFailed(f"expected {expected:.4f}, got {got:.4f}: {hint}.")
    raise CheckFailed(
        f"expected {expected:.4f}, got {got:.4f}: the perplexity is exp(-mean of all the "
        "log-probabilities), the mean taken over every token of every sample."
    )


def check_perplexity(fn: Callable) -> bool:
    """Check fn(log_probs (B, T), natural logs) -> exp(-mean over all tokens)."""
    return run_check("perplexity", SOLUTIONS, lambda: _test_perplexity(fn))


# -- exercise 2: total variation distance -----------------------------------------------------

_TV_CASES = [
    ({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}),  # identical: 0
    ({(0, 0): 1.0}, {(1, 1): 1.0}),  # disjoint supports: 1
    ({(0, 0): 0.5, (1, 1): 0.5}, {(0, 0): 0.25, (0, 1): 0.25, (1, 0): 0.25, (1, 1): 0.25}),
    ({"x": 0.7, "y": 0.2, "z": 0.1}, {"x": 0.4, "y": 0.2, "w": 0.4}),  # keys only in q
    ({"x": 0.4, "y": 0.2, "w": 0.4}, {"x": 0.7, "y": 0.2, "z": 0.1}),
]


def _tv(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


_TV_MISTAKES = [
    (
        lambda p, q: 2 * _tv(p, q),
        "your distance is twice the total variation: TV = 1/2 sum |p - q|, so that it lies in "
        "[0, 1] (1 for disjoint supports)",
    ),
    (
        lambda p, q: 0.5 * sum(abs(p[k] - q.get(k, 0.0)) for k in p),
        "you summed only over the outcomes of p: outcomes that only q produces count too "
        "(iterate over set(p) | set(q), with 0 for a missing outcome)",
    ),
    (
        lambda p, q: sum(abs(p[k] - q.get(k, 0.0)) for k in p),
        "you summed only over the outcomes of p, without the factor 1/2: iterate over "
        "set(p) | set(q) (0 for a missing outcome) and halve the sum",
    ),
    (
        lambda p, q: max(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q)),
        "you returned the largest difference for a single outcome; TV is the largest difference "
        "over all EVENTS (sets of outcomes), which equals 1/2 sum over outcomes of |p - q|",
    ),
    (
        lambda p, q: 0.5 * sum(p.get(k, 0.0) - q.get(k, 0.0) for k in set(p) | set(q)),
        "you summed p - q without the absolute value: the differences cancel (both sum to 1); "
        "use |p - q|",
    ),
]


def _test_tv_distance(fn) -> str:
    got = [_as_number(fn(dict(p), dict(q)), "tv_distance(p, q)") for p, q in _TV_CASES]
    expected = [_tv(p, q) for p, q in _TV_CASES]
    if all(_close(g, e) for g, e in zip(got, expected, strict=True)):
        return "Identical distributions are at 0, disjoint ones at 1."
    for mistake, hint in _TV_MISTAKES:
        if all(_close(g, mistake(p, q)) for g, (p, q) in zip(got, _TV_CASES, strict=True)):
            raise CheckFailed(f"{hint}.")
    k = next(i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if not _close(g, e))
    p, q = _TV_CASES[k]
    raise CheckFailed(
        f"with p = {p} and q = {q} expected {expected[k]:.4f}, got {got[k]:.4f}: TV = 1/2 sum "
        "over every outcome of either distribution of |p(x) - q(x)|."
    )


def check_tv_distance(fn: Callable) -> bool:
    """Check fn(p, q) -> 1/2 sum_x |p(x) - q(x)| for dicts {outcome: probability}."""
    return run_check("tv_distance", SOLUTIONS, lambda: _test_tv_distance(fn))


# -- exercise 3: what parallel decoding loses on RepeatedPairs --------------------------------


def parallel_tv_reference(vocab_size: int, n_pairs: int, steps: int) -> float:
    """TV between RepeatedPairs and the `steps`-step ancestral sampler with the exact oracle.

    Each token is revealed at a step uniform over the `steps` steps (log-linear schedule), so
    the two tokens of a pair come out in the same step with probability 1/steps; then they are
    drawn independently and differ with probability 1 - 1/vocab_size. The sampler gives every
    valid sequence less probability than the truth, so the TV is the mass it puts on sequences
    with a broken pair: 1 - (1 - (1 - 1/V) / steps)^K.
    """
    broken = (1 - 1 / vocab_size) / steps  # one pair
    return 1 - (1 - broken) ** n_pairs


_PARALLEL_CASES = [(4, 2, 1), (4, 2, 8), (10, 3, 5), (2, 5, 64)]

_PARALLEL_MISTAKES = [
    (
        lambda V, K, S: 1 - (1 - 1 / S) ** K,
        "two tokens drawn independently in the same step still agree with probability 1/V: a "
        "pair breaks only if both come out in the same step AND differ, probability "
        "(1/steps) * (1 - 1/V)",
    ),
    (
        lambda V, K, S: (1 - 1 / V) / S,
        "that is the probability that ONE given pair breaks. A sequence is wrong if any of its "
        "K pairs is broken: 1 - P(no pair broken) = 1 - (1 - b)^K, the pairs being independent",
    ),
    (
        lambda V, K, S: K * (1 - 1 / V) / S,
        "K * b is the union bound, an upper bound (it exceeds 1 for few steps). The pairs are "
        "independent, so P(no pair broken) = (1 - b)^K exactly: TV = 1 - (1 - b)^K",
    ),
    (
        lambda V, K, S: 1 - (1 - (1 - 1 / V) / S**2) ** K,
        "P(both tokens of a pair in the same step) sums (1/steps)^2 over the steps: it is "
        "1/steps, not 1/steps^2",
    ),
    (
        lambda V, K, S: 1 - (1 - 1 / (V * S)) ** K,
        "a pair is broken when its two independent draws DIFFER, which happens with "
        "probability 1 - 1/V, not 1/V",
    ),
    (
        lambda V, K, S: (1 - (1 - 1 / V) / S) ** K,
        "(1 - b)^K is the probability that NO pair breaks; the TV is the mass on broken "
        "sequences, 1 minus it",
    ),
]


def _test_parallel_tv(fn) -> str:
    got = [_as_number(fn(V, K, S), f"parallel_tv({V}, {K}, {S})") for V, K, S in _PARALLEL_CASES]
    expected = [parallel_tv_reference(*case) for case in _PARALLEL_CASES]
    if all(_close(g, e) for g, e in zip(got, expected, strict=True)):
        return (
            "One step gives 1 - V^-K (the product of marginals); 64 steps on 5 binary pairs "
            f"still break one sequence in {1 / parallel_tv_reference(2, 5, 64):.0f}."
        )
    for mistake, hint in _PARALLEL_MISTAKES:
        if all(_close(g, mistake(*case)) for g, case in zip(got, _PARALLEL_CASES, strict=True)):
            raise CheckFailed(f"{hint}.")
    k = next(i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if not _close(g, e))
    V, K, S = _PARALLEL_CASES[k]
    raise CheckFailed(
        f"with vocab_size={V}, n_pairs={K}, steps={S} expected {expected[k]:.4f}, got "
        f"{got[k]:.4f}. A pair breaks with probability b = (1/steps)(1 - 1/V) (same step, "
        "different draws); the TV is the probability that at least one of the K independent "
        "pairs breaks."
    )


def check_parallel_tv(fn: Callable) -> bool:
    """Check fn(vocab_size, n_pairs, steps) -> 1 - (1 - (1 - 1/V) / steps)^n_pairs."""
    return run_check("parallel_tv", SOLUTIONS, lambda: _test_parallel_tv(fn))


# -- exercise 4 (predict, then run): network calls of the cached ancestral sampler ------------


def check_calls_prediction(prediction) -> bool:
    """Exercise 4 (predict, then run). `prediction`: the learner's guess, made before running
    the measurement, of the network calls per sequence that the cached ancestral sampler makes
    with 128 steps on the 4-position source; right within 0.3 of the exact expectation."""

    def test() -> str:
        if prediction is ...:
            raise NotImplementedError
        guess = as_number(prediction, "prediction")
        exact = expected_cached_calls(4, 128)
        if abs(guess - exact) <= 0.3:
            return (
                f"Exactly {exact:.2f} on average: a call only where a step reveals something, "
                "so never more than the 4 positions, however many steps."
            )
        if guess > 10:
            raise CheckFailed(
                f"{guess:g} calls: that is the uncached sampler's count. The cached one skips "
                "every step that revealed nothing (its input did not change, so neither would "
                "the network's answer). How many steps can reveal something, at most?"
            )
        if guess < 3.5:
            raise CheckFailed(
                f"{guess:g} calls: with 128 steps, two positions rarely share a step. Each "
                "position's reveal step is uniform over the 128 steps, independently: how many "
                "distinct steps do 4 positions use?"
            )
        raise CheckFailed(
            f"{guess:g} calls: never more than one per position (only steps that reveal "
            "something call the network)"
        )

    return run_check("calls_prediction", SOLUTIONS, test)
