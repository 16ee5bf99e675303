"""course_lib.diffusion: schedules, corruption, the loss, and ELBOs checked against entropies."""

import math

import pytest
import torch

from course_lib import diffusion, env, synthetic, train
from course_lib.model import ModelConfig, Transformer

SCHEDULE_NAMES = ["loglinear", "cosine"]


def hand_mask_prob(name, t):
    """1 - alpha(t), written independently of the library."""
    return t if name == "loglinear" else 1 - torch.cos(math.pi / 2 * t)


def hand_weight(name, t):
    """-alpha'(t) / (1 - alpha(t)), written independently of the library."""
    if name == "loglinear":
        return 1 / t
    return (math.pi / 2) * torch.sin(math.pi / 2 * t) / (1 - torch.cos(math.pi / 2 * t))


class TableDenoiser:
    """A fixed, deterministic denoiser: logits = table[id] + a per-position bias."""

    def __init__(self, vocab_size, length, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab_size + 1, vocab_size, generator=gen)
        self.bias = torch.randn(length, vocab_size, generator=gen)
        self.seen = []

    def __call__(self, ids):
        self.seen.append(ids.clone())
        return self.table[ids] + self.bias  # (B, L, V)


# -- schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_schedule_endpoints_and_monotone(name):
    s = diffusion.get_schedule(name)
    assert s.alpha(0.0).item() == 1.0
    assert abs(s.alpha(1.0).item()) < 1e-15
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert (s.alpha(t).diff() < 0).all()
    assert torch.allclose(s.mask_prob(t), 1 - s.alpha(t), atol=1e-15)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_alpha_prime_is_the_derivative_and_weight_the_formula(name):
    s = diffusion.get_schedule(name)
    t = torch.linspace(0.001, 1, 200, dtype=torch.float64, requires_grad=True)
    (autograd,) = torch.autograd.grad(s.alpha(t).sum(), t)
    t = t.detach()
    assert torch.allclose(s.alpha_prime(t), autograd, rtol=1e-12, atol=1e-14)
    assert torch.allclose(s.weight(t), -s.alpha_prime(t) / (1 - s.alpha(t)), rtol=1e-9)
    assert torch.allclose(s.weight(t), hand_weight(name, t), rtol=1e-9)


def test_weight_is_one_over_t_only_for_loglinear():
    t = torch.tensor([1e-3, 0.1, 0.5], dtype=torch.float64)
    assert torch.allclose(diffusion.get_schedule("loglinear").weight(t), 1 / t, rtol=1e-12)
    cosine = diffusion.get_schedule("cosine").weight(t)
    assert cosine[0] * t[0] == pytest.approx(2.0, rel=1e-5)  # ~2/t near 0: not 1/t
    assert torch.allclose(cosine, (math.pi / 2) / torch.tan(math.pi / 4 * t), rtol=1e-12)


def test_cosine_mask_prob_keeps_its_digits_near_zero():
    t = torch.tensor(1e-9, dtype=torch.float64)
    assert 1 - torch.cos(math.pi / 2 * t) == 0  # the naive formula loses everything here
    series = (math.pi * t / 2) ** 2 / 2
    assert diffusion.get_schedule("cosine").mask_prob(t).item() == pytest.approx(series.item())


def test_get_schedule_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        diffusion.get_schedule("linear")
    cosine = diffusion.CosineSchedule()
    assert diffusion.get_schedule(cosine) is cosine


# -- the forward process ---------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_corrupt_masks_each_token_with_probability_one_minus_alpha(name):
    x0 = torch.randint(0, 10, (2000, 32), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.7]).repeat(1000)  # one time per sequence
    x_t = diffusion.corrupt(x0, t, name, mask_id=10, generator=torch.Generator().manual_seed(1))
    masked = x_t == 10
    assert torch.equal(x_t[~masked], x0[~masked])  # unmasked tokens are untouched
    for k, tk in enumerate((0.2, 0.7)):
        p = hand_mask_prob(name, torch.tensor(tk, dtype=torch.float64)).item()
        frac = masked[k::2].double().mean().item()
        n = masked[k::2].numel()
        assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert (diffusion.corrupt(x0, 1.0, name, mask_id=10) == 10).all()
    assert torch.equal(diffusion.corrupt(x0, 0.0, name, mask_id=10), x0)


def test_corrupt_defaults_to_the_text_mask_id_and_checks_input():
    x_t = diffusion.corrupt(torch.zeros(1, 50, dtype=torch.long), 1.0)
    assert (x_t == 98).all()  # CharTokenizer().mask_id
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        diffusion.corrupt(torch.zeros(1, 5, dtype=torch.long), 1.5, mask_id=3)
    with pytest.raises(ValueError, match="real tokens"):
        diffusion.corrupt(torch.full((1, 5), 3), 0.5, mask_id=3)


# -- the loss --------------------------------------------------------------------------------


def test_times_are_low_discrepancy():
    B, eps = 16, diffusion.TIME_EPS
    t = diffusion.sample_times(B, generator=torch.Generator().manual_seed(0))
    assert ((t >= eps) & (t <= 1)).all()
    strata = ((t - eps) / (1 - eps) * B).floor().long()
    assert sorted(strata.tolist()) == list(range(B))  # exactly one time per stratum


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_loss_equals_the_elbo_integrand_computed_by_hand(name):
    V, B, L = 6, 64, 12
    x0 = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(0))
    denoiser = TableDenoiser(V, L)
    loss = diffusion.masked_diffusion_loss(
        denoiser, x0, name, mask_id=V, generator=torch.Generator().manual_seed(5)
    )
    # replay the documented random stream: the times, then one uniform per token
    gen = torch.Generator().manual_seed(5)
    t = diffusion.sample_times(B, generator=gen)
    u = torch.rand(B, L, dtype=torch.float64, generator=gen)
    masked = u < hand_mask_prob(name, t)[:, None]
    (x_t,) = denoiser.seen
    assert torch.equal(x_t, x0.masked_fill(masked, V))
    log_probs = torch.log_softmax(denoiser.table[x_t] + denoiser.bias, dim=-1)
    nll = -log_probs.gather(-1, x0[..., None])[..., 0].double()  # (B, L)
    by_hand = 0.0
    for b in range(B):
        by_hand += hand_weight(name, t[b]).item() * nll[b][masked[b]].sum().item()
    by_hand *= (1 - diffusion.TIME_EPS) / (B * L)  # the integral over [eps, 1], per token
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)


def test_loss_counts_only_masked_positions():
    V, B, L = 6, 32, 10
    x0 = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(0))
    honest = TableDenoiser(V, L)

    def garbage_where_unmasked(ids):
        logits = honest(ids)
        return torch.where((ids == V)[..., None], logits, torch.randn_like(logits) * 100)

    losses = [
        diffusion.masked_diffusion_loss(f, x0, "cosine", mask_id=V, generator=torch.Generator())
        for f in (honest, garbage_where_unmasked)
    ]
    assert losses[0].item() == losses[1].item()


def test_loss_input_checks():
    x0 = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="mask_id"):
        diffusion.masked_diffusion_loss(lambda ids: torch.zeros(2, 4, 3), x0, "loglinear")
    with pytest.raises(ValueError, match="never the mask"):  # a logit for the mask id
        diffusion.masked_diffusion_loss(
            lambda ids: torch.zeros(2, 4, 4), x0, "loglinear", mask_id=3
        )
    with pytest.raises(ValueError, match="real tokens"):
        diffusion.masked_diffusion_loss(TableDenoiser(3, 4), x0 + 3, "loglinear", mask_id=3)
    with pytest.raises(ValueError, match="unknown schedule"):
        diffusion.masked_diffusion_loss(TableDenoiser(3, 4), x0, "linear", mask_id=3)


def test_mdlm_objective_trains_on_batch_without_its_last_column():
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(
            vocab_size=5, context_len=8, n_layer=1, n_head=1, d_model=16, attention="bidirectional"
        )
    )
    batch = torch.randint(0, 5, (4, 9))
    loss = diffusion.mdlm_objective(model, batch, torch.Generator().manual_seed(3))
    same = diffusion.masked_diffusion_loss(
        model, batch[:, :-1], "loglinear", generator=torch.Generator().manual_seed(3)
    )  # mask_id from model.config.vocab_size
    assert loss.item() == same.item()
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.head.weight.grad.abs().sum() > 0


# -- the ELBO against known entropies --------------------------------------------------------


@pytest.fixture(scope="module")
def chain():
    return synthetic.MarkovChain.random(4, 8, seed=0)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_oracle_elbo_equals_the_entropy(chain, name):
    """With the true conditionals the NELBO is -log p(x0) exactly (an average over orders of
    exact chain rules), so its mean over samples is the entropy, for any schedule."""
    x0 = chain.sample(4000, torch.Generator().manual_seed(0))
    H = chain.entropy_bits_per_token()
    bits, se = diffusion.elbo(
        chain.oracle(), x0, name, n_samples=4, generator=torch.Generator().manual_seed(1)
    )
    assert se < 0.015  # precise enough to mean something
    assert abs(bits - H) < 4 * se, (bits, se, H)
    # sharper, sequence by sequence: the estimates average to each sequence's exact -log p
    gen = torch.Generator().manual_seed(2)
    estimates = torch.stack(
        [diffusion.nelbo_per_sequence(chain.oracle(), x0, name, generator=gen) for _ in range(4)]
    ).mean(0)  # (N,) nats per token
    difference = estimates + chain.log_prob(x0) / chain.length
    se_difference = difference.std().item() / math.sqrt(len(difference))
    assert abs(difference.mean().item()) < 4 * se_difference


def test_a_wrong_weight_or_a_wrong_denoiser_is_caught(chain):
    x0 = chain.sample(4000, torch.Generator().manual_seed(0))
    H = chain.entropy_bits_per_token()

    class CosineWithOneOverT(diffusion.CosineSchedule):
        def weight(self, t):  # the classic bug: the log-linear weight on another schedule
            return 1 / diffusion.as_time(t)

    bits, se = diffusion.elbo(chain.oracle(), x0, CosineWithOneOverT(), n_samples=4)
    assert bits < H - 10 * se  # about half the true value
    uniform = lambda ids: torch.zeros(*ids.shape, 4)  # noqa: E731
    bits, se = diffusion.elbo(uniform, x0, "loglinear", n_samples=4, mask_id=4)
    assert abs(bits - 2.0) < 4 * se  # log2(4) bits for every masked token
    assert bits > H + 0.3


def test_oracle_elbo_on_repeated_pairs():
    pairs = synthetic.RepeatedPairs(8, 8)
    x0 = pairs.sample(4000, torch.Generator().manual_seed(0))
    bits, se = diffusion.elbo(
        pairs.oracle(), x0, "cosine", n_samples=8, generator=torch.Generator().manual_seed(1)
    )
    assert abs(bits - 1.5) < 4 * se and se < 0.015


def test_trained_model_elbo_is_above_and_near_the_entropy():
    source = synthetic.RepeatedPairs(8, 8)
    env.seed_everything(0)
    model = Transformer(
        ModelConfig(
            vocab_size=8, context_len=8, n_layer=2, n_head=2, d_model=64, attention="bidirectional"
        )
    )
    cfg = train.TrainConfig(
        objective="mdlm",
        steps=300,
        batch_size=64,
        seq_len=8,
        lr=3e-3,
        warmup_steps=20,
        weight_decay=0.0,
        eval_every=300,
        eval_batches=1,
        checkpoint_every=300,
        precision="fp32",
    )
    train.train(model, cfg, source=source, device="cpu", progress=False)
    x0 = source.sample(4000, torch.Generator().manual_seed(123))
    bits, se = diffusion.elbo(model, x0, "loglinear", n_samples=2, generator=torch.Generator())
    H = source.entropy_bits_per_token()
    assert bits > H - 3 * se, (bits, se, H)  # an upper bound on the entropy, within noise
    assert bits < 1.05 * H, (bits, se, H)  # and a tight one after 300 steps
    assert model.training  # elbo() restored the mode it found


def test_elbo_input_checks(chain):
    x0 = chain.sample(4)
    with pytest.raises(ValueError, match="n_samples"):
        diffusion.elbo(chain.oracle(), x0, "loglinear", n_samples=0)
    with pytest.raises(ValueError, match="at least 2"):
        diffusion.elbo(chain.oracle(), x0[:1], "loglinear", n_samples=1)
    with pytest.raises(ValueError, match="mask_id"):
        diffusion.elbo(lambda ids: torch.zeros(*ids.shape, 4), x0, "loglinear", n_samples=1)
