"""course_lib.synthetic: exact entropies, exact conditionals, samples from the right law."""

import itertools
import math

import pytest
import torch

from course_lib import synthetic


def all_sequences(source):
    """Every sequence of the source's length: (V^L, L)."""
    grid = itertools.product(range(source.vocab_size), repeat=source.length)
    return torch.tensor(list(grid), dtype=torch.long)


def brute_force_conditionals(source, ids):
    """p(x_i | unmasked tokens of ids) by summing the joint over all consistent sequences."""
    seqs = all_sequences(source)  # (N, L)
    probs = source.log_prob(seqs).exp()  # (N,)
    out = torch.zeros(ids.shape[0], source.length, source.vocab_size, dtype=torch.float64)
    for b, row in enumerate(ids):
        known = row != source.mask_id
        consistent = (seqs[:, known] == row[known]).all(dim=1)
        weights = probs * consistent
        for i in range(source.length):
            out[b, i] = torch.zeros(source.vocab_size, dtype=torch.float64).index_add(
                0, seqs[:, i], weights
            )
        out[b] /= weights.sum()
    return out


SOURCES = {
    "markov": lambda: synthetic.MarkovChain.random(3, 5, sharpness=2.0, seed=3),
    "pairs": lambda: synthetic.RepeatedPairs(3, 4),
}


@pytest.mark.parametrize("name", SOURCES)
def test_probabilities_sum_to_one_and_entropy_is_exact(name):
    source = SOURCES[name]()
    p = source.log_prob(all_sequences(source)).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    entropy_bits = -(torch.special.xlogy(p, p).sum() / math.log(2)).item() / source.length
    assert source.entropy_bits_per_token() == pytest.approx(entropy_bits, rel=1e-12)


@pytest.mark.parametrize("name", SOURCES)
def test_samples_follow_the_joint(name):
    source = SOURCES[name]()
    n = 40_000
    x = source.sample(n, torch.Generator().manual_seed(0))
    seqs = all_sequences(source)
    p = source.log_prob(seqs).exp()
    # index of each sampled sequence in base V
    powers = source.vocab_size ** torch.arange(source.length - 1, -1, -1)
    counts = torch.bincount((x * powers).sum(1), minlength=len(seqs)).double()
    tv = 0.5 * (counts / n - p).abs().sum().item()
    # expected TV of an exact sampler ~ 0.5 * sum sqrt(2 p / (pi n)); allow twice that
    noise = 0.5 * math.sqrt(2 / (math.pi * n)) * p.sqrt().sum().item()
    assert tv < 2 * noise, (tv, noise)
    # and the mean NLL of the samples is the entropy, within 4 standard errors
    nll_bits = -source.log_prob(x) / math.log(2) / source.length
    se = nll_bits.std().item() / math.sqrt(n)
    assert abs(nll_bits.mean().item() - source.entropy_bits_per_token()) < 4 * se + 1e-12


@pytest.mark.parametrize("name", SOURCES)
def test_oracle_conditionals_equal_brute_force(name):
    source = SOURCES[name]()
    gen = torch.Generator().manual_seed(1)
    x = source.sample(40, gen)
    masked = torch.rand(x.shape, generator=gen) < 0.6
    masked[0] = True  # all masked: the marginals
    masked[1] = False  # nothing masked: carry-over one-hots
    ids = x.masked_fill(masked, source.mask_id)
    exact = source.conditionals(ids)
    assert torch.allclose(exact, brute_force_conditionals(source, ids), atol=1e-12)
    assert torch.equal(exact[1].argmax(-1), x[1]) and (exact[1].max(-1).values == 1).all()
    oracle = source.oracle()
    logits = oracle(ids)
    assert logits.shape == (40, source.length, source.vocab_size)
    assert torch.allclose(torch.softmax(logits, -1), exact, atol=1e-12)
    assert oracle.calls == 1 and oracle.config.vocab_size == source.vocab_size == oracle.mask_id


def test_markov_chain_is_stationary_and_entropy_formula():
    chain = synthetic.MarkovChain.random(4, 8, seed=0)
    pi, T = chain.stationary, chain.transition
    assert torch.allclose(pi @ T, pi, atol=1e-12)
    # every position's marginal is pi: the oracle on an all-masked input
    marginals = chain.conditionals(torch.full((1, 8), chain.mask_id))[0]
    assert torch.allclose(marginals, pi.expand(8, -1), atol=1e-12)
    h_pi = -(pi * pi.log()).sum()
    h_rate = -(pi[:, None] * T * T.log()).sum()
    expected = ((h_pi + 7 * h_rate) / (8 * math.log(2))).item()
    assert chain.entropy_bits_per_token() == pytest.approx(expected, rel=1e-12)


def test_repeated_pairs():
    pairs = synthetic.RepeatedPairs(8, 6)
    x = pairs.sample(100, torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 0::2], x[:, 1::2])
    assert pairs.entropy_bits_per_token() == 1.5
    ids = torch.tensor([[3, pairs.mask_id, pairs.mask_id, pairs.mask_id, pairs.mask_id, 5]])
    probs = pairs.conditionals(ids)[0]
    assert probs[1, 3] == 1 and probs[4, 5] == 1  # a masked token is its unmasked partner
    assert torch.allclose(probs[2], torch.full((8,), 1 / 8, dtype=torch.float64))


def test_get_batch_is_a_train_batch_source():
    chain = synthetic.MarkovChain.random(4, 8, seed=0)
    batch = chain.get_batch("train", 16, torch.Generator().manual_seed(0))
    assert batch.shape == (16, 9) and batch.dtype == torch.long
    assert (batch[:, -1] == 0).all()  # the padding column the diffusion objective drops
    assert (batch[:, :-1] < chain.vocab_size).all()
    with pytest.raises(ValueError, match="split"):
        chain.get_batch("test", 16, torch.Generator())
    with pytest.raises(ValueError, match="batch_size"):
        chain.get_batch("val", 0, torch.Generator())


def test_bad_inputs():
    with pytest.raises(ValueError, match="row-stochastic"):
        synthetic.MarkovChain(torch.tensor([[0.5, 0.6], [0.5, 0.5]]), 4)
    with pytest.raises(ValueError, match="square"):
        synthetic.MarkovChain(torch.ones(2, 3) / 3, 4)
    with pytest.raises(ValueError, match="stationary"):
        synthetic.MarkovChain(torch.eye(2), 4)  # two absorbing states
    with pytest.raises(ValueError, match="even"):
        synthetic.RepeatedPairs(4, 5)
    with pytest.raises(ValueError, match="length"):
        synthetic.RepeatedPairs(4, 0)
    chain = synthetic.MarkovChain(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 3)  # alternates
    with pytest.raises(ValueError, match="impossible"):
        chain.conditionals(torch.tensor([[0, 0, 2]]))  # 0 is always followed by 1
    with pytest.raises(ValueError, match="length"):
        chain.conditionals(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        chain.conditionals(torch.tensor([[0, 3, 0]]))
