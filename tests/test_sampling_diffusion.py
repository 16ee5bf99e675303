"""course_lib.sampling's diffusion samplers, checked against exact oracles."""

import itertools
import math

import pytest
import torch

from course_lib import diffusion, synthetic
from course_lib.model import ModelConfig, Transformer
from course_lib.sampling import gumbel_max_sample, sample_diffusion

STRATEGIES = ["ancestral", "ancestral_cached", "confidence", "threshold"]


def sequence_frequencies(tokens, vocab_size):
    """Empirical distribution over all V^L sequences (base-V index)."""
    L = tokens.shape[1]
    powers = vocab_size ** torch.arange(L - 1, -1, -1)
    counts = torch.bincount((tokens * powers).sum(1), minlength=vocab_size**L).double()
    return counts / len(tokens)


def tv(p, q):
    return 0.5 * (p - q).abs().sum().item()


# -- the ancestral sampler reproduces the joint, and one step the product of marginals ------


@pytest.fixture(scope="module")
def chain_laws():
    """A sticky 3-state chain of length 4: its joint and its product of marginals."""
    chain = synthetic.MarkovChain(
        torch.tensor([[0.8, 0.1, 0.1], [0.15, 0.7, 0.15], [0.1, 0.2, 0.7]]), 4
    )
    seqs = torch.tensor(list(itertools.product(range(3), repeat=4)))
    joint = chain.log_prob(seqs).exp()  # (81,)
    product = chain.stationary[seqs].prod(1)  # every position's marginal is pi
    return chain, joint, product


def test_ancestral_reproduces_the_joint_and_one_step_the_product(chain_laws):
    """Ancestral sampling with exact conditionals is exact except when two tokens unmask in
    the same step (then they are drawn independently). For the log-linear schedule each
    token's unmasking step is uniform over the steps, so that happens with the birthday
    probability: TV(sampler, joint) <= 1 - prod_k (1 - k / steps). The threshold is that bound
    plus twice the expected TV of an exact sampler with n draws; the product of marginals
    (what one step gives) is far above it."""
    chain, joint, product = chain_laws
    n, L, steps = 20_000, 4, 256
    collision = 1 - math.prod(1 - k / steps for k in range(L))  # 0.023
    noise = 0.5 * math.sqrt(2 / (math.pi * n)) * joint.sqrt().sum().item()  # 0.017
    threshold = collision + 2 * noise
    assert tv(product, joint) > 3 * threshold  # the test can tell the two laws apart

    many = sample_diffusion(
        chain.oracle(),
        length=L,
        steps=steps,
        batch_size=n,
        generator=torch.Generator().manual_seed(0),
    )
    freq = sequence_frequencies(many.tokens, 3)
    assert tv(freq, joint) < threshold, (tv(freq, joint), threshold)
    assert tv(freq, product) > threshold

    one = sample_diffusion(
        chain.oracle(), length=L, steps=1, batch_size=n, generator=torch.Generator().manual_seed(1)
    )
    freq = sequence_frequencies(one.tokens, 3)
    product_noise = 0.5 * math.sqrt(2 / (math.pi * n)) * product.sqrt().sum().item()
    assert tv(freq, product) < 2 * product_noise
    assert tv(freq, joint) > threshold


@pytest.mark.parametrize("name", ["loglinear", "cosine"])
@pytest.mark.parametrize("steps", [1, 8, 64])
def test_ancestral_pair_agreement_follows_the_exact_law(name, steps):
    """For RepeatedPairs with the oracle, a pair disagrees only if both tokens unmask in the
    same step (then each is uniform): P(agree) = 1 - c (1 - 1/V), c = sum_j p_j^2, where
    p_j = alpha(s_j) - alpha(t_j) is the chance a token unmasks at step j. steps=1 gives the
    product of marginals (c = 1); steps = L = 8 is already close to the joint."""
    V, L, n = 4, 8, 4000
    pairs = synthetic.RepeatedPairs(V, L)
    schedule = diffusion.get_schedule(name)
    p = schedule.alpha(schedule.time_grid(steps)).diff()  # (steps,)
    expected = 1 - (p**2).sum().item() * (1 - 1 / V)
    out = sample_diffusion(
        pairs.oracle(),
        length=L,
        steps=steps,
        batch_size=n,
        schedule=name,
        generator=torch.Generator().manual_seed(steps),
    )
    agree = (out.tokens[:, 0::2] == out.tokens[:, 1::2]).double()
    se = math.sqrt(expected * (1 - expected) / agree.numel())
    assert abs(agree.mean().item() - expected) < 4 * se, (agree.mean().item(), expected)


# -- caching changes no output, only the number of calls -------------------------------------


def test_cached_ancestral_gives_the_same_tokens_with_fewer_calls():
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(
            vocab_size=7, context_len=12, n_layer=1, n_head=2, d_model=32, attention="bidirectional"
        )
    )
    for seed, steps in [(0, 48), (1, 100), (2, 12)]:
        runs = {
            strategy: sample_diffusion(
                model,
                length=12,
                steps=steps,
                batch_size=2,
                strategy=strategy,
                temperature=0.8,
                generator=torch.Generator().manual_seed(seed),
            )
            for strategy in ("ancestral", "ancestral_cached")
        }
        plain, cached = runs["ancestral"], runs["ancestral_cached"]
        assert torch.equal(plain.tokens, cached.tokens)
        assert plain.steps_taken == cached.steps_taken and plain.nfe == plain.steps_taken
        if steps > 12:
            assert cached.nfe < plain.nfe
        assert cached.nfe <= plain.nfe
    # with an oracle, count the calls on the denoiser's side too
    oracle = synthetic.RepeatedPairs(4, 8).oracle()
    out = sample_diffusion(oracle, length=8, steps=64, strategy="ancestral_cached")
    assert oracle.calls == out.nfe <= 8 + 1  # at most one call per change, plus the first


# -- confidence and threshold: at least one token per step, never more than `steps` ----------


@pytest.mark.parametrize("strategy", ["confidence", "threshold"])
@pytest.mark.parametrize("kind", ["low_confidence", "margin", "entropy"])
def test_confidence_strategies_commit_and_terminate(strategy, kind):
    chain = synthetic.MarkovChain.random(4, 10, seed=0)
    thresholds = [0.0, 0.5, 0.9, 1.0] if strategy == "threshold" else [None]
    for steps, threshold in itertools.product([1, 3, 10, 25], thresholds):
        out = sample_diffusion(
            chain.oracle(),
            length=10,
            steps=steps,
            batch_size=3,
            strategy=strategy,
            confidence=kind,
            threshold=threshold,
            record=True,
            generator=torch.Generator().manual_seed(steps),
        )
        masks = torch.stack([(x == chain.mask_id).sum(1) for x in out.trajectory])  # (T+1, B)
        assert (masks[-1] == 0).all() and (out.tokens < 4).all()
        assert out.nfe == out.steps_taken == len(out.trajectory) - 1 <= min(steps, 10)
        still = masks[:-1] > 0
        assert ((masks[:-1] - masks[1:])[still] >= 1).all()  # >= 1 committed per step
        assert out.tokens_per_step == pytest.approx(10 / out.steps_taken)


@pytest.mark.parametrize(
    ("name", "left"), [("loglinear", [8, 6, 4, 2, 0]), ("cosine", [8, 5, 2, 1, 0])]
)
def test_confidence_follows_the_schedule(name, left):
    """After the step to time s, round(N (1 - alpha(s))) masks are left."""
    out = sample_diffusion(
        synthetic.MarkovChain.random(4, 8).oracle(),
        length=8,
        steps=4,
        strategy="confidence",
        schedule=name,
        record=True,
    )
    assert [int((x == 4).sum()) for x in out.trajectory] == left


def test_threshold_one_is_confidence_and_threshold_zero_is_one_step():
    chain = synthetic.MarkovChain.random(4, 10, seed=1)
    kwargs = dict(length=10, steps=10, batch_size=4)
    runs = [
        sample_diffusion(
            chain.oracle(), generator=torch.Generator().manual_seed(0), **kwargs, **extra
        )
        for extra in (dict(strategy="confidence"), dict(strategy="threshold", threshold=1.0))
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens) and runs[0].nfe == runs[1].nfe == 10
    loose = sample_diffusion(chain.oracle(), strategy="threshold", threshold=0.0, **kwargs)
    assert loose.nfe == 1 and loose.tokens_per_step == 10


def test_threshold_is_strict_and_commits_every_certain_position():
    """With one token of each pair given, every masked partner is certain (probability
    exactly 1): a threshold just below 1 commits them all at once, threshold=1.0 (nothing
    *exceeds* 1) still decodes like "confidence", one token per step."""
    pairs = synthetic.RepeatedPairs(4, 10)
    m = pairs.mask_id
    prompt = torch.tensor([0, m, m, 1, 2, m, m, 3, 1, m])
    kwargs = dict(length=10, steps=10, prompt=prompt)
    runs = [
        sample_diffusion(
            pairs.oracle(), generator=torch.Generator().manual_seed(0), **kwargs, **extra
        )
        for extra in (dict(strategy="confidence"), dict(strategy="threshold", threshold=1.0))
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens) and runs[0].nfe == runs[1].nfe == 5
    fast = sample_diffusion(pairs.oracle(), strategy="threshold", threshold=0.999, **kwargs)
    assert fast.nfe == 1 and fast.tokens.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 1, 1]]


def test_confidence_commits_the_most_confident_position_first():
    V, L, sure = 5, 6, 3

    def denoiser(ids):  # certain about position 3 (token 2), unsure elsewhere
        logits = torch.randn(ids.shape[0], L, V, generator=torch.Generator().manual_seed(0)) * 0.1
        logits[:, sure] = torch.tensor([0.0, 0.0, 20.0, 0.0, 0.0])
        return logits

    for kind in ("low_confidence", "margin", "entropy"):
        out = sample_diffusion(
            denoiser,
            length=L,
            steps=L,
            strategy="confidence",
            confidence=kind,
            mask_id=V,
            record=True,
            generator=torch.Generator().manual_seed(0),
        )
        first = out.trajectory[1][0]
        assert (first != V).nonzero().flatten().tolist() == [sure] and first[sure] == 2


# -- prompts, temperature ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_prefix_prompt_and_infilling(strategy):
    pairs = synthetic.RepeatedPairs(6, 8)
    m = pairs.mask_id
    prefix = torch.tensor([5, 5, 1])
    out = sample_diffusion(
        pairs.oracle(), length=8, steps=8, batch_size=3, strategy=strategy, prompt=prefix
    )
    assert (out.tokens[:, :3] == prefix).all() and (out.tokens[:, 3] == 1).all()
    assert out.n_generated == 3 * 5
    template = torch.tensor([[2, m, m, 4, m, m, m, 0], [m, 3, m, m, m, m, 1, m]])
    out = sample_diffusion(
        pairs.oracle(), length=8, steps=8, batch_size=2, strategy=strategy, prompt=template
    )
    given = template != m
    assert torch.equal(out.tokens[given], template[given])
    # the exact conditionals force each given token's partner
    assert out.tokens[0, :4].tolist() == [2, 2, 4, 4] and out.tokens[0, 6:].tolist() == [0, 0]
    assert out.tokens[1, :2].tolist() == [3, 3] and out.tokens[1, 6:].tolist() == [1, 1]
    full = sample_diffusion(pairs.oracle(), length=4, steps=4, prompt=torch.tensor([1, 1, 2, 2]))
    assert full.nfe == 0 and full.tokens_per_step == 0.0 and full.tokens.tolist() == [[1, 1, 2, 2]]


def test_temperature_sharpens_the_categorical():
    probs = torch.tensor([0.8, 0.2])
    denoiser = lambda ids: probs.log().expand(*ids.shape, 2)  # noqa: E731
    for temperature, expected in [
        (1.0, 0.8),
        (0.5, 0.64 / 0.68),
        (2.0, 0.8**0.5 / (0.8**0.5 + 0.2**0.5)),
    ]:
        out = sample_diffusion(
            denoiser,
            length=4,
            steps=1,
            batch_size=5000,
            temperature=temperature,
            mask_id=2,
            generator=torch.Generator().manual_seed(0),
        )
        freq = (out.tokens == 0).double().mean().item()
        assert abs(freq - expected) < 4 * math.sqrt(expected * (1 - expected) / 20_000)


# -- bad input --------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors():
    oracle = synthetic.RepeatedPairs(4, 8).oracle()
    ok = dict(length=8, steps=8)
    bad = [
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(length=0), "length"),
        (dict(batch_size=0), "batch_size"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(strategy="greedy"), "unknown strategy"),
        (dict(strategy="confidence", confidence="vibes"), "unknown confidence"),
        (dict(strategy="threshold", threshold=1.5), "threshold"),
        (dict(threshold=0.5), "threshold"),
        (dict(confidence="margin"), "confidence"),
        (dict(prompt=torch.zeros(9, dtype=torch.long)), "length=8"),
        (dict(prompt=torch.zeros(3, 2, dtype=torch.long)), "batch_size"),
        (dict(prompt=torch.tensor([7])), "prompt ids"),
        (dict(prompt=torch.zeros(2)), "LongTensor"),
        (dict(schedule="linear"), "unknown schedule"),
        (dict(mask_id=2), "never the mask"),
    ]
    for overrides, message in bad:
        with pytest.raises(ValueError, match=message):
            sample_diffusion(oracle, **{**ok, **overrides})
    with pytest.raises(ValueError, match="mask_id"):
        sample_diffusion(lambda ids: torch.zeros(*ids.shape, 4), **ok)
    with pytest.raises(ValueError, match="shape"):
        sample_diffusion(lambda ids: torch.zeros(1, 4), mask_id=4, **ok)


# -- why the course samples in float64 ----------------------------------------------------------


def test_low_precision_gumbel_noise_lowers_the_temperature():
    logits = torch.full((16,), -4.0)
    logits[0] = 0.0
    p_head = torch.softmax(logits.double(), 0)[0].item()  # 0.784
    n = 100_000
    se = math.sqrt(p_head * (1 - p_head) / n)
    freq = {}
    for dtype in (torch.float64, torch.bfloat16):
        ids = gumbel_max_sample(
            logits.expand(n, 16), noise_dtype=dtype, generator=torch.Generator().manual_seed(0)
        )
        freq[dtype] = (ids == 0).double().mean().item()
    assert abs(freq[torch.float64] - p_head) < 4 * se  # exact noise: exact frequencies
    assert freq[torch.bfloat16] > p_head + 10 * se  # coarse noise: the likely token gains
