"""Checks for notebook 06 (sampling from a masked-diffusion model).

- `check_unmask_probability(fn)`: fn(alpha_t, alpha_s) -> the probability that a token masked
  at time t is unmasked at time s < t: (alpha_s - alpha_t) / (1 - alpha_t).
- `check_reverse_step(fn)`: fn(x_t, probs, p_unmask, mask_id, generator) -> x_s, one ancestral
  step, judged statistically on a large batch (carry-over, unmasking rate, independence
  between positions, token frequencies).
- `check_confidence(fn)`: fn(probs, kind) -> (B, L) confidences for kind "margin" and
  "entropy", compared with `sampling.position_confidence`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from course_lib.checks._core import CheckFailed, as_number, run_check
from course_lib.sampling import position_confidence

SOLUTIONS = "The solutions are in notebooks/solutions/06_sampling_solutions.ipynb."

# How many standard errors a statistic of a right answer may stray before the check calls it
# wrong: a right answer fails one comparison with probability about 2e-9 (normal tails).
N_SIGMA = 6.0


# -- exercise 1: the unmasking probability ----------------------------------------------------

_UNMASK_CASES = [(0.2, 0.5), (0.0, 0.3), (0.6, 0.7), (0.35, 1.0), (0.5, 0.5)]

_UNMASK_MISTAKES = [
    (
        lambda a_t, a_s: (1 - a_s) / (1 - a_t),
        "you returned (1 - alpha_s) / (1 - alpha_t): the probability that a token masked at t is "
        "STILL masked at s. The unmasking probability is one minus that: "
        "(alpha_s - alpha_t) / (1 - alpha_t)",
    ),
    (
        lambda a_t, a_s: a_s - a_t,
        "you returned alpha_s - alpha_t, the probability that a token is masked at t and "
        "unmasked at s. The sampler knows the token IS masked at t: condition on it by dividing "
        "by P(masked at t) = 1 - alpha_t",
    ),
    (
        lambda a_t, a_s: (a_t - a_s) / (1 - a_t),
        "your probability is negative: alpha grows as time runs backwards (alpha_s > alpha_t "
        "for s < t), so the numerator is alpha_s - alpha_t",
    ),
    (
        lambda a_t, a_s: a_s,
        "you returned alpha_s, the probability that a token is unmasked at time s when nothing "
        "is known. The sampler knows the token was masked at t: (alpha_s - alpha_t) / (1 - alpha_t)",
    ),
    (
        lambda a_t, a_s: (a_s - a_t) / (1 - a_s),
        "the denominator should be the probability of the event we condition on, being masked "
        "at the LATER time t: 1 - alpha_t, not 1 - alpha_s",
    ),
]


def _test_unmask_probability(fn) -> str:
    for alpha_t, alpha_s in _UNMASK_CASES:
        expected = (alpha_s - alpha_t) / (1 - alpha_t)
        got = as_number(fn(alpha_t, alpha_s), f"unmask_probability({alpha_t}, {alpha_s})")
        if math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9):
            continue
        for mistake, hint in _UNMASK_MISTAKES:
            if all(
                math.isclose(as_number(fn(a, b), ""), mistake(a, b), rel_tol=1e-6, abs_tol=1e-9)
                for a, b in _UNMASK_CASES[:3]
            ):
                raise CheckFailed(f"{hint}.")
        raise CheckFailed(
            f"with alpha_t = {alpha_t} and alpha_s = {alpha_s} expected {expected:.4f}, got "
            f"{got:.4f}. By Bayes: P(unmasked at s | masked at t) = P(masked at t, unmasked at "
            "s) / P(masked at t) = (alpha_s - alpha_t) / (1 - alpha_t)."
        )
    return (
        "From t = 1 (alpha = 0) it is alpha_s; at the last step (alpha_s = 1) it is 1, so "
        "nothing stays masked."
    )


def check_unmask_probability(fn: Callable) -> bool:
    """Check fn(alpha_t, alpha_s) -> (alpha_s - alpha_t) / (1 - alpha_t)."""
    return run_check("unmask_probability", SOLUTIONS, lambda: _test_unmask_probability(fn))


# -- exercise 2: one ancestral reverse step ---------------------------------------------------

_STEP_V = 5  # real tokens 0..4, mask id 5
_STEP_PROBS = torch.tensor(
    [
        [0.50, 0.20, 0.15, 0.10, 0.05],
        [0.05, 0.05, 0.10, 0.30, 0.50],
        [0.20, 0.20, 0.20, 0.20, 0.20],
        [0.00, 0.70, 0.00, 0.30, 0.00],
    ],
    dtype=torch.float64,
)  # the denoiser's categorical at the 4 masked positions


def _step_case(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t (B, 6): 2 unmasked positions (random tokens), then 4 masked; probs (B, 6, V)."""
    generator = torch.Generator().manual_seed(1)
    x_t = torch.full((batch_size, 6), _STEP_V, dtype=torch.long)
    x_t[:, :2] = torch.randint(0, _STEP_V, (batch_size, 2), generator=generator)
    probs = torch.empty(batch_size, 6, _STEP_V, dtype=torch.float64)
    probs[:, :2] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    probs[:, 2:] = _STEP_PROBS
    return x_t, probs


def _run_step(fn, x_t, probs, p_unmask, seed=0) -> torch.Tensor:
    original = x_t.clone()
    out = fn(x_t, probs.clone(), p_unmask, _STEP_V, torch.Generator().manual_seed(seed))
    call = f"reverse_step(x_t, probs, p_unmask={p_unmask}, mask_id={_STEP_V}, generator)"
    if not isinstance(out, torch.Tensor):
        raise CheckFailed(f"{call} returned {type(out).__name__}; return the ids x_s as a tensor.")
    if out.shape != x_t.shape:
        raise CheckFailed(
            f"{call} returned shape {tuple(out.shape)}; x_s has x_t's shape {tuple(x_t.shape)}."
        )
    if out.dtype != torch.long:
        raise CheckFailed(f"{call} returned dtype {out.dtype}; token ids are torch.long.")
    if not torch.equal(x_t, original):
        raise CheckFailed(
            "your function changed x_t in place. Build x_s as a new tensor (torch.where): a "
            "sampler that records its trajectory keeps the earlier states, and an in-place "
            "write would rewrite history."
        )
    if out.min() < 0 or out.max() > _STEP_V:
        raise CheckFailed(
            f"x_s holds ids outside [0, {_STEP_V}]: tokens are 0..{_STEP_V - 1} and the mask id is "
            f"{_STEP_V}."
        )
    return out


def _check_drawn_tokens(out: torch.Tensor, new: torch.Tensor) -> None:
    """The tokens written at the 4 unmasked positions follow `_STEP_PROBS` (drawn, not argmax)."""
    for k in range(4):
        tokens = out[new[:, k], 2 + k]
        freq = torch.bincount(tokens, minlength=_STEP_V + 1)[:_STEP_V].double() / len(tokens)
        if (tokens == _STEP_V).any():
            raise CheckFailed("an unmasked position received the mask id: draw a real token.")
        target = _STEP_PROBS[k]
        se = (target * (1 - target) / len(tokens)).sqrt() + 1e-12
        if ((freq - target).abs() <= N_SIGMA * se).all():
            continue
        argmax = torch.nn.functional.one_hot(target.argmax(), _STEP_V).double()
        if torch.equal(freq, argmax):
            hint = (
                "every unmasked position received its most likely token (argmax). The reverse "
                "process DRAWS the token from the denoiser's categorical: "
                "sampling.sample_categorical(probs, generator) or torch.multinomial"
            )
        else:
            hint = (
                "the token frequencies do not follow probs: at a masked position with "
                f"probs {target.tolist()} your tokens came out with frequencies "
                f"{[round(f, 3) for f in freq.tolist()]}. Draw each token from probs at its own "
                "position"
            )
        raise CheckFailed(f"{hint}.")


def _test_reverse_step(fn) -> str:
    batch_size, p = 20_000, 0.3
    x_t, probs = _step_case(batch_size)
    out = _run_step(fn, x_t, probs, p)
    if not torch.equal(out[:, :2], x_t[:, :2]):
        raise CheckFailed(
            "you changed tokens that were already unmasked. In the absorbing process an unmasked "
            "token never changes again (carry-over): only positions where x_t == mask_id may "
            "change."
        )
    new = out[:, 2:] != _STEP_V  # (B, 4): which masked positions were unmasked
    rate = new.double().mean().item()
    per_position = new.double().mean(0)  # (4,): the unmasking rate at each masked position
    se = math.sqrt(p * (1 - p) / batch_size)  # of one position's rate
    if abs(rate - (1 - p)) < N_SIGMA * se:
        raise CheckFailed(
            f"you unmasked {rate:.1%} of the masked positions with p_unmask = {p}: that is "
            "1 - p_unmask, the probability of STAYING masked. Unmask where u < p_unmask."
        )
    if rate == 1.0:
        raise CheckFailed(
            f"you unmasked every masked position with p_unmask = {p}. Each masked position is "
            "unmasked only with probability p_unmask (one uniform per position: u < p_unmask); "
            "the others stay masked until a later step."
        )
    if rate == 0.0:
        raise CheckFailed(
            f"nothing was unmasked with p_unmask = {p}. Unmask each masked position where its "
            "uniform u < p_unmask, and write a token drawn from probs there."
        )
    if ((per_position == 0) | (per_position == 1)).all():
        raise CheckFailed(
            "each position was unmasked in all sequences of the batch or in none ("
            + ", ".join(f"{r:.0%}" for r in per_position.tolist())
            + "): did you draw one uniform per position and share it across the batch? Draw "
            "one per (sequence, position): torch.rand(x_t.shape)."
        )
    if ((per_position - p).abs() > N_SIGMA * se).any():
        raise CheckFailed(
            "your unmasking rates at the 4 masked positions are "
            + ", ".join(f"{r:.1%}" for r in per_position.tolist())
            + f"; expected {p:.0%} (p_unmask) at each. Draw one uniform per (sequence, position) "
            "and unmask the masked positions where u < p_unmask."
        )
    all_or_none = ((new.sum(1) == 0) | (new.sum(1) == 4)).double().mean().item()
    expected_all_or_none = (1 - p) ** 4 + p**4
    if abs(all_or_none - expected_all_or_none) > N_SIGMA * math.sqrt(
        expected_all_or_none * (1 - expected_all_or_none) / batch_size
    ):
        raise CheckFailed(
            f"in {all_or_none:.0%} of the sequences either all or none of the 4 masked positions "
            f"were unmasked; with independent decisions it should be {expected_all_or_none:.0%}. "
            "Did you draw one uniform per sequence? Each position needs its own: "
            "torch.rand(x_t.shape)."
        )
    _check_drawn_tokens(out, new)
    out_all = _run_step(fn, x_t[:1000], probs[:1000], 1.0, seed=1)
    if (out_all == _STEP_V).any():
        raise CheckFailed(
            "with p_unmask = 1 (the last step) some positions stayed masked: every masked "
            "position must receive a token."
        )
    out_none = _run_step(fn, x_t[:1000], probs[:1000], 0.0, seed=2)
    if not torch.equal(out_none, x_t[:1000]):
        raise CheckFailed("with p_unmask = 0 nothing may change, but your x_s differs from x_t.")
    return (
        "Unmasked tokens are kept, each masked one is revealed with probability p_unmask, "
        "independently, and drawn from the denoiser's categorical."
    )


def check_reverse_step(fn: Callable) -> bool:
    """Check fn(x_t, probs, p_unmask, mask_id, generator) -> x_s (one ancestral step)."""
    return run_check("reverse_step", SOLUTIONS, lambda: _test_reverse_step(fn))


# -- exercise 3: confidence scores ------------------------------------------------------------


def _confidence_cases() -> torch.Tensor:
    """probs (2, 4, 6): random rows, a one-hot, a uniform row, and rows with zeros."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(2.0 * torch.randn(2, 4, 6, generator=generator, dtype=torch.float64), -1)
    probs[0, 1] = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # certain
    probs[0, 2] = 1 / 6  # uniform: nothing known
    probs[1, 0] = torch.tensor([0.6, 0.3, 0.1, 0.0, 0.0, 0.0])  # zeros: 0 log 0 = 0
    return probs


def _confidence_hint(kind: str, got: torch.Tensor, probs: torch.Tensor) -> str:
    V = probs.shape[-1]
    top = torch.sort(probs, dim=-1, descending=True).values
    entropy = -torch.special.xlogy(probs, probs).sum(-1)  # nats
    right = position_confidence(probs, probs.argmax(-1), kind)

    def same(reference: torch.Tensor) -> bool:
        return torch.allclose(got, reference, atol=1e-6, equal_nan=False)

    if torch.isnan(got).any():
        return (
            "your confidences contain nan where a probability is 0: log(0) = -inf and 0 * -inf "
            "= nan. Use the convention 0 log 0 = 0: torch.special.xlogy(p, p) computes p log p "
            "with it"
        )
    if kind == "margin":
        if same(top[..., 0]):
            return (
                "you returned the top probability; the margin subtracts the runner-up's: "
                "top-1 minus top-2 (torch.topk(probs, 2, dim=-1))"
            )
        if same(top[..., 1] - top[..., 0]):
            return "your margin is negative: top-1 minus top-2, not the other way round"
        if same(top[..., 0] - top[..., -1]):
            return (
                "you subtracted the smallest probability; the runner-up is the SECOND largest "
                "(torch.topk(probs, 2, dim=-1))"
            )
        return "the margin is the largest probability minus the second largest, per position"
    if same(entropy):
        return (
            "you returned the entropy itself (in nats). Turn it into a confidence in [0, 1]: "
            "1 - H / log(V), which is 1 for a one-hot and 0 for a uniform distribution"
        )
    if same(entropy / math.log(V)):
        return (
            "you returned H / log(V): 1 for a uniform distribution, 0 for a certain one, the "
            "opposite of a confidence. Return 1 - H / log(V)"
        )
    if same(1 - entropy):
        return "normalise the entropy by its maximum log(V) before subtracting it from 1"
    if same(1 - entropy / math.log(2) / math.log(V)) or same(
        1 - entropy * math.log(2) / math.log(V)
    ):
        return (
            "you mixed logarithm bases: take H and log(V) in the same base (both natural logs, "
            "or both log2), so that their ratio is 1 for a uniform distribution"
        )
    worst = (got - right).abs().max().item()
    return f"your confidences are off by up to {worst:.3g}: expected 1 - H(p) / log(V) per position"


def _test_confidence(fn) -> str:
    probs = _confidence_cases()
    for kind in ("margin", "entropy"):
        got = fn(probs.clone(), kind)
        call = f"confidence(probs, {kind!r})"
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{call} returned {type(got).__name__}; return a tensor.")
        if got.shape != probs.shape[:-1]:
            raise CheckFailed(
                f"{call} has shape {tuple(got.shape)}; expected one number per position, "
                f"{tuple(probs.shape[:-1])}: reduce over the last (vocabulary) dimension."
            )
        got = got.double()
        expected = position_confidence(probs, probs.argmax(-1), kind)
        if not torch.allclose(got, expected, atol=1e-6):
            raise CheckFailed(f"{call}: {_confidence_hint(kind, got, probs)}.")
    return "Both are 1 for a certain position and 0 for a uniform one."


def check_confidence(fn: Callable) -> bool:
    """Check fn(probs, kind) -> (B, L) margin or entropy confidence, as in position_confidence."""
    return run_check("confidence", SOLUTIONS, lambda: _test_confidence(fn))


# -- exercise 3 (derive): how many steps call the network ------------------------------------


def expected_cached_calls(n_positions: int, steps: int) -> float:
    """Network calls of the cached ancestral sampler for one sequence, on average: one per step
    that reveals something. Each position's reveal step is uniform over the steps,
    independently (log-linear schedule), so a given step reveals nothing with probability
    (1 - 1/steps)^n_positions."""
    return steps * (1 - (1 - 1 / steps) ** n_positions)


def check_expected_calls(fn: Callable) -> bool:
    """Exercise 3 (derive). fn(n_tokens, steps) -> the expected number of steps that reveal at
    least one of n_tokens masked tokens, each revealed at a step uniform over `steps`."""
    cases = [(4, 128), (128, 256), (16, 16), (1, 10), (50, 5), (7, 1)]

    def test() -> str:
        got = [as_number(fn(n, s), f"fn({n}, {s})") for n, s in cases]
        want = [expected_cached_calls(n, s) for n, s in cases]
        if all(abs(g - w) <= 1e-6 * max(1.0, w) for g, w in zip(got, want, strict=True)):
            return (
                "By linearity: the expected number of steps used is the sum over the S steps "
                "of P(the step reveals something), S (1 - (1 - 1/S)^L). It tends to L as S "
                "grows: one call per token, the most a cached sampler can ever need."
            )
        slips = [
            (
                lambda n, s: min(n, s),
                "that is the most there can be, not the average: two tokens can share a step",
            ),
            (lambda n, s: n, "only in the limit of many steps; with few steps, tokens share them"),
            (
                lambda n, s: s * (1 / s) ** n,
                "that is the chance that ALL tokens share one step; "
                "count, for each step, the chance that it reveals at least one",
            ),
            (lambda n, s: s * (1 - 1 / s) ** n, "that counts the steps that reveal NOTHING"),
            (
                lambda n, s: n * (1 - (1 - 1 / n) ** s),
                "tokens and steps are swapped: each TOKEN "
                "picks a step, so sum over steps the chance that at least one token picked it",
            ),
        ]
        for slip, hint in slips:
            if all(
                abs(g - slip(n, s)) <= 1e-6 * max(1.0, abs(slip(n, s)))
                for g, (n, s) in zip(got, cases, strict=True)
            ):
                raise CheckFailed(hint + ".")
        (n, s), g, w = next(
            (c, g, w) for c, g, w in zip(cases, got, want, strict=True) if abs(g - w) > 1e-6 * w
        )
        raise CheckFailed(
            f"for {n} tokens and {s} steps you returned {g:.4g}, expected {w:.4g}. Count, step "
            "by step, the probability that it reveals at least one token, and add them up."
        )

    return run_check("expected_calls", SOLUTIONS, test)


# -- exercise 4 (debug): a cached sampler that stops too soon ---------------------------------


def _cached_cases():
    from course_lib import diffusion, synthetic

    # one sequence at a time: with a batch, some row changes at almost every step
    for length, steps, seed in ((6, 24, 0), (6, 24, 3), (8, 8, 1), (5, 64, 2), (5, 64, 4)):
        source = synthetic.MarkovChain.random(vocab_size=5, length=length, seed=seed)
        alphas = diffusion.get_schedule("loglinear").alpha(
            diffusion.get_schedule("loglinear").time_grid(steps)
        )
        yield source, alphas.tolist(), steps, seed


def _test_cached_sampler_fix(fn) -> str:
    from course_lib import sampling

    for source, alphas, steps, seed in _cached_cases():
        oracle, mask_id = source.oracle(), source.mask_id
        start = torch.full((1, source.length), mask_id, dtype=torch.long)
        got = fn(oracle, start.clone(), alphas, mask_id, torch.Generator().manual_seed(seed))
        if not (isinstance(got, tuple) and len(got) == 2):
            raise CheckFailed("return the pair (x, nfe), as the colleague's function does")
        x, nfe = got
        want_x, want_nfe, _ = sampling.ancestral_steps(
            oracle,
            start.clone(),
            alphas,
            mask_id,
            1.0,
            torch.Generator().manual_seed(seed),
            cached=True,
            trajectory=None,
        )
        case = f"{steps} steps for {source.length} tokens"
        if not isinstance(x, torch.Tensor) or x.shape != want_x.shape:
            raise CheckFailed(f"x should be the (B, L) ids, like the input ({case})")
        if (x == mask_id).any():
            raise CheckFailed(
                f"with {case}, {(x == mask_id).sum().item()} positions are still masked at the "
                "end. Follow the loop after a step that reveals nothing: does the next step "
                "still draw its numbers and reveal anything?"
            )
        if int(nfe) >= steps and want_nfe < steps:
            raise CheckFailed(
                f"{nfe} network calls for {case}: the cache never skips a call. Only a step "
                "that changed x needs a new forward"
            )
        if not torch.equal(x, want_x) or int(nfe) != want_nfe:
            raise CheckFailed(
                f"with {case} and the same seed, your tokens or your {nfe} calls differ from the "
                f"library's cached sampler ({want_nfe} calls, the uncached sampler's tokens). "
                "Every step must draw its "
                "uniforms and proposals, in that order, whether or not it calls the network: "
                "the cache may skip the forward, never the random numbers"
            )
    return (
        "Same tokens as the uncached sampler for the same seed, with a call only after a step "
        "that changed something: the cache changes the cost, never the samples."
    )


def check_cached_sampler_fix(fn: Callable) -> bool:
    """Exercise 4 (debug). The fixed `cached_ancestral(denoiser, x, alphas, mask_id,
    generator)` -> (x, nfe): same tokens and calls as `sampling.ancestral_steps(cached=True)`
    with the same seed, on hidden Markov chains and step counts."""
    return run_check("cached_sampler_fix", SOLUTIONS, lambda: _test_cached_sampler_fix(fn))
