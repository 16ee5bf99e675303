"""Notebooks 04 and 05's exercise checks: right answers pass, stubs are "not attempted", and
each typical mistake is refused with the hint a TA would give."""

import math

import pytest
import torch
import torch.nn.functional as F
from exercise_helpers import assert_correct, assert_not_attempted, not_yet, right, stub

from course_lib import checks, diffusion
from course_lib.checks import CheckFailed

# -- notebook 04, exercise 1: the cosine schedule ---------------------------------------------


def alpha_right(t):
    return torch.cos(math.pi / 2 * t)


def alpha_prime_right(t):
    return -(math.pi / 2) * torch.sin(math.pi / 2 * t)


def test_cosine_schedule_accepts_right_answers(capsys):
    assert right(checks.check_cosine_schedule(alpha_right, alpha_prime_right))
    schedule = diffusion.CosineSchedule()
    assert right(checks.check_cosine_schedule(schedule.alpha, schedule.alpha_prime))
    out = capsys.readouterr().out
    assert out.count("correct") == 2 and "1.2%" in out


@pytest.mark.parametrize(
    ("alpha", "alpha_prime"), [(stub, stub), (alpha_right, stub), (stub, alpha_prime_right)]
)
def test_cosine_schedule_stub_is_not_attempted(alpha, alpha_prime, capsys):
    assert not_yet(checks.check_cosine_schedule(alpha, alpha_prime))
    out = capsys.readouterr().out
    assert "not attempted yet" in out and "04_forward_process_solutions" in out


@pytest.mark.parametrize(
    ("alpha", "alpha_prime", "hint"),
    [
        (lambda t: 1 - alpha_right(t), alpha_prime_right, "probability that a token is MASKED"),
        (lambda t: torch.sin(math.pi / 2 * t), alpha_prime_right, "not the sine"),
        (lambda t: torch.cos(math.pi * t), alpha_prime_right, r"cos\(pi t / 2\)"),
        (torch.cos, alpha_prime_right, "scale the time"),
        (lambda t: torch.exp(-t), alpha_prime_right, "at t = "),
        (lambda t: math.cos(math.pi / 2 * t), alpha_prime_right, "torch functions"),
        (lambda t: alpha_right(t)[:-1], alpha_prime_right, "one value per time"),
        (lambda t: alpha_right(t).tolist(), alpha_prime_right, r"torch.cos, not math.cos"),
        (alpha_right, lambda t: -alpha_prime_right(t), "sign is flipped"),
        (alpha_right, lambda t: -torch.sin(math.pi / 2 * t), "chain rule"),
        (alpha_right, lambda t: torch.sin(math.pi / 2 * t), "chain rule"),
        (alpha_right, lambda t: -(math.pi / 2) * torch.cos(math.pi / 2 * t), "not -cos"),
        (alpha_right, lambda t: -torch.ones_like(t), "expected -"),
    ],
)
def test_cosine_schedule_mistakes_get_their_hint(alpha, alpha_prime, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_cosine_schedule(alpha, alpha_prime)


# -- notebook 04, exercise 2: corrupt ---------------------------------------------------------


def _time(t, x0):
    t = torch.as_tensor(t, dtype=torch.float64)
    return t[:, None] if t.dim() == 1 else t  # (B, 1) or a scalar


def corrupt_right(x0, t, alpha, mask_id, generator=None):
    t = _time(t, x0)
    u = torch.rand(x0.shape, generator=generator)
    return torch.where(u < 1 - alpha(t), mask_id, x0)


def corrupt_bernoulli(x0, t, alpha, mask_id, generator=None):
    p = (1 - alpha(_time(t, x0))).expand(x0.shape).float()
    return x0.masked_fill(torch.bernoulli(p, generator=generator).bool(), mask_id)


def corrupt_library(x0, t, alpha, mask_id, generator=None):
    """The library's corrupt under a schedule whose alpha is the one given."""

    class Given(diffusion.Schedule):
        def alpha(self, s):
            return alpha(diffusion.as_time(s))

    return diffusion.corrupt(x0, t, Given(), mask_id=mask_id, generator=generator)


def corrupt_keep_with_one_minus_alpha(x0, t, alpha, mask_id, generator=None):
    u = torch.rand(x0.shape, generator=generator)
    return torch.where(u < alpha(_time(t, x0)), mask_id, x0)


def corrupt_with_t(x0, t, alpha, mask_id, generator=None):
    u = torch.rand(x0.shape, generator=generator, dtype=torch.float64)
    return torch.where(u < _time(t, x0), mask_id, x0)


def corrupt_random_tokens(x0, t, alpha, mask_id, generator=None):
    u = torch.rand(x0.shape, generator=generator)
    noise = torch.randint(0, mask_id, x0.shape, generator=generator)
    return torch.where(u < 1 - alpha(_time(t, x0)), noise, x0)


def corrupt_whole_sequences(x0, t, alpha, mask_id, generator=None):
    u = torch.rand(x0.shape[0], 1, generator=generator)
    return torch.where(u < 1 - alpha(_time(t, x0)), mask_id, x0)


def corrupt_same_pattern(x0, t, alpha, mask_id, generator=None):
    u = torch.rand(x0.shape[1], generator=generator)
    return torch.where(u < 1 - alpha(_time(t, x0)), mask_id, x0)


def corrupt_fixed_count(x0, t, alpha, mask_id, generator=None):
    B, L = x0.shape
    p = (1 - alpha(_time(t, x0))).expand(B, 1)
    k = (p * L).round().long()  # (B, 1) masks per sequence
    ranks = torch.rand(B, L, generator=generator).argsort(dim=1).argsort(dim=1)
    return torch.where(ranks < k, mask_id, x0)


def corrupt_no_broadcast(x0, t, alpha, mask_id, generator=None):
    t = torch.as_tensor(t, dtype=torch.float64)  # (B,) meets (B, L) along the wrong axis
    u = torch.rand(x0.shape, generator=generator)
    return torch.where(u < 1 - alpha(t), mask_id, x0)


def corrupt_in_place(x0, t, alpha, mask_id, generator=None):
    u = torch.rand(x0.shape, generator=generator)
    return x0.masked_fill_(u < 1 - alpha(_time(t, x0)), mask_id)


def corrupt_global_rng(x0, t, alpha, mask_id, generator=None):
    return corrupt_right(x0, t, alpha, mask_id, generator=None)


def corrupt_float_ids(x0, t, alpha, mask_id, generator=None):
    return corrupt_right(x0, t, alpha, mask_id, generator).float()


def corrupt_reseeded(x0, t, alpha, mask_id, generator=None):
    return corrupt_right(x0, t, alpha, mask_id, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("answer", [corrupt_right, corrupt_bernoulli, corrupt_library])
def test_corrupt_accepts_right_answers(answer, capsys):
    assert_correct(checks.check_corrupt, answer, capsys)


def test_corrupt_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_corrupt, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (corrupt_keep_with_one_minus_alpha, "probability of KEEPING a token"),
        (corrupt_with_t, "only for the log-linear"),
        (corrupt_random_tokens, "not by the mask id"),
        (corrupt_whole_sequences, "whole sequences"),
        (corrupt_same_pattern, "same mask pattern"),
        (corrupt_fixed_count, "binomial"),
        (corrupt_no_broadcast, r"t\[:, None\]"),
        (corrupt_in_place, "in place"),
        (corrupt_global_rng, "generator argument"),
        (corrupt_float_ids, "torch.long"),
        (corrupt_reseeded, "different seeds"),
    ],
)
def test_corrupt_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_corrupt(answer)


# -- notebook 05, exercise 1: the loss of one batch -------------------------------------------


def _masked_nll(denoiser, x0, x_t, mask_id):
    log_probs = F.log_softmax(denoiser(x_t), dim=-1)  # (B, L, V)
    nll = -log_probs.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
    return nll * (x_t == mask_id), nll


def loss_right(denoiser, x0, x_t, t, schedule, mask_id):
    masked_nll, _ = _masked_nll(denoiser, x0, x_t, mask_id)
    weight = -schedule.alpha_prime(t) / (1 - schedule.alpha(t))  # (B,)
    return (weight * masked_nll.sum(dim=1) / x0.shape[1]).mean()


def loss_right_cross_entropy(denoiser, x0, x_t, t, schedule, mask_id):
    """With F.cross_entropy and schedule.weight, broadcasting the weight per token."""
    logits = denoiser(x_t)
    nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # (B, L)
    weighted = schedule.weight(t)[:, None] * torch.where(x_t == mask_id, nll, 0.0)
    return weighted.mean()


def loss_one_over_t(denoiser, x0, x_t, t, schedule, mask_id):
    masked_nll, _ = _masked_nll(denoiser, x0, x_t, mask_id)
    return (masked_nll.sum(dim=1) / t / x0.shape[1]).mean()


def loss_all_positions(denoiser, x0, x_t, t, schedule, mask_id):
    _, nll = _masked_nll(denoiser, x0, x_t, mask_id)
    return (schedule.weight(t) * nll.sum(dim=1) / x0.shape[1]).mean()


def loss_masked_mean(denoiser, x0, x_t, t, schedule, mask_id):
    masked_nll, _ = _masked_nll(denoiser, x0, x_t, mask_id)
    n_masked = (x_t == mask_id).sum(dim=1).clamp(min=1)
    return (schedule.weight(t) * masked_nll.sum(dim=1) / n_masked).mean()


def loss_masked_mean_batch(denoiser, x0, x_t, t, schedule, mask_id):
    masked_nll, _ = _masked_nll(denoiser, x0, x_t, mask_id)
    return (schedule.weight(t)[:, None] * masked_nll).sum() / (x_t == mask_id).sum()


def loss_unweighted(denoiser, x0, x_t, t, schedule, mask_id):
    masked_nll, _ = _masked_nll(denoiser, x0, x_t, mask_id)
    return masked_nll.mean()


def loss_plain_masked_cross_entropy(denoiser, x0, x_t, t, schedule, mask_id):
    masked = x_t == mask_id
    return F.cross_entropy(denoiser(x_t)[masked], x0[masked])


def loss_sigma_rate(denoiser, x0, x_t, t, schedule, mask_id):
    masked_nll, _ = _masked_nll(denoiser, x0, x_t, mask_id)
    weight = -schedule.alpha_prime(t) / schedule.alpha(t)
    return (weight * masked_nll.sum(dim=1) / x0.shape[1]).mean()


def loss_on_clean_input(denoiser, x0, x_t, t, schedule, mask_id):
    return loss_right(lambda ids: denoiser(x0), x0, x_t, t, schedule, mask_id)


def loss_in_bits(*args):
    return loss_right(*args) / math.log(2)


def loss_negative(*args):
    return -loss_right(*args)


def loss_summed_over_batch(*args):
    return loss_right(*args) * args[1].shape[0]


def loss_summed_over_positions(*args):
    return loss_right(*args) * args[1].shape[1]


def loss_targets_from_x_t(denoiser, x0, x_t, t, schedule, mask_id):
    return loss_right(denoiser, x_t, x_t, t, schedule, mask_id)


def loss_no_broadcast(denoiser, x0, x_t, t, schedule, mask_id):
    masked_nll, _ = _masked_nll(denoiser, x0, x_t, mask_id)
    return (schedule.weight(t) * masked_nll).mean()  # (B,) against (B, L)


def loss_item(*args):
    return loss_right(*args).item()


def loss_detached(*args):
    return loss_right(*args).detach()


def loss_per_sequence(denoiser, x0, x_t, t, schedule, mask_id):
    masked_nll, _ = _masked_nll(denoiser, x0, x_t, mask_id)
    return schedule.weight(t) * masked_nll.sum(dim=1) / x0.shape[1]


@pytest.mark.parametrize("answer", [loss_right, loss_right_cross_entropy])
def test_diffusion_loss_accepts_right_answers(answer, capsys):
    assert right(checks.check_diffusion_loss(answer))
    out = capsys.readouterr().out
    assert "correct" in out and "(loglinear)" in out and "(cosine)" in out


def test_diffusion_loss_stub_is_not_attempted(capsys):
    assert not_yet(checks.check_diffusion_loss(stub))
    out = capsys.readouterr().out
    assert "not attempted yet" in out and "05_training_diffusion_solutions" in out


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (loss_one_over_t, "you weighted by 1/t"),
        (loss_all_positions, "you also counted unmasked positions"),
        (loss_masked_mean, "you averaged over masked tokens only"),
        (loss_masked_mean_batch, "you averaged over masked tokens only"),
        (loss_unweighted, "you left out the weight"),
        (loss_plain_masked_cross_entropy, "plain cross-entropy of the masked tokens"),
        (loss_sigma_rate, "you divided by alpha"),
        (loss_on_clean_input, "denoiser on the clean x0"),
        (loss_in_bits, "in bits"),
        (loss_negative, "negative"),
        (loss_summed_over_batch, "summed over the batch"),
        (loss_summed_over_positions, "without dividing by L"),
        (loss_targets_from_x_t, "targets are the clean tokens"),
        (loss_no_broadcast, r"shape \(B, 1\)"),
        (loss_item, "no .item()"),
        (loss_detached, "no gradient"),
        (loss_per_sequence, "return one number"),
    ],
)
def test_diffusion_loss_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_diffusion_loss(answer)


# -- notebook 05, exercise 2: low-discrepancy times -------------------------------------------


def times_right(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    u = torch.rand(1, generator=generator, dtype=torch.float64)
    u = (u + torch.arange(batch_size, dtype=torch.float64) / batch_size) % 1.0
    return time_eps + (1 - time_eps) * u


def times_library(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    return diffusion.sample_times(batch_size, time_eps=time_eps, generator=generator)


def times_float32(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    u = torch.rand(1, generator=generator)
    return time_eps + (1 - time_eps) * ((u + torch.arange(batch_size) / batch_size) % 1.0)


def times_independent(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    return time_eps + (1 - time_eps) * u


def times_no_eps(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    return times_right(batch_size, generator, 0.0)


def times_eps_added(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    return time_eps + times_right(batch_size, generator, 0.0)


def times_no_mod(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    u = torch.rand(1, generator=generator, dtype=torch.float64)
    return time_eps + (1 - time_eps) * (u + torch.arange(batch_size) / batch_size)


def times_sorted(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    u = torch.rand(1, generator=generator, dtype=torch.float64)
    return time_eps + (1 - time_eps) * (u + torch.arange(batch_size)) / batch_size


def times_per_stratum(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    return time_eps + (1 - time_eps) * (u + torch.arange(batch_size)) / batch_size


def times_global_rng(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    return times_right(batch_size, None, time_eps)


def times_deterministic(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    return time_eps + (1 - time_eps) * (torch.arange(batch_size) + 0.5) / batch_size


def times_one_per_batch(batch_size, generator=None, time_eps=diffusion.TIME_EPS):
    return times_right(batch_size, generator, time_eps)[0]


@pytest.mark.parametrize("answer", [times_right, times_library, times_float32])
def test_times_accept_right_answers(answer, capsys):
    assert_correct(checks.check_low_discrepancy_times, answer, capsys)


def test_times_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_low_discrepancy_times, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (times_independent, "same stratum"),
        (times_no_eps, "< time_eps"),
        (times_eps_added, "> 1"),
        (times_no_mod, "> 1"),
        (times_sorted, "increasing order"),
        (times_per_stratum, "not equally spaced"),
        (times_global_rng, "generator argument"),
        (times_deterministic, "different seeds"),
        (times_one_per_batch, "one time per sequence"),
    ],
)
def test_times_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_low_discrepancy_times(answer)


def test_the_loss_check_compares_with_the_library():
    """The check's reference is masked_diffusion_loss drawing the very same t and x_t."""
    from course_lib.checks import nb05_training_diffusion as nb05

    denoiser = nb05._StandIn()
    for name in ("loglinear", "cosine"):
        schedule = diffusion.get_schedule(name)
        x0, t, x_t = nb05._draw(schedule, seed=3)
        library = diffusion.masked_diffusion_loss(
            denoiser,
            x0,
            schedule,
            mask_id=5,
            generator=torch.Generator().manual_seed(3),
            time_eps=0.0,
        )
        ours = loss_right(denoiser, x0, x_t, t, schedule, 5)
        assert torch.allclose(library, ours, rtol=1e-12)
        assert (x_t == 5).any() and (x_t != 5).any()  # both kinds of position are present


# -- notebook 05, exercise 2 (ablate) and exercise 3 (derive) ---------------------------------


class _Unweighted(diffusion.LogLinearSchedule):
    def weight(self, t):
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))


def test_the_unweighted_loss_ablation_needs_the_right_schedule_and_prediction(capsys):
    assert right(checks.check_unweighted_loss("below", _Unweighted()))
    out = capsys.readouterr().out
    assert "against the entropy" in out and "weighted bound" in out
    assert not checks.check_unweighted_loss(..., ...)
    with pytest.raises(checks.CheckFailed, match="below"):
        checks.check_unweighted_loss("above", _Unweighted())
    with pytest.raises(checks.CheckFailed, match="weight should be 1"):
        checks.check_unweighted_loss("below", diffusion.LogLinearSchedule())
    with pytest.raises(checks.CheckFailed, match="alpha"):
        checks.check_unweighted_loss("below", diffusion.CosineSchedule())
    with pytest.raises(checks.CheckFailed, match='"above" or "below"'):
        checks.check_unweighted_loss("lower", _Unweighted())


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda a, p: -math.log(p), "dropped the factor a"),
        (lambda a, p: a * -math.log2(p), "nats"),
        (lambda a, p: a * math.log(p), "the sign"),
        (lambda a, p: -a * math.log(a * p), "the a cancels"),
        (lambda a, p: -(1 - a) * math.log(p), "staying masked"),
        (lambda a, p: 1.0, "sum q log"),
    ],
)
def test_a_wrong_masked_step_kl_gets_its_hint(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_masked_step_kl(wrong)


def test_the_masked_step_kl_is_the_reveal_probability_times_a_cross_entropy(capsys):
    assert right(checks.check_masked_step_kl(lambda a, p: -a * math.log(p)))
    assert "mask terms cancel" in capsys.readouterr().out
    assert not checks.check_masked_step_kl(stub)


# -- notebook 04, exercise 2 (derive) and exercise 4 (predict, then run) ----------------------


def test_the_half_masked_time_and_its_slips(capsys):
    assert right(checks.check_half_masked_time(2 / 3))
    assert "t = 2/3" in capsys.readouterr().out
    assert not checks.check_half_masked_time(...)
    for value, hint in ((0.5, "log-linear"), (math.pi / 3, "solve for t"), (0.8, "69.1%")):
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_half_masked_time(value)


def test_the_mask_count_prediction_and_its_slips(capsys):
    assert right(checks.check_mask_count_prediction(5.5, 5.65))
    assert "binomial" in capsys.readouterr().out
    assert not checks.check_mask_count_prediction(..., 5.65)
    for value, hint in (
        (0, "the count varies"),
        (64, "mean count"),
        (8, "Poisson"),
        (3, "variance"),
    ):
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_mask_count_prediction(value, 5.65)


def test_natural_slips_in_exercises_1_and_3_get_a_hint_not_a_crash():
    def full_sum(a, p):  # the literal sum over {clean token, mask}: 0 log 0 at a = 1
        b = 1 - a
        return a * math.log(a / (a * p)) + b * math.log(b / b)

    with pytest.raises(checks.CheckFailed, match="0 log 0 = 0"):
        checks.check_masked_step_kl(full_sum)

    class WeightOne(diffusion.LogLinearSchedule):
        def weight(self, t):
            return 1

    with pytest.raises(checks.CheckFailed, match="ones_like"):
        checks.check_unweighted_loss("below", WeightOne())
