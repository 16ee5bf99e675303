"""Block diffusion (notebook 08): BD3-LM's loss, the block sampler and its caches."""

import math
from dataclasses import replace

import pytest
import torch

from course_lib import diffusion, presets, sampling, train
from course_lib.model import ModelConfig, Transformer
from course_lib.sampling import prefix_cache_error, sample_block_diffusion, sample_diffusion

V, L, BLOCK = 11, 24, 8


def make(
    attention="block_causal",
    dtype=torch.float32,
    block_len=BLOCK,
    n_layer=2,
    seed=0,
    position="learned",
):
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=V,
        context_len=L,
        n_layer=n_layer,
        n_head=2,
        d_model=32,
        attention=attention,
        block_len=block_len if attention == "block_causal" else None,
        position=position,
    )
    return Transformer(config).to(dtype).eval()


def clean(batch=3, seed=0):
    return torch.randint(0, V, (batch, L), generator=torch.Generator().manual_seed(seed))


# -- the loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_bd3lm_loss_equals_one_forward_per_block_with_a_clean_prefix(position):
    """Redo the loss by hand: the same times and masks, then block k denoised by its own
    forward over (clean blocks < k, noisy block k)."""
    model, x0 = make(dtype=torch.float64, position=position), clean()
    B, n = x0.shape[0], L // BLOCK
    loss = diffusion.block_nelbo_per_sequence(
        model, x0, "cosine", generator=torch.Generator().manual_seed(3)
    )

    generator = torch.Generator().manual_seed(3)
    schedule = diffusion.get_schedule("cosine")
    t = diffusion.sample_times(B * n, generator=generator).view(B, n)
    u = torch.rand(x0.shape, dtype=torch.float64, generator=generator)
    expected = torch.zeros(B, dtype=torch.float64)
    with torch.no_grad():
        for k in range(n):
            s, e = k * BLOCK, (k + 1) * BLOCK
            noisy = x0[:, s:e].masked_fill(u[:, s:e] < schedule.mask_prob(t[:, k : k + 1]), V)
            logits = model(torch.cat([x0[:, :s], noisy], 1))[:, s:]  # (B, b, V)
            nll = -torch.log_softmax(logits, -1).gather(-1, x0[:, s:e, None]).squeeze(-1)
            nll = torch.where(noisy == V, nll, torch.zeros_like(nll)).sum(1)
            expected += (1 - diffusion.TIME_EPS) * schedule.weight(t[:, k]) * nll / L
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-10, atol=1e-12)


def test_bd3lm_attention_mask_by_hand():
    """Length 4 in blocks of 2: rows are queries (noisy 0-3, then clean 0-3), columns keys."""
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(diffusion.bd3lm_attention_mask(4, 2), expected)


def test_bd3lm_with_one_block_is_the_mdlm_loss():
    model, x0 = make(dtype=torch.float64, block_len=L), clean(seed=1)
    for seed in range(3):
        block = diffusion.block_nelbo_per_sequence(
            model, x0, "loglinear", generator=torch.Generator().manual_seed(seed)
        )
        mdlm = diffusion.nelbo_per_sequence(
            model, x0, "loglinear", generator=torch.Generator().manual_seed(seed)
        )
        torch.testing.assert_close(block, mdlm, rtol=1e-12, atol=0)


def test_bd3lm_refuses_what_it_cannot_score():
    with pytest.raises(ValueError, match="block-causal"):
        diffusion.block_nelbo_per_sequence(make("bidirectional"), clean(), "loglinear")
    with pytest.raises(ValueError, match="must divide"):
        diffusion.block_nelbo_per_sequence(make(), clean()[:, :20], "loglinear")


def test_training_the_bd3lm_objective_lowers_its_loss():
    preset = presets.get_preset("bd3lm-tiny")
    assert preset.model.attention == "block_causal" and preset.train.objective == "bd3lm"
    assert train.get_objective("bd3lm") is diffusion.bd3lm_objective
    small = presets.get_preset("bd3lm-small").model
    assert (small.attention, small.block_len, small.context_len) == ("block_causal", 16, 128)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(
            context_len=32, n_layer=1, n_head=2, d_model=32, attention="block_causal", block_len=8
        )
    )
    cfg = train.TrainConfig(
        objective="bd3lm",
        steps=60,
        batch_size=16,
        seq_len=32,
        lr=3e-3,
        warmup_steps=5,
        eval_every=1000,
        checkpoint_every=1000,
        eval_batches=2,
        precision="fp32",
    )
    source = train.TextBatches("pystdlib", 32)
    before = train.evaluate(model, source, cfg, diffusion.bd3lm_objective)
    train.train(model, cfg, source=source, progress=False, device="cpu")
    after = train.evaluate(model, source, cfg, diffusion.bd3lm_objective)
    assert after < before - 0.5, (before, after)  # ~4.6 nats (uniform) falls below ~3.6


# -- the block sampler: exact KV cache -------------------------------------------------------


def record_logits(model, monkeypatch):
    """Log the logits of every denoising call (cache commits, update_cache=True, left out)."""
    calls = []
    forward = model.forward

    def logged(idx, **kwargs):
        out = forward(idx, **kwargs)
        if kwargs.get("update_cache", True) is False or "cache" not in kwargs:
            calls.append(out[:, -BLOCK:].clone())
        return out

    monkeypatch.setattr(model, "forward", logged)
    return calls


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_the_exact_kv_cache_changes_no_logit(monkeypatch, position):
    """float64, so that "no change" can be checked to 1e-10 instead of to float32 rounding."""
    model = make(dtype=torch.float64, position=position)
    calls = record_logits(model, monkeypatch)
    kwargs = dict(length=L, block_len=BLOCK, steps_per_block=4, batch_size=2, temperature=0.9)
    cached = sample_block_diffusion(model, generator=torch.Generator().manual_seed(0), **kwargs)
    with_cache = list(calls)
    calls.clear()
    plain = sample_block_diffusion(
        model, use_kv_cache=False, generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert torch.equal(cached.tokens, plain.tokens)
    assert len(with_cache) == len(calls) == cached.steps_taken == 3 * 4
    for a, b in zip(with_cache, calls, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # the cached run committed each finished block but the last with one extra call
    assert cached.nfe == plain.nfe + L // BLOCK - 1


@pytest.mark.parametrize("strategy", ["confidence", "threshold", "ancestral", "ancestral_cached"])
def test_cached_and_uncached_block_sampling_give_the_same_tokens(strategy):
    model = make()
    prompt = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # one whole block and a bit
    for seed, steps in [(0, 3), (1, 8), (2, 12)]:
        kwargs = dict(
            length=L,
            block_len=BLOCK,
            steps_per_block=steps,
            batch_size=3,
            strategy=strategy,
            temperature=0.8,
            prompt=prompt,
        )
        runs = [
            sample_block_diffusion(
                model, use_kv_cache=cache, generator=torch.Generator().manual_seed(seed), **kwargs
            )
            for cache in (True, False)
        ]
        assert torch.equal(runs[0].tokens, runs[1].tokens)
        assert torch.equal(runs[0].tokens[:, :10], prompt.expand(3, 10))
        assert (runs[0].tokens < V).all()
        assert runs[0].n_generated == 3 * (L - 10)
    other = sample_block_diffusion(model, generator=torch.Generator().manual_seed(9), **kwargs)
    assert not torch.equal(other.tokens, runs[0].tokens)  # the seed does matter


def test_blocks_are_decoded_left_to_right():
    model = make()
    out = sample_block_diffusion(
        model, length=L, block_len=BLOCK, steps_per_block=4, batch_size=2, record=True
    )
    masked = torch.stack([(x == V).view(2, -1, BLOCK).any(-1).any(0) for x in out.trajectory])
    for state in masked:  # (n_blocks,): a block holds masks only once every earlier one is done
        first = int(state.int().argmax()) if state.any() else len(state)
        assert state[first:].all()
    assert out.steps_taken == len(out.trajectory) - 1 == 3 * 4
    assert out.tokens_per_step == pytest.approx(BLOCK / 4)


def test_one_block_of_a_bidirectional_model_is_sample_diffusion():
    model = make("bidirectional")
    for strategy in ["confidence", "ancestral_cached"]:
        block = sample_block_diffusion(
            model,
            length=L,
            block_len=L,
            steps_per_block=10,
            batch_size=2,
            strategy=strategy,
            use_kv_cache=False,
            generator=torch.Generator().manual_seed(4),
        )
        whole = sample_diffusion(
            model,
            length=L,
            steps=10,
            batch_size=2,
            strategy=strategy,
            generator=torch.Generator().manual_seed(4),
        )
        assert torch.equal(block.tokens, whole.tokens) and block.nfe == whole.nfe


def test_threshold_decoding_commits_several_tokens_per_step_and_at_least_one():
    """A denoiser sure of every token (one logit far above the rest) lets threshold decoding
    commit a whole block per step; "confidence" keeps to its schedule, one token per step."""

    def sure(ids):
        logits = torch.zeros(*ids.shape, V)
        logits[..., 3] = 20.0
        return logits

    kwargs = dict(
        length=L, block_len=BLOCK, steps_per_block=BLOCK, use_kv_cache=False, mask_id=V, record=True
    )
    fast = sample_block_diffusion(sure, strategy="threshold", threshold=0.9, **kwargs)
    slow = sample_block_diffusion(sure, strategy="confidence", **kwargs)
    assert fast.steps_taken == fast.nfe == L // BLOCK and fast.tokens_per_step == BLOCK
    assert slow.steps_taken == L and slow.tokens_per_step == 1.0
    # an unsure model (uniform logits, confidence 1/V) still commits one token per step
    unsure = sample_block_diffusion(
        lambda ids: torch.zeros(*ids.shape, V), strategy="threshold", threshold=0.5, **kwargs
    )
    masks = [int((x == V).sum()) for x in unsure.trajectory]
    assert (
        all(a - b == 1 for a, b in zip(masks[:-1], masks[1:], strict=True))
        and unsure.tokens_per_step == 1.0
    )


def test_generation_stops_after_the_block_that_holds_the_stop_pattern():
    def writes_stop_at_10(ids):  # token 1 everywhere, "3 3" at positions 10 and 11
        logits = torch.full((*ids.shape, V), -30.0)
        logits[..., 1] = 0.0
        logits[:, 10:12, 1], logits[:, 10:12, 3] = -30.0, 0.0
        return logits

    kwargs = dict(
        length=L, block_len=4, steps_per_block=2, batch_size=2, use_kv_cache=False, mask_id=V
    )
    out = sample_block_diffusion(writes_stop_at_10, stop_ids=[3, 3], **kwargs)
    assert out.tokens.shape == (2, 12) and out.tokens[0, 10:].tolist() == [3, 3]
    assert out.n_generated == 2 * 12
    never = sample_block_diffusion(writes_stop_at_10, stop_ids=[3, 1, 3], **kwargs)
    assert never.tokens.shape == (2, L)


# -- the approximate prefix cache of a bidirectional model ----------------------------------


@pytest.fixture(scope="module")
def trained_bidirectional():
    """Tiny bidirectional models trained for a few seconds on text: attention then matters, so a
    stale prefix shows (at random init every position's output is nearly its embedding)."""
    models = {}
    for n_layer in (1, 2):
        torch.manual_seed(0)
        model = Transformer(
            ModelConfig(
                context_len=32, n_layer=n_layer, n_head=2, d_model=32, attention="bidirectional"
            )
        )
        cfg = train.TrainConfig(
            objective="mdlm",
            steps=150,
            batch_size=16,
            seq_len=32,
            lr=3e-3,
            warmup_steps=10,
            eval_every=1000,
            checkpoint_every=1000,
            eval_batches=1,
            precision="fp32",
        )
        train.train(
            model, cfg, source=train.TextBatches("pystdlib", 32), progress=False, device="cpu"
        )
        models[n_layer] = model.eval()
    return models


FLOAT32_ROUNDING = 1e-5  # logits are O(1-10); float32 carries ~7 significant digits


def test_prefix_cache_error_is_measured_and_bounded(trained_bidirectional):
    """The bound, and why:

    - at a block's first step the cache was just computed from the current sequence: exact;
    - with one layer it is exact at every step: a first layer's keys and values depend on its
      own token alone, and the prefix's tokens are final;
    - deeper, the prefix's keys and values of layers >= 2 went through attention over the
      block as it was at its first step: stale. The block's own keys and values are fresh,
      so the error must stay below that of the crude alternative, reusing the block's
      first-step logits for all its steps; and the cache is really approximate (error > 0).
    """
    settings = dict(length=32, block_len=8, steps_per_block=8, batch_size=4, seed=0)
    one = prefix_cache_error(trained_bidirectional[1], **settings)
    assert one.max_logit_error < FLOAT32_ROUNDING and one.token_agreement == 1.0
    assert one.stale_max_logit_error > 0.1  # the block's tokens do matter to its logits

    two = prefix_cache_error(trained_bidirectional[2], **settings)
    assert two.first_step_max_logit_error < FLOAT32_ROUNDING
    assert two.max_logit_error > 10 * FLOAT32_ROUNDING  # approximate, measurably
    assert two.max_logit_error < two.stale_max_logit_error
    assert two.mean_kl < two.stale_mean_kl
    assert len(two.steps) == 4 * 8 and 0.0 <= two.token_agreement <= 1.0


def test_the_dual_cache_error_is_measured_and_bounded(trained_bidirectional):
    """Fast-dLLM's dual cache also keeps the still-masked suffix's keys and values. With one
    layer it is still exact (the suffix's tokens do not change during a block, and a first
    layer's keys and values depend on their own token alone); deeper, it is approximate, yet
    closer to the exact logits than reusing the block's first-step logits."""
    settings = dict(length=32, block_len=8, steps_per_block=8, batch_size=4, seed=0)
    one = prefix_cache_error(trained_bidirectional[1], approximate_cache="dual", **settings)
    assert one.max_logit_error < FLOAT32_ROUNDING and one.token_agreement == 1.0
    dual = prefix_cache_error(trained_bidirectional[2], approximate_cache="dual", **settings)
    assert dual.first_step_max_logit_error < FLOAT32_ROUNDING
    assert dual.max_logit_error > 10 * FLOAT32_ROUNDING
    assert dual.mean_kl < dual.stale_mean_kl and len(dual.steps) == 4 * 8


def test_prefix_cache_error_takes_the_confidence_rule(trained_bidirectional):
    settings = dict(length=32, block_len=8, steps_per_block=8, batch_size=4, seed=0)
    model = trained_bidirectional[2]
    margin = prefix_cache_error(model, confidence="margin", **settings)
    low = prefix_cache_error(model, **settings)  # the default: low_confidence
    assert margin.first_step_max_logit_error < FLOAT32_ROUNDING
    assert margin.mean_kl < margin.stale_mean_kl
    assert margin.steps != low.steps  # another rule unmasks other positions
    exact_one = prefix_cache_error(trained_bidirectional[1], confidence="margin", **settings)
    assert exact_one.token_agreement == 1.0
    with pytest.raises(ValueError, match="unknown confidence"):
        prefix_cache_error(model, confidence="vibes", **settings)


def test_the_approximate_cache_is_opt_in():
    model = make("bidirectional")
    with pytest.raises(ValueError, match="no exact KV cache"):
        sample_block_diffusion(model, length=L, block_len=BLOCK, steps_per_block=2)
    with pytest.raises(ValueError, match="exact KV cache"):
        sample_block_diffusion(
            make(), length=L, block_len=BLOCK, steps_per_block=2, approximate_cache="prefix"
        )
    with pytest.raises(ValueError, match="unknown approximate_cache"):
        sample_block_diffusion(
            model, length=L, block_len=BLOCK, steps_per_block=2, approximate_cache="suffix"
        )
    for cache in sampling.APPROXIMATE_CACHES:
        out = sample_block_diffusion(
            model, length=L, block_len=BLOCK, steps_per_block=2, approximate_cache=cache
        )
        assert out.tokens.shape == (1, L) and (out.tokens < V).all()


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(block_len=5), "must divide"),
        (dict(block_len=4), "trained with blocks of 8"),
        (dict(steps_per_block=0), "steps_per_block must be a positive int"),
        (dict(strategy="threshold", threshold=-0.1), r"threshold must be in \[0, 1\]"),
        (dict(strategy="threshold", threshold=1.5), r"threshold must be in \[0, 1\]"),
        (dict(threshold=0.5), "threshold= is for"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(strategy="greedy"), "unknown strategy"),
        (dict(length=2 * L), "longer than the model's context"),
        (dict(stop_ids=[]), "stop_ids is empty"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    settings = dict(length=L, block_len=BLOCK, steps_per_block=2) | kwargs
    with pytest.raises(ValueError, match=message):
        sample_block_diffusion(make(), **settings)


def test_a_causal_model_is_sent_to_sample_ar():
    with pytest.raises(ValueError, match="sample_ar"):
        sample_block_diffusion(make("causal"), length=L, block_len=BLOCK, steps_per_block=2)
    assert sampling.APPROXIMATE_CACHES == ("prefix", "dual")


def test_elbo_of_a_block_causal_model_uses_the_block_bound():
    model, x0 = make(dtype=torch.float64), clean(batch=4, seed=2)
    bits, se = diffusion.elbo(
        model, x0, "loglinear", n_samples=2, generator=torch.Generator().manual_seed(5)
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        draws = [
            diffusion.block_nelbo_per_sequence(model, x0, "loglinear", generator=generator)
            for _ in range(2)
        ]
    per_sequence = torch.stack(draws).mean(0) / math.log(2)
    assert bits == pytest.approx(per_sequence.mean().item(), rel=1e-12)
    assert se == pytest.approx(per_sequence.std().item() / math.sqrt(4), rel=1e-9)


# -- next-token shift: block diffusion that keeps an AR model's head ------------------------


def make_shifted(block_len=BLOCK, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=V,
        context_len=L,
        n_layer=2,
        n_head=2,
        d_model=32,
        attention="block_causal",
        block_len=block_len,
        position="rotary",
        next_token_shift=True,
    )
    return Transformer(config).to(dtype).eval()


def test_shifted_loss_equals_one_forward_per_block_from_the_token_before_it():
    """Redo the shifted loss by hand: the targets are ids 1..L; block k's targets are read by
    one forward over (clean ids 0..kb, the block's noisy targets but its last)."""
    model = make_shifted()
    x = torch.randint(0, V, (3, L + 1), generator=torch.Generator().manual_seed(1))
    B, n = x.shape[0], L // BLOCK
    loss = diffusion.block_nelbo_per_sequence(
        model, x, "loglinear", generator=torch.Generator().manual_seed(3)
    )

    generator = torch.Generator().manual_seed(3)
    schedule = diffusion.get_schedule("loglinear")
    t = diffusion.sample_times(B * n, generator=generator).view(B, n)
    u = torch.rand((B, L), dtype=torch.float64, generator=generator)
    targets = x[:, 1:]
    expected = torch.zeros(B, dtype=torch.float64)
    with torch.no_grad():
        for k in range(n):
            s, e = k * BLOCK, (k + 1) * BLOCK  # targets s..e-1 are ids s+1..e
            masked = u[:, s:e] < schedule.mask_prob(t[:, k : k + 1])
            noisy = targets[:, s:e].masked_fill(masked, V)
            logits = model(torch.cat([x[:, : s + 1], noisy[:, :-1]], 1))[:, s:]  # (B, b, V)
            nll = -torch.log_softmax(logits, -1).gather(-1, targets[:, s:e, None]).squeeze(-1)
            nll = torch.where(masked, nll, torch.zeros_like(nll)).sum(1)
            expected += (1 - diffusion.TIME_EPS) * schedule.weight(t[:, k]) * nll / L
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-10, atol=1e-12)


def test_a_shifted_model_with_blocks_of_one_is_the_ar_model():
    """Blocks of 1 and the shift make block diffusion an AR model: with an AR model's weights
    its bound averages to the AR model's NLL, and it writes the AR model's (greedy) text."""
    shifted = make_shifted(block_len=1)
    ar = (
        Transformer(
            replace(shifted.config, attention="causal", block_len=None, next_token_shift=False)
        )
        .double()
        .eval()
    )
    ar.load_state_dict(shifted.state_dict())
    x = torch.randint(0, V, (4, L + 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        log_p = torch.log_softmax(ar(x[:, :-1]), -1).gather(-1, x[:, 1:, None]).squeeze(-1)
        nll = -log_p.mean().item()
        generator = torch.Generator().manual_seed(0)
        draws = torch.stack(
            [
                diffusion.block_nelbo_per_sequence(shifted, x, "loglinear", generator=generator)
                for _ in range(400)
            ]
        )
    mean, se = draws.mean().item(), draws.mean(1).std().item() / math.sqrt(len(draws))
    assert abs(mean - nll) < 4 * se + 1e-3, (mean, nll, se)

    with torch.no_grad():  # sharpen the logits so that temperature 0.01 is greedy
        for model in (shifted, ar):
            model.head.weight.mul_(1000)
    prompt = torch.tensor([3])
    greedy = dict(temperature=0.01, generator=torch.Generator().manual_seed(0))
    block = sample_block_diffusion(
        shifted, length=L, block_len=1, steps_per_block=1, prompt=prompt, **greedy
    )
    text = sampling.sample_ar(ar, prompt=prompt, n_tokens=L - 1, **greedy)
    assert torch.equal(block.tokens, text)


@pytest.mark.parametrize("strategy", ["confidence", "threshold", "ancestral"])
def test_a_shifted_model_samples_the_same_with_and_without_its_cache(strategy):
    model = make_shifted()
    runs = [
        sample_block_diffusion(
            model,
            length=L,
            block_len=BLOCK,
            steps_per_block=4,
            batch_size=2,
            strategy=strategy,
            prompt=torch.tensor([1, 2]),
            use_kv_cache=cached,
            generator=torch.Generator().manual_seed(5),
        )
        for cached in (True, False)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert (runs[0].tokens != V).all() and runs[0].n_generated == 2 * (L - 2)
    assert torch.equal(runs[0].tokens[:, :2], torch.tensor([[1, 2], [1, 2]]))


def test_a_shifted_model_needs_a_first_token_and_the_reference_sampler():
    model = make_shifted()
    with pytest.raises(ValueError, match="next_token_shift"):
        sample_block_diffusion(model, length=L, block_len=BLOCK, steps_per_block=2)
    with pytest.raises(ValueError, match="next_token_shift"):
        sample_block_diffusion(
            model, length=L, block_len=BLOCK, steps_per_block=2, prompt=torch.tensor([V])
        )
    from course_lib.fast import FastDiffusionSampler

    with pytest.raises(ValueError, match="next-token-shift"):
        FastDiffusionSampler(model, length=L)
    with pytest.raises(ValueError, match="next_token_shift is for block diffusion"):
        ModelConfig(attention="causal", next_token_shift=True)


def test_held_out_bits_of_a_shifted_model_reads_each_window_from_the_id_before_it():
    from course_lib import metrics

    model = make_shifted(dtype=torch.float32)
    ids = torch.randint(0, V, (5 * L,), generator=torch.Generator().manual_seed(4))
    score = metrics.held_out_bits(model, ids, n_samples=1)
    assert score.n_windows == 4 and score.n_chars == 4 * L
    windows = ids.view(5, L)
    x = torch.cat([windows[:-1, -1:], windows[1:]], 1)
    bound, _ = diffusion.elbo(
        model, x, "loglinear", n_samples=1, generator=torch.Generator().manual_seed(0)
    )
    assert score.bits_per_char == pytest.approx(bound)


def test_a_shifted_model_writes_each_token_from_the_canvas_up_to_its_block():
    """Greedy, every token a step commits is the argmax of the model run on the canvas as it
    was, up to the end of the block that holds the position before it: position p is read
    at p - 1 (the shift), seeing its block and the finished blocks before it."""
    model = make_shifted()
    with torch.no_grad():  # sharpen the logits so that temperature 0.01 is greedy
        model.head.weight.mul_(1000)
    out = sample_block_diffusion(
        model,
        length=L,
        block_len=BLOCK,
        steps_per_block=3,
        prompt=torch.tensor([4]),
        temperature=0.01,
        record=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(out.trajectory) > L // BLOCK
    with torch.no_grad():
        for before, after in zip(out.trajectory[:-1], out.trajectory[1:], strict=True):
            for p in (before[0] != after[0]).nonzero().flatten().tolist():
                end = ((p - 1) // BLOCK + 1) * BLOCK
                logits = model(before[:, :end])[0, p - 1]
                assert after[0, p] == logits.argmax()
