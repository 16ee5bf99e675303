"""The lookahead loss (notebook 12): each window is one row of the draft tree's sampler."""

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import diffusion, lookahead, presets, train
from course_lib.model import ModelConfig, Transformer

V, L = 11, 24


def make(block_len=2, position="rotary", shift=False):
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=V,
        context_len=L,
        n_layer=2,
        n_head=2,
        d_model=32,
        attention="block_causal",
        block_len=block_len,
        position=position,
        next_token_shift=shift,
    )
    return Transformer(config).to(torch.float64).eval()


def clean(batch=3, seed=0):
    return torch.randint(0, V, (batch, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("block_len", "window"), [(2, 8), (4, 8), (2, 6)])
@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_the_loss_is_one_plain_forward_per_window_row(block_len, window, position):
    """Redo the loss by hand: the same cuts, then each window read by its own forward of the
    clean tokens before it and the window (committed tokens, then masks), block-causally."""
    model, x0 = make(block_len, position), clean()
    scored = 3
    loss = lookahead.lookahead_loss(
        model, x0, window=window, scored=scored, generator=torch.Generator().manual_seed(5)
    )
    cuts = torch.randint(
        0, window - scored + 1, (3, L // window), generator=torch.Generator().manual_seed(5)
    )
    nll, by_distance = [], [[] for _ in range(scored)]
    with torch.no_grad():
        for b in range(3):
            for w, cut in enumerate(cuts[b].tolist()):
                start = w * window
                row = x0[b, : start + window].clone()
                row[start + cut :] = model.mask_id
                logits = model(row[None])[0]
                for p in range(start + cut, start + cut + scored):
                    nll.append(F.cross_entropy(logits[p], x0[b, p]))
                    by_distance[p - start - cut].append(nll[-1].item() / math.log(2))
    assert loss.item() == pytest.approx(torch.stack(nll).mean().item(), rel=1e-10)
    bits = lookahead.guess_bits(
        model, x0, window=window, scored=scored, generator=torch.Generator().manual_seed(5)
    )
    assert bits == pytest.approx([sum(d) / len(d) for d in by_distance], rel=1e-10)


def test_lookahead_attention_mask_by_hand():
    """Blocks of 2, windows of 4, 8 positions: windows {0..3} and {4..7}."""
    mask = lookahead.lookahead_attention_mask(8, 2, 4).int()
    window_to_window = [
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]
    window_to_clean = [[0] * 8] * 4 + [[1, 1, 1, 1, 0, 0, 0, 0]] * 4
    assert mask[:8, :8].tolist() == window_to_window
    assert mask[:8, 8:].tolist() == window_to_clean
    assert mask[8:, :8].sum() == 0  # the clean copy never sees a window
    block = torch.arange(8) // 2
    assert torch.equal(mask[8:, 8:].bool(), block[None, :] <= block[:, None])


@pytest.mark.parametrize(("length", "block_len"), [(8, 2), (12, 4), (16, 16)])
def test_windows_of_one_block_are_bd3lms_mask(length, block_len):
    assert torch.equal(
        lookahead.lookahead_attention_mask(length, block_len, block_len),
        diffusion.bd3lm_attention_mask(length, block_len),
    )


def test_the_objective_adds_the_lookahead_loss_to_bd3lm_and_evaluates_bits():
    model = make()
    batch = torch.randint(0, V, (3, L + 1), generator=torch.Generator().manual_seed(1))
    total = lookahead.bd3lm_lookahead_objective(
        model, batch, generator=torch.Generator().manual_seed(2)
    )
    generator = torch.Generator().manual_seed(2)
    parts = diffusion.bd3lm_objective(model, batch, generator) + lookahead.lookahead_loss(
        model, batch[:, :-1], generator=generator
    )
    assert total.item() == pytest.approx(parts.item(), rel=1e-12)
    assert train.get_objective("bd3lm-lookahead") is lookahead.bd3lm_lookahead_objective
    assert train.EVAL_OBJECTIVES["bd3lm-lookahead"] == "bd3lm"
    preset = presets.get_preset("bd3lm-ar-b2-look")
    assert preset.train.objective == "bd3lm-lookahead"
    assert preset.init_from == "bd3lm-ar-b2-more" and preset.model.block_len == 2
    more = presets.get_preset("bd3lm-ar-b2-look2")
    assert more.init_from == "bd3lm-ar-b2-look" and more.train.objective == "bd3lm-lookahead"


def test_training_on_it_lowers_the_guesses_loss():
    torch.manual_seed(0)
    config = ModelConfig(
        context_len=32, n_layer=1, n_head=2, d_model=32, attention="block_causal", block_len=2
    )
    model = Transformer(config)
    cfg = train.TrainConfig(
        objective="bd3lm-lookahead",
        steps=40,
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

    def guesses_loss():
        return train.evaluate(
            model, source, cfg, lambda m, b, g: lookahead.lookahead_loss(m, b[:, :-1], generator=g)
        )

    before = guesses_loss()
    result = train.train(model, cfg, source=source, progress=False, device="cpu")
    assert guesses_loss() < before - 0.5, before
    # the run's evaluation is the model's bits per token (BD3-LM's bound), not the sum
    assert result.history[-1]["val_loss"] == pytest.approx(
        train.evaluate(model, source, cfg, diffusion.bd3lm_objective), rel=1e-6
    )


@pytest.mark.parametrize(
    ("kwargs", "model", "message"),
    [
        ({"window": 5}, make(), "multiple of block_len"),
        ({"window": 16}, make(), "divide"),
        ({"scored": 0}, make(), "scored must be"),
        ({"scored": 9}, make(), "scored must be"),
        ({}, make(shift=True), "predict token i"),
    ],
)
def test_bad_input_is_refused(kwargs, model, message):
    with pytest.raises(ValueError, match=message):
        lookahead.lookahead_loss(model, clean(), **kwargs)
