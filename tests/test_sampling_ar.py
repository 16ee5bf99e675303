"""course_lib.sampling, autoregressive part: the KV cache changes no token; bad input is refused."""

import pytest
import torch

from course_lib import sampling
from course_lib.model import ModelConfig, Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(context_len=32, n_layer=2, n_head=2, d_model=32)).eval()


def draw(model, prompt, n_tokens=20, seed=1, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return sampling.sample_ar(
        model, prompt=prompt, n_tokens=n_tokens, generator=generator, **kwargs
    )


def test_the_kv_cache_changes_no_token(model):
    prompt = torch.tensor([[3, 5, 7], [1, 2, 3]])
    cached = draw(model, prompt)
    assert cached.shape == (2, 23) and torch.equal(cached[:, :3], prompt)
    assert torch.equal(cached, draw(model, prompt, use_kv_cache=False))
    assert not torch.equal(cached, draw(model, prompt, seed=2))  # the seed does matter


def test_sampling_follows_the_models_conditional(model):
    # 4000 continuations of one prompt by one token: frequencies match softmax(logits)
    prompt = torch.tensor([[10, 20, 30]]).expand(4000, 3)
    tokens = draw(model, prompt, n_tokens=1, temperature=0.05)[:, -1]
    with torch.no_grad():
        probs = torch.softmax(model(prompt[:1]).double()[0, -1] / 0.05, -1)
    freq = torch.bincount(tokens, minlength=probs.numel()).double() / len(tokens)
    std = (probs * (1 - probs) / len(tokens)).sqrt()
    assert ((freq - probs).abs() < 5 * std + 1e-3).all()
    assert probs.max() > 10 / probs.numel()  # far from uniform: ignoring temperature would fail


def test_sample_categorical_matches_the_probabilities():
    probs = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3, 0.0], dtype=torch.float64)
    ids = sampling.sample_categorical(probs.expand(100_000, 6), torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=6).double() / 100_000
    assert freq[[0, 2, 5]].sum() == 0  # impossible tokens are never drawn
    torch.testing.assert_close(freq, probs, rtol=0, atol=5 * (0.25 / 100_000) ** 0.5)


def test_categorical_from_cdf_draws_the_tensor_rules_ids():
    """The plain-Python draw (a walk's, one token at a time) against `categorical_from_uniforms`
    on the same uniforms: equal ids, including impossible tokens, mass that rounding leaves off
    1, and uniforms that land on a cumulative probability exactly."""
    from course_lib.step_rules import categorical_from_cdf, categorical_from_uniforms

    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(200, 7, generator=generator, dtype=torch.float64) * 3, -1)
    probs[:50, 2] = 0.0  # mass off 1, an impossible token
    probs[50:100] = torch.tensor([0.0, 0.25, 0.25, 0.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    u = torch.rand(200, dtype=torch.float64, generator=generator)
    edges = [0.0, 0.25, 0.5, 1.0 - 2**-53, 0.75, 0.125, 0.375, 0.2, 0.6, 0.9]
    u[50:60] = torch.tensor(edges, dtype=torch.float64)
    expected = categorical_from_uniforms(probs, u).tolist()
    cdfs = probs.cumsum(-1).tolist()
    assert [categorical_from_cdf(c, x) for c, x in zip(cdfs, u.tolist(), strict=True)] == expected
    assert {expected[i] for i in range(50, 100)} <= {1, 2, 4}


def test_sample_ar_restores_the_training_mode(model):
    model.train()
    try:
        draw(model, torch.tensor([1, 2]), n_tokens=2)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(prompt=torch.tensor([1.0])), "LongTensor"),
        (dict(prompt=torch.zeros(1, 0, dtype=torch.long)), "L >= 1"),
        (dict(prompt=torch.tensor([98])), r"\[0, 98\)"),  # the mask id is not a prompt token
        (dict(n_tokens=0), "n_tokens"),
        (dict(n_tokens=30), "exceeds the model's context of 32"),
        (dict(temperature=0.0), "temperature must be > 0"),
    ],
)
def test_sample_ar_rejects_bad_input(model, kwargs, match):
    arguments = dict(prompt=torch.tensor([1, 2, 3]), n_tokens=5) | kwargs
    with pytest.raises(ValueError, match=match):
        sampling.sample_ar(model, **arguments)


def test_sample_ar_needs_a_causal_model():
    bidirectional = Transformer(
        ModelConfig(context_len=8, n_layer=1, n_head=1, d_model=8, attention="bidirectional")
    )
    with pytest.raises(ValueError, match="causal"):
        sampling.sample_ar(bidirectional, prompt=torch.tensor([1]), n_tokens=1)
