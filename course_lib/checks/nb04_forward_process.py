"""Checks for notebook 04 (the forward process): a schedule and the corruption q(x_t | x_0).

- `check_cosine_schedule(alpha, alpha_prime)`: alpha(t) = cos(pi t / 2) and its derivative,
  compared with `diffusion.CosineSchedule`.
- `check_corrupt(corrupt)`: corrupt(x0, t, alpha, mask_id, generator) masks each token
  independently with probability 1 - alpha(t). Checked statistically (masking rates, the
  spread of the number of masks per sequence, one time per sequence), so any correct way of
  drawing the random numbers passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from course_lib.checks._core import CheckFailed, as_number, run_check
from course_lib.diffusion import CosineSchedule, LogLinearSchedule

SOLUTIONS = "The solutions are in notebooks/solutions/04_forward_process_solutions.ipynb."

# the check's times: the end points, a fine grid, and a few values near 0
_TIMES = torch.cat(
    [torch.linspace(0.0, 1.0, 21, dtype=torch.float64), torch.tensor([1e-4, 0.013, 0.37, 0.999])]
)


# -- exercise 1: the cosine schedule ---------------------------------------------------------


def _evaluate(fn: Callable, name: str, t: torch.Tensor) -> torch.Tensor:
    try:
        value = fn(t.clone())
    except NotImplementedError:
        raise
    except Exception as err:
        raise CheckFailed(
            f"{name}(t) raised {type(err).__name__}: {err}. t is a float64 tensor of times; use "
            "torch functions (torch.cos, torch.sin) and math.pi, which work on whole tensors."
        ) from err
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(
            f"{name}(t) returned {type(value).__name__}; return a tensor of t's shape "
            "(torch.cos, not math.cos)"
        )
    if value.shape != t.shape:
        raise CheckFailed(
            f"{name}(t) has shape {tuple(value.shape)} for t of shape {tuple(t.shape)}: return "
            "one value per time"
        )
    return value.double()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def _test_cosine_schedule(alpha: Callable, alpha_prime: Callable) -> str:
    t = _TIMES
    schedule = CosineSchedule()
    half_pi = math.pi / 2
    got = _evaluate(alpha, "alpha", t)
    expected = schedule.alpha(t)
    if not _same(got, expected):
        if _same(got, 1 - expected):
            hint = (
                "you returned 1 - alpha(t), the probability that a token is MASKED. alpha(t) is "
                "the probability that it is still itself: 1 at t = 0, falling to 0 at t = 1"
            )
        elif _same(got, torch.sin(half_pi * t)):
            hint = "alpha(0) must be 1 (at t = 0 nothing is masked): use the cosine, not the sine"
        elif _same(got, torch.cos(math.pi * t)):
            hint = (
                "your alpha(1) is -1, not 0: cos(pi t) falls too far. Use cos(pi t / 2), which "
                "goes from 1 at t = 0 to 0 at t = 1"
            )
        elif _same(got, torch.cos(t)):
            hint = "your alpha(1) is cos(1), not 0: scale the time, cos(pi t / 2)"
        else:
            i = int((got - expected).abs().argmax())
            hint = (
                f"at t = {t[i].item():.3g} expected cos(pi t / 2) = {expected[i].item():.6f}, "
                f"got {got[i].item():.6f}"
            )
        raise CheckFailed(f"alpha(t) is wrong: {hint}.")
    got = _evaluate(alpha_prime, "alpha_prime", t)
    expected = schedule.alpha_prime(t)
    if not _same(got, expected):
        if _same(got, -expected):
            hint = (
                "the sign is flipped: alpha falls from 1 to 0, so its derivative is negative, "
                "alpha'(t) = -(pi / 2) sin(pi t / 2)"
            )
        elif _same(got, -torch.sin(half_pi * t)) or _same(got, torch.sin(half_pi * t)):
            hint = (
                "you forgot the chain rule: the derivative of cos(c t) is -c sin(c t), here "
                "with c = pi / 2, so alpha'(t) = -(pi / 2) sin(pi t / 2)"
            )
        elif _same(got, -half_pi * torch.cos(half_pi * t)):
            hint = "the derivative of cos is -sin, not -cos: alpha'(t) = -(pi / 2) sin(pi t / 2)"
        else:
            i = int((got - expected).abs().argmax())
            hint = (
                f"at t = {t[i].item():.3g} expected -(pi / 2) sin(pi t / 2) = "
                f"{expected[i].item():.6f}, got {got[i].item():.6f}"
            )
        raise CheckFailed(f"alpha_prime(t) is wrong: {hint}.")
    cosine = 1 - schedule.alpha(0.1).item()
    linear = 1 - LogLinearSchedule().alpha(0.1).item()
    return (
        f"At t = 0.1 the cosine schedule has masked {cosine:.1%} of the tokens, the log-linear "
        f"one {linear:.0%}: the cosine starts slowly and speeds up."
    )


def check_cosine_schedule(alpha: Callable, alpha_prime: Callable) -> bool:
    """Check alpha(t) = cos(pi t / 2) and alpha_prime(t) = its derivative, on tensors."""
    return run_check(
        "cosine_schedule", SOLUTIONS, lambda: _test_cosine_schedule(alpha, alpha_prime)
    )


# -- exercise 3: corrupt ---------------------------------------------------------------------

_VOCAB = 20  # the check's tokens are 0..19, its mask id is 20
_T_HINT = (
    "t is a float, or a tensor of shape (B,) holding one time per sequence: turn it into a "
    "tensor (torch.as_tensor) and, when it has one time per sequence, give it shape (B, 1) "
    "(t[:, None]) so that it broadcasts over the L positions of each sequence"
)


def _clean_batch(batch_size: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, _VOCAB, (batch_size, length), generator=generator)


def _call_corrupt(corrupt: Callable, x0: torch.Tensor, t, alpha: Callable, seed: int):
    """The learner's x_t for x0 at time(s) t, after the checks every x_t must pass."""
    described = f"t = {t}" if isinstance(t, float) else f"t of shape {tuple(t.shape)}"
    original = x0.clone()
    try:
        x_t = corrupt(x0, t, alpha, _VOCAB, torch.Generator().manual_seed(seed))
    except NotImplementedError:
        raise
    except Exception as err:
        raise CheckFailed(
            f"corrupt(x0, {described}, ...) raised {type(err).__name__}: {err}. {_T_HINT}."
        ) from err
    if not torch.equal(x0, original):
        raise CheckFailed(
            "your function changed x0 in place: the clean data must survive. Build a new "
            "tensor (torch.where, or x0.masked_fill without the trailing underscore)."
        )
    if not isinstance(x_t, torch.Tensor):
        raise CheckFailed(f"corrupt returned {type(x_t).__name__}; return a tensor like x0")
    if x_t.shape != x0.shape:
        raise CheckFailed(
            f"for x0 of shape {tuple(x0.shape)} and {described}, x_t has shape "
            f"{tuple(x_t.shape)}; it must have x0's shape. {_T_HINT}."
        )
    if x_t.dtype != torch.long:
        raise CheckFailed(f"x_t has dtype {x_t.dtype}; token ids are torch.long, like x0")
    changed = (x_t != x0) & (x_t != _VOCAB)
    if changed.any():
        raise CheckFailed(
            "some tokens were replaced by other tokens, not by the mask id: in the absorbing "
            "(masking) process a token either stays itself or becomes mask_id, nothing else."
        )
    return x_t


def _check_masking_rates(corrupt: Callable, x0: torch.Tensor, cosine: CosineSchedule) -> None:
    """The share of masks at two times of the cosine schedule, where t, alpha(t) and
    1 - alpha(t) all differ (so each usual slip gives its own rate)."""
    n_tokens = x0.numel()
    for t in (0.3, 0.7):
        x_t = _call_corrupt(corrupt, x0, t, cosine.alpha, 2)
        rate = (x_t == _VOCAB).double().mean().item()
        p = 1 - cosine.alpha(t).item()
        tolerance = 5 * math.sqrt(p * (1 - p) / n_tokens) + 1e-9
        if abs(rate - p) <= tolerance:
            continue
        found = (
            f"at t = {t} (cosine schedule) you masked {rate:.1%} of the tokens, expected {p:.1%}"
        )
        if abs(rate - (1 - p)) <= tolerance:
            hint = (
                "you masked with probability alpha(t), the probability of KEEPING a token: mask "
                "with probability 1 - alpha(t)"
            )
        elif abs(rate - t) <= tolerance:
            hint = (
                "you masked with probability t, which is 1 - alpha(t) only for the log-linear "
                "schedule alpha(t) = 1 - t: call alpha(t) instead"
            )
        else:
            hint = "mask each token with probability 1 - alpha(t)"
        raise CheckFailed(f"{found}: {hint}.")


def _test_corrupt(corrupt: Callable) -> str:
    loglinear, cosine = LogLinearSchedule(), CosineSchedule()
    x0 = _clean_batch(64, 256)
    # independence: the number of masks per sequence is Binomial(L, p), rows differ
    t = 0.5
    p = 1 - cosine.alpha(t).item()
    masked = _call_corrupt(corrupt, x0, t, cosine.alpha, 3) == _VOCAB  # (B, L)
    per_row = masked.double().mean(dim=1)  # (B,)
    if ((per_row == 0) | (per_row == 1)).all():
        raise CheckFailed(
            "you masked whole sequences (each one entirely masked or not at all): draw one "
            "random number per TOKEN, each token is masked independently."
        )
    if (masked == masked[0]).all():
        raise CheckFailed(
            "every sequence got the same mask pattern: draw one random number per token of the "
            "whole batch, shape x0.shape = (B, L), not (L,)."
        )
    counts = masked.sum(dim=1).double()
    binomial_variance = x0.shape[1] * p * (1 - p)  # about 55 here
    if counts.var().item() < 0.2 * binomial_variance:
        raise CheckFailed(
            f"every sequence has (almost) the same number of masks ({counts.min().item():.0f} to "
            f"{counts.max().item():.0f} of {x0.shape[1]}): in q(x_t | x_0) each token is "
            "masked independently, so the count varies from sequence to sequence (it is "
            "binomial). Don't pick a fixed number of positions; flip one coin per token."
        )
    _check_masking_rates(corrupt, x0, cosine)
    # the end points
    if not torch.equal(_call_corrupt(corrupt, x0, 0.0, loglinear.alpha, 1), x0):
        raise CheckFailed("at t = 0, alpha(t) = 1: no token may be masked, x_t must equal x0.")
    if not (_call_corrupt(corrupt, x0, 1.0, loglinear.alpha, 1) == _VOCAB).all():
        raise CheckFailed(
            "at t = 1, alpha(t) = 0: every token must be masked (the process ends in all masks)."
        )
    # one time per sequence: rows at t = 0 stay clean, rows at t = 1 are all masks
    for shape in ((64, 256), (32, 32)):  # square: a wrong broadcast runs without an error
        x0_rows = _clean_batch(*shape, seed=4)
        t_rows = (torch.arange(shape[0]) % 2).double()  # 0, 1, 0, 1, ...
        x_t = _call_corrupt(corrupt, x0_rows, t_rows, loglinear.alpha, 5)
        if not (torch.equal(x_t[0::2], x0_rows[0::2]) and (x_t[1::2] == _VOCAB).all()):
            raise CheckFailed(
                "with one time per sequence (t of shape (B,)), sequence b must be corrupted "
                "at time t[b]: here rows at t = 0 should be untouched and rows at t = 1 all "
                f"masks, but they are not. {_T_HINT}."
            )
    # the generator decides the mask
    a = _call_corrupt(corrupt, x0, 0.5, loglinear.alpha, 6)
    b = _call_corrupt(corrupt, x0, 0.5, loglinear.alpha, 6)
    c = _call_corrupt(corrupt, x0, 0.5, loglinear.alpha, 7)
    if not torch.equal(a, b):
        raise CheckFailed(
            "two calls with generators seeded alike gave different masks: draw your random "
            "numbers from the generator argument, torch.rand(..., generator=generator)."
        )
    if torch.equal(a, c):
        raise CheckFailed(
            "generators with different seeds gave the same mask: the mask must be random."
        )
    return (
        "Each token is kept with probability alpha(t) or replaced by the mask id, "
        "independently of the others, one time per sequence; a seeded generator fixes the mask."
    )


def check_corrupt(corrupt: Callable) -> bool:
    """Check corrupt(x0, t, alpha, mask_id, generator) -> x_t ~ q(x_t | x0)."""
    return run_check("corrupt", SOLUTIONS, lambda: _test_corrupt(corrupt))


# -- exercise 2 (derive): when is half of the text masked? ----------------------------------


def check_half_masked_time(t_half) -> bool:
    """Exercise 2 (derive). `t_half`: the time at which the cosine schedule, alpha(t) =
    cos(pi t / 2), has masked half of the tokens on average."""

    def test() -> str:
        if t_half is ...:
            raise NotImplementedError
        value = as_number(t_half, "t_half")
        if abs(value - 2 / 3) < 1e-3:
            return (
                "cos(pi t / 2) = 1/2 at pi t / 2 = pi / 3, so t = 2/3: the cosine schedule "
                "keeps more text for longer than the log-linear one (t = 1/2), and masks the "
                "rest late."
            )
        hints = {
            0.5: "that is the log-linear schedule's answer (alpha(t) = 1 - t); here "
            "alpha(t) = cos(pi t / 2)",
            math.pi / 3: "pi / 3 is the angle pi t / 2, not t: solve for t",
            1 / 3: "at t = 1/3 the cosine schedule has masked 1 - cos(pi / 6), about 13%: "
            "half is later",
        }
        for wrong, hint in hints.items():
            if abs(value - wrong) < 1e-3:
                raise CheckFailed(f"t_half = {value:.4g}: {hint}.")
        fraction = 1 - math.cos(math.pi * value / 2)
        raise CheckFailed(
            f"at t = {value:.4g} the cosine schedule masks {fraction:.1%} of the tokens on "
            "average, not 50%: solve 1 - alpha(t) = 1/2"
        )

    return run_check("half_masked_time", SOLUTIONS, test)


# -- exercise 4 (predict, then run): how much the number of masks varies ---------------------


def check_mask_count_prediction(prediction, measured_std) -> bool:
    """Exercise 4 (predict, then run). `prediction`: the standard deviation of the number of
    masks in a window of 128 tokens at t = 0.5 (log-linear), written before the measurement;
    right within 15% of the exact sqrt(L alpha (1 - alpha)). `measured_std`: the notebook's."""

    def test() -> str:
        if prediction is ...:
            raise NotImplementedError
        guess = as_number(prediction, "prediction")
        exact = math.sqrt(128 * 0.5 * 0.5)
        measured = as_number(measured_std, "measured_std")
        if abs(guess - exact) <= 0.15 * exact:
            return (
                f"Exactly sqrt(L alpha (1 - alpha)) = {exact:.2f}; measured {measured:.2f}. "
                "Each token is its own coin flip, so the count is binomial."
            )
        if guess < 0.5:
            raise CheckFailed(
                f"measured {measured:.2f}: the count varies. q masks each token by its own coin "
                "flip, independently, so the number of masks is a sum of 128 coin flips, not a "
                "fixed 64"
            )
        if abs(guess - 64) < 1:
            raise CheckFailed("64 is the mean count, L (1 - alpha); the question is its spread")
        if abs(guess - 8) < 0.2:
            raise CheckFailed(
                "sqrt(64) takes the variance to be the mean (a Poisson count); a sum of L coin "
                "flips with probability p has variance L p (1 - p)"
            )
        raise CheckFailed(
            f"measured {measured:.2f}, against your {guess:g}: the count is a sum of 128 "
            "independent coin flips with probability 1/2; what is the variance of such a sum?"
        )

    return run_check("mask_count_prediction", SOLUTIONS, test)
