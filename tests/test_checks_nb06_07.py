"""Notebooks 06 and 07's exercise checks: right answers pass, stubs are "not attempted", and
each typical mistake is refused with the hint a TA would give."""

import math

import pytest
import torch
from exercise_helpers import assert_correct, assert_not_attempted, right, stub

from course_lib import checks, sampling, synthetic
from course_lib.checks import CheckFailed
from course_lib.checks.nb07_evaluation import parallel_tv_reference

# -- notebook 06, exercise 1: the unmasking probability -----------------------------------------


def unmask_right(alpha_t, alpha_s):
    return (alpha_s - alpha_t) / (1 - alpha_t)


def unmask_right_tensor(alpha_t, alpha_s):
    alpha_t, alpha_s = torch.tensor(alpha_t), torch.tensor(alpha_s)
    return 1 - (1 - alpha_s) / (1 - alpha_t)


def test_unmask_probability_accepts_right_answers(capsys):
    assert_correct(checks.check_unmask_probability, unmask_right, capsys)
    assert_correct(checks.check_unmask_probability, unmask_right_tensor, capsys)


def test_unmask_probability_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_unmask_probability, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda a_t, a_s: (1 - a_s) / (1 - a_t), "STILL masked"),
        (lambda a_t, a_s: a_s - a_t, "dividing by P\\(masked at t\\)"),
        (lambda a_t, a_s: (a_t - a_s) / (1 - a_t), "negative"),
        (lambda a_t, a_s: a_s, "you returned alpha_s"),
        (lambda a_t, a_s: (a_s - a_t) / (1 - a_s), "not 1 - alpha_s"),
        (lambda a_t, a_s: (a_s - a_t) / a_s, "By Bayes"),
        (lambda a_t, a_s: torch.tensor([a_s, a_t]), "one number"),
    ],
)
def test_unmask_probability_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_unmask_probability(answer)


# -- notebook 06, exercise 2: one reverse step ----------------------------------------------------


def step_right(x_t, probs, p_unmask, mask_id, generator=None):
    u = torch.rand(x_t.shape, dtype=torch.float64, generator=generator)
    proposal = sampling.sample_categorical(probs, generator)
    return torch.where((x_t == mask_id) & (u < p_unmask), proposal, x_t)


def step_right_multinomial(x_t, probs, p_unmask, mask_id, generator=None):
    """Right, drawn differently: torch.multinomial, and tokens only where needed."""
    x_s = x_t.clone()
    unmask = (x_t == mask_id) & (torch.rand(x_t.shape, generator=generator) < p_unmask)
    if unmask.any():
        x_s[unmask] = torch.multinomial(probs[unmask].float(), 1, generator=generator)[:, 0]
    return x_s


def step_resamples_everything(x_t, probs, p_unmask, mask_id, generator=None):
    u = torch.rand(x_t.shape, generator=generator)
    return torch.where(u < p_unmask, sampling.sample_categorical(probs, generator), x_t)


def step_stay_probability(x_t, probs, p_unmask, mask_id, generator=None):
    return step_right(x_t, probs, 1 - p_unmask, mask_id, generator)


def step_unmasks_all(x_t, probs, p_unmask, mask_id, generator=None):
    return step_right(x_t, probs, 1.0, mask_id, generator)


def step_argmax(x_t, probs, p_unmask, mask_id, generator=None):
    u = torch.rand(x_t.shape, generator=generator)
    return torch.where((x_t == mask_id) & (u < p_unmask), probs.argmax(-1), x_t)


def step_one_uniform_per_sequence(x_t, probs, p_unmask, mask_id, generator=None):
    u = torch.rand(x_t.shape[0], 1, generator=generator)  # shared by the positions of a row
    proposal = sampling.sample_categorical(probs, generator)
    return torch.where((x_t == mask_id) & (u < p_unmask), proposal, x_t)


def step_one_uniform_per_position(x_t, probs, p_unmask, mask_id, generator=None):
    u = torch.rand(x_t.shape[1], generator=generator)  # shared by the rows of the batch
    proposal = sampling.sample_categorical(probs, generator)
    return torch.where((x_t == mask_id) & (u < p_unmask), proposal, x_t)


def step_in_place(x_t, probs, p_unmask, mask_id, generator=None):
    x_t[:] = step_right(x_t, probs, p_unmask, mask_id, generator)
    return x_t


def step_uniform_tokens(x_t, probs, p_unmask, mask_id, generator=None):
    return step_right(x_t, torch.ones_like(probs), p_unmask, mask_id, generator)


def step_float_ids(x_t, probs, p_unmask, mask_id, generator=None):
    return step_right(x_t, probs, p_unmask, mask_id, generator).float()


def step_never_unmasks(x_t, probs, p_unmask, mask_id, generator=None):
    return x_t.clone()


def test_reverse_step_accepts_right_answers(capsys):
    assert_correct(checks.check_reverse_step, step_right, capsys)
    assert_correct(checks.check_reverse_step, step_right_multinomial, capsys)


def test_reverse_step_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_reverse_step, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (step_resamples_everything, "carry-over"),
        (step_stay_probability, "STAYING masked"),
        (step_unmasks_all, "unmasked every masked position"),
        (step_never_unmasks, "nothing was unmasked"),
        (step_argmax, "argmax"),
        (step_one_uniform_per_sequence, "one uniform per sequence"),
        (step_one_uniform_per_position, "share it across the batch"),
        (step_in_place, "in place"),
        (step_uniform_tokens, "frequencies do not follow probs"),
        (step_float_ids, "torch.long"),
    ],
)
def test_reverse_step_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_reverse_step(answer)


# -- notebook 06, exercise 3: confidence -----------------------------------------------------------


def confidence_right(probs, kind):
    if kind == "margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    entropy = -torch.special.xlogy(probs, probs).sum(-1)
    return 1 - entropy / math.log(probs.shape[-1])


def _entropy(probs):
    return -torch.special.xlogy(probs, probs).sum(-1)


def confidence_with(*, margin=None, entropy=None):
    """confidence_right with the margin or the entropy answer replaced."""

    def fn(probs, kind):
        if kind == "margin" and margin is not None:
            return margin(probs)
        if kind == "entropy" and entropy is not None:
            return entropy(probs)
        return confidence_right(probs, kind)

    return fn


def test_confidence_accepts_the_right_answer(capsys):
    assert_correct(checks.check_confidence, confidence_right, capsys)


def test_confidence_accepts_the_library(capsys):
    def library(probs, kind):
        return sampling.position_confidence(probs, probs.argmax(-1), kind)

    assert_correct(checks.check_confidence, library, capsys)


def test_confidence_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_confidence, capsys)


def _sorted(probs):
    return torch.sort(probs, dim=-1, descending=True).values


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (confidence_with(margin=lambda p: p.max(-1).values), "the runner-up's"),
        (confidence_with(margin=lambda p: _sorted(p)[..., 1] - _sorted(p)[..., 0]), "negative"),
        (confidence_with(margin=lambda p: _sorted(p)[..., 0] - _sorted(p)[..., -1]), "SECOND"),
        (confidence_with(entropy=_entropy), "the entropy itself"),
        (confidence_with(entropy=lambda p: _entropy(p) / math.log(p.shape[-1])), "opposite"),
        (confidence_with(entropy=lambda p: 1 - _entropy(p)), "normalise the entropy"),
        (
            confidence_with(
                entropy=lambda p: 1 - _entropy(p) / math.log(2) / math.log(p.shape[-1])
            ),
            "bases",
        ),
        (
            confidence_with(
                entropy=lambda p: 1 + (p * torch.log(p)).sum(-1) / math.log(p.shape[-1])
            ),
            "nan",
        ),
        (confidence_with(margin=lambda p: torch.topk(p, 2, dim=-1).values), "shape"),
        (confidence_with(entropy=lambda p: torch.exp(-_entropy(p))), "1 - H\\(p\\) / log\\(V\\)"),
    ],
)
def test_confidence_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_confidence(answer)


# -- notebook 07, exercise 1: perplexity -----------------------------------------------------------


def perplexity_right(log_probs):
    return torch.exp(-log_probs.mean())


def perplexity_right_float(log_probs):
    return math.exp(-log_probs.sum().item() / log_probs.numel())


def test_perplexity_accepts_right_answers(capsys):
    assert_correct(checks.check_perplexity, perplexity_right, capsys)
    assert_correct(checks.check_perplexity, perplexity_right_float, capsys)


def test_perplexity_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_perplexity, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda lp: torch.exp(lp.mean()), "below 1"),
        (lambda lp: -lp.mean(), "cross-entropy in nats"),
        (lambda lp: 2.0 ** (-lp.mean()), "natural logarithms"),
        (lambda lp: torch.exp(-lp.sum()), "SUM"),
        (lambda lp: torch.exp(-lp.mean(1)).mean(), "averaged the perplexities"),
        (lambda lp: torch.exp(-lp.mean(1)), "one perplexity per sample"),
        (lambda lp: torch.exp(-lp.mean(0)).mean(), "exp\\(-mean of all"),
    ],
)
def test_perplexity_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_perplexity(answer)


# -- notebook 07, exercise 2: total variation distance -----------------------------------------


def tv_right(p, q):
    return 0.5 * sum(abs(p.get(x, 0.0) - q.get(x, 0.0)) for x in set(p) | set(q))


def tv_right_via_min(p, q):
    """1 - sum_x min(p, q): the same number, another formula."""
    return 1 - sum(min(p.get(x, 0.0), q.get(x, 0.0)) for x in set(p) | set(q))


def test_tv_distance_accepts_right_answers(capsys):
    assert_correct(checks.check_tv_distance, tv_right, capsys)
    assert_correct(checks.check_tv_distance, tv_right_via_min, capsys)


def test_tv_distance_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_tv_distance, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda p, q: 2 * tv_right(p, q), "twice the total variation"),
        (lambda p, q: 0.5 * sum(abs(p[x] - q.get(x, 0.0)) for x in p), "only over the outcomes"),
        (lambda p, q: sum(abs(p[x] - q.get(x, 0.0)) for x in p), "without the factor 1/2"),
        (
            lambda p, q: max(abs(p.get(x, 0.0) - q.get(x, 0.0)) for x in set(p) | set(q)),
            "EVENTS",
        ),
        (
            lambda p, q: 0.5 * sum(p.get(x, 0.0) - q.get(x, 0.0) for x in set(p) | set(q)),
            "absolute value",
        ),
        (
            lambda p, q: 0.5 * sum((p.get(x, 0.0) - q.get(x, 0.0)) ** 2 for x in set(p) | set(q)),
            "every outcome of either",
        ),
    ],
)
def test_tv_distance_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_tv_distance(answer)


# -- notebook 07, exercise 3: what parallel decoding loses -------------------------------------


def parallel_right(vocab_size, n_pairs, steps):
    return 1 - (1 - (1 - 1 / vocab_size) / steps) ** n_pairs


def test_parallel_tv_accepts_the_right_answer(capsys):
    assert_correct(checks.check_parallel_tv, parallel_right, capsys)


def test_parallel_tv_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_parallel_tv, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda V, K, S: 1 - (1 - 1 / S) ** K, "still agree"),
        (lambda V, K, S: (1 - 1 / V) / S, "ONE given pair"),
        (lambda V, K, S: K * (1 - 1 / V) / S, "union bound"),
        (lambda V, K, S: 1 - (1 - (1 - 1 / V) / S**2) ** K, "not 1/steps\\^2"),
        (lambda V, K, S: 1 - (1 - 1 / (V * S)) ** K, "not 1/V"),
        (lambda V, K, S: (1 - (1 - 1 / V) / S) ** K, "NO pair breaks"),
        (lambda V, K, S: 1 - (1 - 1 / V) ** K, "expected"),
    ],
)
def test_parallel_tv_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_parallel_tv(answer)


def test_parallel_tv_formula_matches_the_sampler():
    """The reference formula is what the library's ancestral sampler does with the oracle."""
    source = synthetic.RepeatedPairs(vocab_size=3, length=4)
    n = 20_000
    for steps in (1, 3):
        result = sampling.sample_diffusion(
            source.oracle(),
            length=4,
            steps=steps,
            batch_size=n,
            generator=torch.Generator().manual_seed(steps),
        )
        broken = (source.log_prob(result.tokens) == float("-inf")).double().mean().item()
        expected = parallel_tv_reference(3, 2, steps)
        assert abs(broken - expected) < 5 * math.sqrt(expected * (1 - expected) / n)


# -- notebook 07, exercise 4 (predict, then run) ---------------------------------------------


def test_the_calls_prediction_matches_the_exact_expectation(capsys):
    from course_lib.checks.nb06_sampling import expected_cached_calls

    assert expected_cached_calls(4, 1) == pytest.approx(1.0)
    assert expected_cached_calls(4, 128) == pytest.approx(3.953, abs=1e-3)  # the notebook's 3.95
    assert right(checks.check_calls_prediction(4))
    assert "3.95" in capsys.readouterr().out
    assert not checks.check_calls_prediction(...)
    for guess, hint in ((128, "uncached"), (2, "distinct steps"), (5, "never more than one")):
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_calls_prediction(guess)


# -- notebook 06, exercise 4 (debug): the cached sampler ----------------------------------------


def _fixed_cached(denoiser, x, alphas, mask_id, generator):  # the library's cached sampler
    out, nfe, _ = sampling.ancestral_steps(
        denoiser, x, alphas, mask_id, 1.0, generator, cached=True, trajectory=None
    )
    return out, nfe


def _uncached(denoiser, x, alphas, mask_id, generator):  # the same numbers, a call every step
    out, nfe, _ = sampling.ancestral_steps(
        denoiser, x, alphas, mask_id, 1.0, generator, cached=False, trajectory=None
    )
    return out, nfe


def _colleagues(denoiser, x, alphas, mask_id, generator):
    """Notebook 06's planted bug: the whole step sits under the cache's `if`."""
    probs, changed, nfe = None, True, 0
    for j in range(len(alphas) - 1):
        masked = x == mask_id
        if not masked.any():
            break
        if probs is None or changed:
            probs = sampling.logits_to_probs(denoiser(x), 1.0)
            nfe += 1
            p_unmask = sampling.reveal_probability(alphas, j)
            u = torch.rand(x.shape, dtype=torch.float64, generator=generator)
            proposal = sampling.sample_categorical(probs, generator)
            unmask = masked & (u < p_unmask)
            x = torch.where(unmask, proposal, x)
            changed = bool(unmask.any())
    return x, nfe


def _skips_draws(denoiser, x, alphas, mask_id, generator):
    probs, changed, nfe = None, True, 0
    for j in range(len(alphas) - 1):
        masked = x == mask_id
        if not masked.any():
            break
        if probs is None or changed:
            probs = sampling.logits_to_probs(denoiser(x), 1.0)
            nfe += 1
            proposal = sampling.sample_categorical(probs, generator)
        u = torch.rand(x.shape, dtype=torch.float64, generator=generator)
        unmask = masked & (u < sampling.reveal_probability(alphas, j))
        x = torch.where(unmask, proposal, x)
        changed = bool(unmask.any())
    return x, nfe


def test_the_fixed_cached_sampler_passes_and_each_planted_slip_is_named(capsys):
    assert right(checks.check_cached_sampler_fix(_fixed_cached))
    assert "never the samples" in capsys.readouterr().out
    assert not checks.check_cached_sampler_fix(stub)
    for wrong, hint in (
        (_colleagues, "still masked"),
        (_uncached, "never skips"),
        (_skips_draws, "never the random numbers"),
    ):
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_cached_sampler_fix(wrong)


def test_the_derived_expected_calls_pass_and_slips_get_their_hint(capsys):
    from course_lib.checks.nb06_sampling import expected_cached_calls

    assert right(checks.check_expected_calls(expected_cached_calls))
    assert "By linearity" in capsys.readouterr().out
    assert not checks.check_expected_calls(stub)
    for wrong, hint in (
        (min, "the most there can be"),
        (lambda n, s: s * (1 - 1 / s) ** n, "reveal NOTHING"),
        (lambda n, s: n * (1 - (1 - 1 / n) ** s), "swapped"),
        (lambda n, s: 3.0, "step by step"),
    ):
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_expected_calls(wrong)
