"""Notebook 08's exercise checks: right answers pass, stubs are "not attempted", and each
typical mistake is refused with the hint a TA would give."""

import pytest
import torch
from exercise_helpers import assert_correct, assert_not_attempted, right, stub

from course_lib import checks, diffusion, sampling
from course_lib.checks import CheckFailed
from course_lib.checks.nb08_block_diffusion import (
    forward_positions_reference,
    threshold_commit_reference,
)
from course_lib.model import ModelConfig, Transformer

# -- exercise 1: the BD3-LM attention mask ------------------------------------------------------


def blocks(length, block_len):
    return torch.arange(length) // block_len


def mask_from(nn, nc, cn, cc):
    """A (2L, 2L) mask from four rules, each f(query_block (L, 1), key_block (1, L)) -> bool."""

    def fn(length, block_len):
        q, k = blocks(length, block_len)[:, None], blocks(length, block_len)[None, :]
        top = torch.cat([nn(q, k), nc(q, k)], 1)
        bottom = torch.cat([cn(q, k), cc(q, k)], 1)
        return torch.cat([top, bottom], 0)

    return fn


def same(q, k):
    return q == k


def before(q, k):
    return k < q


def up_to(q, k):
    return k <= q


def never(q, k):
    return torch.zeros(q.shape[0], k.shape[1], dtype=torch.bool)


def always(q, k):
    return torch.ones(q.shape[0], k.shape[1], dtype=torch.bool)


mask_right = mask_from(same, before, never, up_to)


def mask_right_loops(length, block_len):
    """Right, written as loops over the 2L ids."""
    mask = torch.zeros(2 * length, 2 * length, dtype=torch.bool)
    for i in range(2 * length):
        for j in range(2 * length):
            qi, kj = (i % length) // block_len, (j % length) // block_len
            noisy_q, noisy_k = i < length, j < length
            if noisy_q:
                mask[i, j] = (kj == qi) if noisy_k else (kj < qi)
            else:
                mask[i, j] = (not noisy_k) and kj <= qi
    return mask


def test_bd3lm_mask_accepts_right_answers(capsys):
    assert_correct(checks.check_bd3lm_mask, mask_right, capsys)
    assert_correct(checks.check_bd3lm_mask, mask_right_loops, capsys)
    assert_correct(checks.check_bd3lm_mask, diffusion.bd3lm_attention_mask, capsys)


def test_bd3lm_mask_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_bd3lm_mask, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (mask_from(same, up_to, never, up_to), "the answer it is asked to predict"),
        (mask_from(same, always, never, up_to), "whole clean copy"),
        (mask_from(same, never, never, up_to), "without its context"),
        (mask_from(up_to, never, never, up_to), "NOISY copy of earlier blocks"),
        (mask_from(always, before, never, up_to), "whole noisy copy"),
        (mask_from(never, before, never, up_to), "must see its own noisy block"),
        (mask_from(same, before, same, up_to), "never sees a noisy one"),
        (mask_from(same, before, never, always), "the answer leaks"),
        (mask_from(same, before, never, same), "earlier clean blocks too"),
        (mask_from(same, before, never, before), "softmax over nothing"),
        (lambda n, b: mask_right(n, b).T, "transposed"),
        (
            lambda n, b: torch.cat(
                [
                    torch.cat([mask_right(n, b)[n:, n:], mask_right(n, b)[n:, :n]], 1),
                    torch.cat([mask_right(n, b)[:n, n:], mask_right(n, b)[:n, :n]], 1),
                ]
            ),
            "halves are swapped",
        ),
        (lambda n, b: same(blocks(n, b)[:, None], blocks(n, b)[None, :]), "reads 2L ids"),
        (lambda n, b: mask_right(n, b).float(), "bool"),
        (lambda n, b: mask_right(n, b)[:-1], "expected"),
        (lambda n, b: mask_right(n, b).tolist(), "torch.Tensor"),
    ],
)
def test_bd3lm_mask_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_bd3lm_mask(answer)


def test_bd3lm_mask_names_the_cell_of_an_unusual_mistake():
    def one_wrong_cell(length, block_len):
        mask = mask_right(length, block_len)
        mask[length, 0] = True  # clean token 0 sees noisy token 0
        return mask

    with pytest.raises(CheckFailed, match="clean token 0 \\(block 0\\) may not see noisy token 0"):
        checks.check_bd3lm_mask(one_wrong_cell)


# -- exercise 2: positions run with and without the KV cache -------------------------------------


def positions_right(length, block_len, steps_per_block, use_kv_cache):
    n = length // block_len
    if use_kv_cache:
        return n * steps_per_block * block_len + (n - 1) * block_len
    return sum(steps_per_block * (k + 1) * block_len for k in range(n))


def positions_right_tensor(length, block_len, steps_per_block, use_kv_cache):
    return torch.tensor(float(positions_right(length, block_len, steps_per_block, use_kv_cache)))


def test_forward_positions_accepts_right_answers(capsys):
    assert_correct(checks.check_forward_positions, positions_right, capsys)
    assert_correct(checks.check_forward_positions, positions_right_tensor, capsys)


def test_forward_positions_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_forward_positions, capsys)


def with_cache(formula):
    return lambda L, b, S, cache: (
        formula(L // b, b, S) if cache else positions_right(L, b, S, cache)
    )


def without_cache(formula):
    return lambda L, b, S, cache: (
        positions_right(L, b, S, cache) if cache else formula(L // b, b, S, L)
    )


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (with_cache(lambda n, b, S: n * S * b), "left out the commits"),
        (with_cache(lambda n, b, S: n * S * b + n * b), "committed the last block too"),
        (with_cache(lambda n, b, S: n * b + (n - 1) * b), "multiply the block's positions"),
        (with_cache(lambda n, b, S: S * b * n * (n + 1) // 2), "count WITHOUT the cache"),
        (without_cache(lambda n, b, S, L: n * S * L), "not the whole sequence"),
        (without_cache(lambda n, b, S, L: S * b * n * (n - 1) // 2), "off by one block"),
        (without_cache(lambda n, b, S, L: b * n * (n + 1) // 2), "multiply by steps_per_block"),
        (
            without_cache(lambda n, b, S, L: S * b * n * (n + 1) // 2 + (n - 1) * b),
            "nothing to commit",
        ),
        (without_cache(lambda n, b, S, L: n * S * b + (n - 1) * b), "count WITH the cache"),
        (lambda L, b, S, cache: positions_right(L, b, S, cache) + 1, "Count, block by block"),
        (lambda L, b, S, cache: str(positions_right(L, b, S, cache)), "return a number"),
    ],
)
def test_forward_positions_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_forward_positions(answer)


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_forward_positions_reference_counts_what_the_sampler_runs(use_kv_cache):
    """The formula is what `sample_block_diffusion` runs: count the positions entering the
    first transformer block, every forward included (denoising steps and cache commits)."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=7,
        context_len=24,
        n_layer=1,
        n_head=2,
        d_model=16,
        attention="block_causal",
        block_len=8,
    )
    model = Transformer(config).eval()
    counted = []
    handle = model.blocks[0].register_forward_pre_hook(
        lambda m, args: counted.append(args[0].shape[1])
    )
    try:
        sampling.sample_block_diffusion(
            model, length=24, block_len=8, steps_per_block=3, use_kv_cache=use_kv_cache
        )
    finally:
        handle.remove()
    assert sum(counted) == forward_positions_reference(24, 8, 3, use_kv_cache)


# -- exercise 3: the threshold commit rule --------------------------------------------------------


def commit_right(conf, masked, tau):
    ranked = conf.masked_fill(~masked, float("-inf"))
    best = torch.nn.functional.one_hot(ranked.argmax(1), conf.shape[1]).bool()
    return masked & ((conf > tau) | best)


def commit_right_loops(conf, masked, tau):
    """Right, written row by row."""
    commit = torch.zeros_like(masked)
    for r in range(conf.shape[0]):
        candidates = masked[r].nonzero().flatten().tolist()
        if not candidates:
            continue
        for i in candidates:
            commit[r, i] = bool(conf[r, i] > tau)
        commit[r, max(candidates, key=lambda i: conf[r, i])] = True
    return commit


def test_threshold_commit_accepts_right_answers(capsys):
    assert_correct(checks.check_threshold_commit, commit_right, capsys)
    assert_correct(checks.check_threshold_commit, commit_right_loops, capsys)
    assert_correct(checks.check_threshold_commit, threshold_commit_reference, capsys)


def test_threshold_commit_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_threshold_commit, capsys)


def best_of_row(conf, masked):
    return torch.nn.functional.one_hot(
        conf.masked_fill(~masked, float("-inf")).argmax(1), conf.shape[1]
    ).bool()


def commit_unmasked_too(conf, masked, tau):
    return (conf > tau) | best_of_row(conf, masked)


def commit_finished_rows(conf, masked, tau):
    return (masked & (conf > tau)) | best_of_row(conf, masked)


def commit_without_floor(conf, masked, tau):
    return masked & (conf > tau)


def commit_only_best(conf, masked, tau):
    return masked & best_of_row(conf, masked)


def commit_at_tau(conf, masked, tau):
    return masked & ((conf >= tau) | best_of_row(conf, masked))


def commit_below(conf, masked, tau):
    return masked & ((conf < tau) | best_of_row(conf, masked))


def commit_best_overall(conf, masked, tau):
    best = torch.nn.functional.one_hot(conf.argmax(1), conf.shape[1]).bool()
    return masked & ((conf > tau) | best)


def commit_one_per_batch(conf, masked, tau):
    flat = conf.masked_fill(~masked, float("-inf")).flatten().argmax()
    best = torch.zeros(conf.numel(), dtype=torch.bool)
    best[flat] = True
    return masked & ((conf > tau) | best.view(conf.shape))


def commit_in_place(conf, masked, tau):
    conf.masked_fill_(~masked, float("-inf"))
    return commit_right(conf, masked, tau)


def commit_as_long(conf, masked, tau):
    return commit_right(conf, masked, tau).long()


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (commit_unmasked_too, "which is not masked"),
        (commit_finished_rows, "no masked position left"),
        (commit_without_floor, "make no progress"),
        (commit_only_best, "EVERY masked position"),
        (commit_at_tau, "strictly greater"),
        (commit_below, "BELOW tau"),
        (commit_best_overall, "most confident MASKED position"),
        (commit_one_per_batch, "per ROW"),
        (commit_in_place, "in place"),
        (commit_as_long, "bool"),
        (lambda conf, masked, tau: commit_right(conf, masked, tau)[:, :-1], "shape"),
    ],
)
def test_threshold_commit_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_threshold_commit(answer)


def test_threshold_commit_reference_is_the_samplers_rule():
    """With steps_per_block = block_len the sampler's floor is one token per step, and each
    step commits exactly what the reference rule commits, on the confidences it computed."""
    V, L = 5, 8
    logits = torch.randn(2, L, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def denoiser(ids):
        return logits.expand(ids.shape[0], -1, -1) * 3.0

    out = sampling.sample_block_diffusion(
        denoiser,
        length=L,
        block_len=L,
        steps_per_block=L,
        batch_size=2,
        strategy="threshold",
        threshold=0.6,
        confidence="margin",
        use_kv_cache=False,
        mask_id=V,
        record=True,
    )
    conf = sampling.position_confidence(
        torch.softmax(denoiser(out.tokens), -1), out.tokens, "margin"
    )
    for before, after in zip(out.trajectory[:-1], out.trajectory[1:], strict=True):
        masked = before == V
        committed = masked & (after != V)
        assert torch.equal(committed, threshold_commit_reference(conf, masked, 0.6))


# -- exercise 4 (debug): the block loop's missing commit -------------------------------------


def _block_decode(model, length, block_len, steps_per_block, generator, *, commit=True, leak=False):
    x = torch.full((1, length), model.mask_id)
    schedule = diffusion.get_schedule("loglinear")
    alphas = schedule.alpha(schedule.time_grid(steps_per_block)).tolist()
    cache = model.new_cache(1)
    for start in range(0, length, block_len):

        def denoiser(ids):
            return model(ids, cache=cache, update_cache=leak)

        block, _, _ = sampling.confident_steps(
            denoiser,
            x[:, start : start + block_len],
            alphas,
            model.mask_id,
            1.0,
            generator,
            kind="low_confidence",
            threshold=None,
            trajectory=None,
        )
        x[:, start : start + block_len] = block
        if commit:
            model(block, cache=cache)
    return x


def test_the_fixed_block_loop_passes_and_each_slip_is_named(capsys):
    from functools import partial

    assert right(checks.check_block_cache_fix(_block_decode))
    assert "never enters the cache" in capsys.readouterr().out
    assert not checks.check_block_cache_fix(stub)
    with pytest.raises(checks.CheckFailed, match="first block is right"):
        checks.check_block_cache_fix(partial(_block_decode, commit=False))
    with pytest.raises(checks.CheckFailed, match="overflowed"):
        checks.check_block_cache_fix(partial(_block_decode, leak=True))
