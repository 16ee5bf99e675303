"""Checks for notebook 05 (training a masked-diffusion model): the loss and the times.

- `check_diffusion_loss(diffusion_loss)`: diffusion_loss(denoiser, x0, x_t, t, schedule,
  mask_id) -> the masked-diffusion loss of one batch for given times and masks, compared with
  `diffusion.masked_diffusion_loss` drawing the same times and masks.
- `check_low_discrepancy_times(sample_times)`: sample_times(batch_size, generator, time_eps)
  -> one time per sequence, exactly one in each of batch_size equal strata of [time_eps, 1],
  each uniform on its own (`diffusion.sample_times`).
- `check_masked_step_kl(fn)` (derive) and `check_unweighted_loss(prediction, schedule)`
  (ablate): the KL of one reverse step at a masked position, and the loss without its weight.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from course_lib import diffusion
from course_lib.checks._core import CheckFailed, as_number, close, run_check

SOLUTIONS = "The solutions are in notebooks/solutions/05_training_diffusion_solutions.ipynb."


_close = functools.partial(close, rtol=1e-5, atol=1e-7)


# -- exercise 2: the loss of one batch ------------------------------------------------------------

_VOCAB, _LENGTH, _BATCH = 5, 12, 8  # tokens 0..4, mask id 5


class _StandIn(torch.nn.Module):
    """A small deterministic denoiser: logits from each id, its position and its neighbours.

    Bidirectional like the course's diffusion models (a position's logits depend on the ids
    on both sides), float64, with parameters so that a loss can be checked for a gradient.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        V, L = _VOCAB, _LENGTH

        def table(*shape):
            return torch.nn.Parameter(2 * torch.randn(*shape, generator=generator).double())

        self.own, self.left, self.right = table(V + 1, V), table(V + 1, V), table(V + 1, V)
        self.position = table(L, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        left = torch.roll(ids, 1, dims=1)
        right = torch.roll(ids, -1, dims=1)
        return self.own[ids] + self.left[left] + self.right[right] + self.position  # (B, L, V)


def _draw(schedule: diffusion.Schedule, seed: int) -> tuple[torch.Tensor, ...]:
    """x0, and the t and x_t that `masked_diffusion_loss(..., time_eps=0)` draws with `seed`."""
    x0 = torch.randint(0, _VOCAB, (_BATCH, _LENGTH), generator=torch.Generator().manual_seed(99))
    generator = torch.Generator().manual_seed(seed)
    t = diffusion.sample_times(_BATCH, time_eps=0.0, generator=generator)  # (B,)
    x_t = diffusion.corrupt(x0, t, schedule, mask_id=_VOCAB, generator=generator)  # (B, L)
    return x0, t, x_t


def _variants(denoiser, x0, x_t, t, schedule) -> dict[str, float]:
    """The loss with each typical mistake, in nats per token (or as the mistake's unit)."""
    L = x0.shape[1]
    masked = x_t == _VOCAB
    with torch.no_grad():
        log_probs = F.log_softmax(denoiser(x_t), dim=-1)
        nll = -log_probs.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
        nll_on_x0 = -F.log_softmax(denoiser(x0), dim=-1).gather(-1, x0[..., None]).squeeze(-1)
    weight = schedule.weight(t)  # (B,)
    masked_sum = (nll * masked).sum(1)  # (B,)
    right = (weight * masked_sum / L).mean().item()
    n_masked = masked.sum(1).clamp(min=1)
    alpha, alpha_prime = schedule.alpha(t), schedule.alpha_prime(t)
    return {
        "right": right,
        "one_over_t": (masked_sum / t / L).mean().item(),
        "all_positions": (weight * nll.sum(1) / L).mean().item(),
        "masked_mean_per_sequence": (weight * masked_sum / n_masked).mean().item(),
        "masked_mean_batch": (weight * masked_sum).sum().item() / masked.sum().item(),
        "no_weight_per_token": (masked_sum / L).mean().item(),
        "no_weight_masked_mean": masked_sum.sum().item() / masked.sum().item(),
        "sigma_rate": (-alpha_prime / alpha * masked_sum / L).mean().item(),
        "denoiser_on_x0": (weight * (nll_on_x0 * masked).sum(1) / L).mean().item(),
        "bits": right / math.log(2),
        "negative": -right,
        "batch_sum": right * x0.shape[0],
        "position_sum": right * L,
    }


_LOSS_HINTS = [
    (
        "one_over_t",
        "you weighted by 1/t. That is -alpha'(t) / (1 - alpha(t)) only for the log-linear "
        "schedule alpha(t) = 1 - t; for the cosine schedule 1/t is too small (about half the "
        "right weight at small t). Use schedule.weight(t), or -schedule.alpha_prime(t) / "
        "(1 - schedule.alpha(t))",
    ),
    (
        "all_positions",
        "you also counted unmasked positions. An unmasked token is known (carry-over): it "
        "costs nothing, so only positions where x_t == mask_id are scored",
    ),
    (
        "masked_mean_per_sequence",
        "you averaged over masked tokens only; average over ALL L tokens of each sequence "
        "(divide the sum over masked positions by L). The weight w(t) already accounts for how "
        "many tokens are masked at time t",
    ),
    (
        "masked_mean_batch",
        "you averaged over masked tokens only; average over ALL tokens (divide each sequence's "
        "sum over masked positions by L, then average over the batch). The weight w(t) already "
        "accounts for how many tokens are masked at time t",
    ),
    (
        "no_weight_per_token",
        "you left out the weight: multiply each sequence's sum by w(t_b) = -alpha'(t_b) / "
        "(1 - alpha(t_b)) (schedule.weight(t))",
    ),
    (
        "no_weight_masked_mean",
        "that is the plain cross-entropy of the masked tokens (a common training heuristic), "
        "not the ELBO: weight each sequence by w(t_b) = -alpha'(t_b) / (1 - alpha(t_b)) and "
        "divide by L, not by the number of masked tokens",
    ),
    (
        "sigma_rate",
        "you divided by alpha(t): -alpha'(t) / alpha(t) is the rate of the noise level "
        "sigma(t) = -log alpha(t), not the ELBO weight. Divide by 1 - alpha(t), the "
        "probability of being masked",
    ),
    (
        "denoiser_on_x0",
        "you ran the denoiser on the clean x0; it must read the corrupted x_t (what it learns "
        "to undo), and it is scored against x0",
    ),
    (
        "bits",
        "your loss is in bits; the library's (and this exercise's) unit is nats: drop the / ln 2",
    ),
    (
        "negative",
        "your loss is negative: use MINUS the log-probability of the right token "
        "(and a positive weight, -alpha'(t) / (1 - alpha(t)) > 0)",
    ),
    (
        "batch_sum",
        "you summed over the batch: average the per-sequence losses (.mean()) so that the "
        "loss does not grow with the batch size",
    ),
    (
        "position_sum",
        "you summed over positions without dividing by L: the loss is per token, divide each "
        "sequence's sum by L",
    ),
]


def _test_diffusion_loss(diffusion_loss: Callable) -> str:
    denoiser = _StandIn()
    values = []
    for name in ("loglinear", "cosine"):
        schedule = diffusion.get_schedule(name)
        x0, t, x_t = _draw(schedule, seed=3)
        expected = diffusion.masked_diffusion_loss(
            denoiser,
            x0,
            schedule,
            mask_id=_VOCAB,
            generator=torch.Generator().manual_seed(3),
            time_eps=0.0,
        )  # the library draws the same t and x_t from the same seed
        call = f"diffusion_loss(...) with the {name} schedule"
        try:
            got = diffusion_loss(denoiser, x0.clone(), x_t.clone(), t.clone(), schedule, _VOCAB)
        except NotImplementedError:
            raise
        except (IndexError, RuntimeError) as err:
            raise CheckFailed(
                f"{call} raised {type(err).__name__}: {err}. The targets are the clean tokens "
                "x0 (x_t holds the mask id, which has no logit, exactly where you score); t has "
                "shape (B,), one time per sequence: give it shape (B, 1) where it meets (B, L) "
                "tensors."
            ) from err
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(
                f"{call} returned {type(got).__name__}; return a 0-d tensor (no .item()): "
                "training calls .backward() on it"
            )
        if got.numel() != 1:
            raise CheckFailed(
                f"{call} returned a tensor of shape {tuple(got.shape)}; return one number, the "
                "mean over the batch"
            )
        if not got.requires_grad:
            raise CheckFailed(
                f"{call} is not connected to the denoiser's parameters (no gradient): don't use "
                ".item(), .detach() or torch.no_grad() inside the loss"
            )
        value = got.item()
        if _close(value, expected.item()):
            values.append(f"{value:.4f} ({name})")
            continue
        variants = _variants(denoiser, x0, x_t, t, schedule)
        for key, hint in _LOSS_HINTS:
            if _close(value, variants[key]) and not _close(variants[key], variants["right"]):
                raise CheckFailed(
                    f"{call}: expected {expected.item():.4f}, got {value:.4f}: {hint}."
                )
        raise CheckFailed(
            f"{call}: expected {expected.item():.4f} nats per token, got {value:.4f}. For each "
            "sequence b: w(t_b) = -alpha'(t_b) / (1 - alpha(t_b)), times the sum over masked "
            "positions i of -log p(x0[b, i] | x_t[b]) (log_softmax of denoiser(x_t) over the "
            "last dimension), divided by L; then the mean over b."
        )
    return (
        "Your loss equals diffusion.masked_diffusion_loss on the check's batches: "
        + ", ".join(values)
        + " nats per token."
    )


def check_diffusion_loss(diffusion_loss: Callable) -> bool:
    """Check diffusion_loss(denoiser, x0, x_t, t, schedule, mask_id) -> scalar nats per token."""
    return run_check("diffusion_loss", SOLUTIONS, lambda: _test_diffusion_loss(diffusion_loss))


# -- exercise 4: low-discrepancy times ------------------------------------------------------------


def _call_times(sample_times: Callable, batch_size: int, seed: int, time_eps: float):
    call = f"sample_times({batch_size}, generator, time_eps={time_eps})"
    generator = torch.Generator().manual_seed(seed)
    try:
        t = sample_times(batch_size, generator=generator, time_eps=time_eps)
    except NotImplementedError:
        raise
    except Exception as err:
        raise CheckFailed(f"{call} raised {type(err).__name__}: {err}") from err
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise CheckFailed(f"{call} should return a floating-point tensor, got {t!r:.60}")
    if t.shape != (batch_size,):
        raise CheckFailed(
            f"{call} has shape {tuple(t.shape)}; return one time per sequence, shape "
            f"({batch_size},)"
        )
    return t.double(), call


def _test_low_discrepancy_times(sample_times: Callable) -> str:
    a, call = _call_times(sample_times, 8, 123, 1e-3)
    b, _ = _call_times(sample_times, 8, 123, 1e-3)
    c, _ = _call_times(sample_times, 8, 124, 1e-3)
    if not torch.equal(a, b):
        raise CheckFailed(
            f"two calls of {call} with generators seeded alike gave different times: draw u "
            "from the generator argument, torch.rand(1, generator=generator)"
        )
    if torch.equal(a, c):
        raise CheckFailed(f"{call} gave the same times for different seeds: u must be random")
    for batch_size, time_eps in ((8, 0.1), (16, 1e-3), (1, 0.1), (5, 0.0)):
        width = (1 - time_eps) / batch_size  # the strata: [time_eps + k * width, ... + width)
        first_stratum = 0
        for seed in range(40):
            t, call = _call_times(sample_times, batch_size, seed, time_eps)
            if (t < time_eps - 1e-12).any():
                raise CheckFailed(
                    f"{call} returned {t.min().item():.4f} < time_eps: map a uniform u in [0, 1) "
                    "to [time_eps, 1] with time_eps + (1 - time_eps) * u"
                )
            if (t > 1 + 1e-12).any():
                raise CheckFailed(
                    f"{call} returned {t.max().item():.4f} > 1: take (u + b / B) mod 1 (% 1.0) "
                    "before scaling to [time_eps, 1]"
                )
            strata = ((t - time_eps) / width).floor().clamp(0, batch_size - 1).long()
            if torch.bincount(strata, minlength=batch_size).max() > 1:
                raise CheckFailed(
                    f"{call} put two times in the same stratum (the strata are the {batch_size} "
                    f"equal parts of [time_eps, 1]): independent uniforms do that. Draw ONE "
                    "uniform u for the batch and use (u + b / B) mod 1 for b = 0..B-1"
                )
            gaps = torch.diff(torch.sort(t).values)
            if not torch.allclose(gaps, torch.full_like(gaps, width), atol=1e-6):
                raise CheckFailed(
                    f"{call} puts one time in each stratum but not equally spaced: this check "
                    "expects the course's sampler, one uniform u for the whole batch and "
                    "t_b = time_eps + (1 - time_eps) * ((u + b / B) mod 1)"
                )
            first_stratum += int(strata[0] == 0)
        # t_0 on its own must be uniform: in the first stratum 1/B of the time, not always
        if batch_size > 1 and first_stratum > 40 * (0.5 + 0.5 / batch_size):
            raise CheckFailed(
                f"with batch_size={batch_size}, t[0] fell in the lowest stratum in "
                f"{first_stratum} of 40 calls: your times come out in increasing order, so "
                "t[0] is always small. Use (u + b / B) mod 1 so that every t_b is uniform on "
                "[time_eps, 1] by itself (sequence 0 must not always get the least noise)."
            )
    return (
        "Every batch has exactly one time in each of its B equal strata of [time_eps, 1], and "
        "each t_b on its own is uniform: an unbiased estimate with less variance."
    )


def check_low_discrepancy_times(sample_times: Callable) -> bool:
    """Check sample_times(batch_size, generator, time_eps) -> stratified times (B,)."""
    return run_check(
        "low_discrepancy_times", SOLUTIONS, lambda: _test_low_discrepancy_times(sample_times)
    )


# -- exercise 3 (ablate): drop the weight ---------------------------------------------------------


def _unweighted_case(schedule: diffusion.Schedule) -> tuple[float, float, float]:
    """(the exact denoiser's loss under `schedule`, under the log-linear bound, the entropy)
    in bits per token, on a Markov chain the notebook does not show; same draws for both."""
    from course_lib import synthetic

    source = synthetic.MarkovChain.random(vocab_size=6, length=12, sharpness=2.0, seed=11)
    x0 = source.sample(2048, torch.Generator().manual_seed(5))
    oracle = source.oracle()
    bits = []
    for each in (schedule, "loglinear"):
        generator = torch.Generator().manual_seed(9)
        draws = [
            diffusion.nelbo_per_sequence(oracle, x0, each, generator=generator).mean()
            for _ in range(4)
        ]
        bits.append(torch.stack(draws).mean().item() / math.log(2))
    return bits[0], bits[1], source.entropy_bits_per_token()


def check_unweighted_loss(prediction, schedule) -> bool:
    """Exercise 3 (ablate). `prediction` ("above" or "below"): where the exact denoiser's
    unweighted loss lands against the entropy; `schedule`: the log-linear schedule with its
    weight w(t) replaced by 1 (the BERT-style loss). Both are tried on a hidden source."""

    def test() -> str:
        if prediction is ... or schedule is ...:
            raise NotImplementedError
        if prediction not in ("above", "below"):
            raise CheckFailed(f'prediction should be "above" or "below", got {prediction!r}')
        t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
        try:
            weight = torch.as_tensor(schedule.weight(t), dtype=torch.float64)
            alpha = torch.as_tensor(schedule.alpha(t), dtype=torch.float64)
        except AttributeError as err:
            raise CheckFailed(
                "schedule should be a schedule object (subclass diffusion.LogLinearSchedule "
                f"and override its weight): {err}"
            ) from err
        if not torch.allclose(alpha, 1 - t):
            raise CheckFailed(
                "keep the log-linear schedule's alpha(t) = 1 - t: only the weight changes"
            )
        if not isinstance(schedule.weight(t), torch.Tensor):
            raise CheckFailed(
                "weight(t) should return a tensor shaped like t (the loss multiplies it with "
                "tensors): return torch.ones_like(t), not the number 1"
            )
        if not torch.allclose(weight.expand_as(t), torch.ones_like(t)):
            raise CheckFailed(
                "the ablated weight should be 1 at every t (here w(0.5) = "
                f"{weight.expand_as(t)[24].item():.3g}): return torch.ones_like(t)"
            )
        unweighted, bound, entropy = _unweighted_case(schedule)
        measured = f"{unweighted:.3f} bits per token, against the entropy {entropy:.3f}"
        if prediction != "below":
            raise CheckFailed(
                f"the exact denoiser's unweighted loss is {measured}: below. Masked tokens are "
                "cheap at small t (many neighbours visible) and w(t) = 1/t is what weighs "
                "those times up to make the integral add up to -log p(x0); with w = 1 the "
                "loss is smaller than the bound, so it can pass below the entropy, which no "
                "bound can"
            )
        return (
            f"Measured on a hidden source: unweighted {measured} (the weighted bound: "
            f"{bound:.3f}). A loss that can pass below the entropy bounds nothing: its bits "
            "could not be compared with an AR model's."
        )

    return run_check("unweighted_loss", SOLUTIONS, test)


# -- exercise 1 (derive): the KL of one step at a masked position ---------------------------------


def check_masked_step_kl(fn: Callable) -> bool:
    """Exercise 1 (derive). fn(a, p_clean) -> KL(q || p_theta) in nats at one masked position
    for one reverse step: q reveals the clean token with probability a and keeps the mask
    otherwise; p_theta reveals with the same probability a, drawing the token from its
    categorical, which gives the clean token probability p_clean."""
    cases = [(0.3, 0.25), (0.05, 0.9), (1.0, 0.5), (0.5, 1.0), (0.01, 0.001)]

    def call(a, p):
        try:
            return as_number(fn(a, p), f"fn({a}, {p})")
        except (ZeroDivisionError, ValueError) as err:
            if isinstance(err, CheckFailed):
                raise
            raise CheckFailed(
                f"masked_step_kl({a}, {p}) raised {type(err).__name__}: {err}. With a = 1 the "
                "mask has probability b = 0 under both, and a term whose q is 0 adds nothing "
                "(0 log 0 = 0): leave it out of the sum"
            ) from err

    def test() -> str:
        got = [call(a, p) for a, p in cases]
        want = [a * -math.log(p) for a, p in cases]
        if all(_close(g, w) for g, w in zip(got, want, strict=True)):
            return (
                "KL = a * (-log p_theta(clean token)): the mask terms cancel, and only the "
                "chance of revealing the right token is compared. Summed over the steps, "
                "the a's become the weight w(t) dt of the loss below."
            )
        slips = [
            (
                lambda a, p: -math.log(p),
                "you dropped the factor a: the comparison happens only "
                "when the step reveals the position, which has probability a under both",
            ),
            (lambda a, p: a * -math.log2(p), "the course's KL is in nats: natural log"),
            (
                lambda a, p: a * math.log(p),
                "the sign: KL(q || p) = sum q log(q / p), and q puts "
                "a on the clean token where p_theta puts a * p_clean",
            ),
            (
                lambda a, p: -a * math.log(a * p),
                "inside the log, q / p_theta = a / (a * p_clean): "
                "the a cancels there (both reveal with probability a)",
            ),
            (
                lambda a, p: -(1 - a) * math.log(p),
                "a is the probability of revealing; 1 - a "
                "is staying masked, where both sides agree and cost nothing",
            ),
        ]
        for slip, hint in slips:
            if all(_close(g, slip(a, p)) for g, (a, p) in zip(got, cases, strict=True)):
                raise CheckFailed(hint + ".")
        (a, p), g, w = next(
            (c, g, w) for c, g, w in zip(cases, got, want, strict=True) if not _close(g, w)
        )
        raise CheckFailed(
            f"for a = {a} and p_clean = {p} you returned {g:.6g}, expected {w:.6g}. Write q and "
            "p_theta as two distributions over {each token, the mask} and sum q log(q / p)."
        )

    return run_check("masked_step_kl", SOLUTIONS, test)
