"""speculative: the output follows exactly the target's distribution, whatever the draft."""

import itertools
import math

import pytest
import torch

from course_lib import speculative
from course_lib.model import ModelConfig, Transformer
from course_lib.synthetic import MarkovChain


class ChainModel:
    """A Markov chain as a causal AR model: logits at position i = log P(next | ids[i])."""

    def __init__(self, chain: MarkovChain) -> None:
        self.chain = chain
        self.calls = 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.chain.transition[ids].log()  # (1, L, V)


def _exact_joint(chain: MarkovChain, first: int, n: int) -> dict[tuple, float]:
    joint = {}
    for rest in itertools.product(range(chain.vocab_size), repeat=n):
        p, prev = 1.0, first
        for token in rest:
            p *= chain.transition[prev, token].item()
            prev = token
        joint[rest] = p
    return joint


def test_the_tokens_follow_the_targets_distribution_exactly():
    """Chi-square of 6,000 samples of 3 tokens against the target chain's exact joint law.

    The draft is a different, sharper chain: it is often wrong, so rejections and the residual
    draw are exercised. Drawing the replacement from p instead of max(0, p - q), or keeping a
    drafted token with probability p/q unclipped, moves this far outside the bound.
    """
    target = MarkovChain.random(vocab_size=3, length=4, sharpness=1.0, seed=1)
    draft = MarkovChain.random(vocab_size=3, length=4, sharpness=3.0, seed=2)
    n, samples = 3, 6000
    generator = torch.Generator().manual_seed(0)
    counts: dict[tuple, int] = {}
    rejected = 0
    for _ in range(samples):
        out = speculative.sample_speculative(
            ChainModel(target),
            ChainModel(draft),
            prompt=torch.tensor([0]),
            n_tokens=n,
            draft_len=2,
            generator=generator,
        )
        key = tuple(out.tokens[0, 1:].tolist())
        counts[key] = counts.get(key, 0) + 1
        rejected += out.accepted[0] < 2
    exact = _exact_joint(target, 0, n)
    chi2 = sum((counts.get(k, 0) - samples * p) ** 2 / (samples * p) for k, p in exact.items())
    # 26 degrees of freedom: P(chi2 > 60) < 1e-4 under the right law
    assert chi2 < 60, chi2
    assert rejected > samples // 4  # the draft was rejected often enough to test the residual


def test_a_draft_equal_to_the_target_is_always_accepted():
    chain = MarkovChain.random(vocab_size=4, length=4, seed=3)
    target = ChainModel(chain)
    out = speculative.sample_speculative(
        target,
        ChainModel(chain),
        prompt=torch.tensor([1]),
        n_tokens=22,
        draft_len=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.accepted == [4, 4, 4, 4, 1]  # 5 tokens a round; the last drafts only 2 - 1
    assert out.target_forwards == target.calls == 5 and out.tokens_per_target_forward == 22 / 5


def test_accept_or_resample_keeps_a_token_with_probability_min_1_p_over_q():
    p = torch.tensor([[0.2, 0.8], [0.5, 0.5]], dtype=torch.float64)
    q = torch.tensor([[0.8, 0.2]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    kept = [speculative.accept_or_resample(p, q, torch.tensor([0]), generator) for _ in range(4000)]
    share = sum(k for k, _ in kept) / len(kept)
    assert math.isclose(share, 0.2 / 0.8, abs_tol=0.03)
    # a rejected 0 is replaced from max(0, p - q) = (0, 0.6): always token 1
    assert all(token == 1 for k, token in kept if k == 0)


def _tiny(seed):
    torch.manual_seed(seed)
    config = ModelConfig(context_len=48, n_layer=2, n_head=2, d_model=32, position="rotary")
    return Transformer(config).eval()


@pytest.mark.parametrize("draft_len", [1, 3, 5])
def test_kv_caches_change_no_token(draft_len):
    target, draft = _tiny(0), _tiny(1)
    prompt = torch.tensor([5, 9, 11])
    runs = [
        speculative.sample_speculative(
            target,
            draft,
            prompt=prompt,
            n_tokens=30,
            draft_len=draft_len,
            use_kv_cache=cached,
            generator=torch.Generator().manual_seed(7),
        )
        for cached in (False, True)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert runs[0].accepted == runs[1].accepted
    assert runs[1].tokens.shape == (1, 33)


def test_bad_inputs_are_refused_clearly():
    model = _tiny(0)
    with pytest.raises(ValueError, match="n_tokens"):
        speculative.sample_speculative(model, model, prompt=torch.tensor([1]), n_tokens=0)
    with pytest.raises(ValueError, match="draft_len"):
        speculative.sample_speculative(
            model, model, prompt=torch.tensor([1]), n_tokens=3, draft_len=-1
        )
    with pytest.raises(ValueError, match="context"):
        speculative.sample_speculative(model, model, prompt=torch.tensor([1]), n_tokens=48)
    with pytest.raises(ValueError, match="1-D"):
        speculative.sample_speculative(model, model, prompt=torch.tensor([[1]]), n_tokens=3)
    bidirectional = Transformer(
        ModelConfig(context_len=48, n_layer=1, n_head=2, d_model=32, attention="bidirectional")
    )
    with pytest.raises(ValueError, match="causal"):
        speculative.sample_speculative(model, bidirectional, prompt=torch.tensor([1]), n_tokens=3)
