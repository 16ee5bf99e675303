"""Training a block-diffusion model's guesses past its block (notebook 12's lookahead lever).

`draft_tree` guesses the next tokens from one row: the committed tokens, then masks. The
row's first masked position gives the model's exact left-to-right conditional, which BD3-LM's
loss trains; the masks after it, in the same block and in the blocks after, give the
*marginals* p(x_j | x_<m) that the tree's guesses come from. BD3-LM's loss never shows the
model those later blocks: there a block always sees clean blocks before it, whereas in the row
a masked block sees blocks that are masked too. So the guesses come from inputs the model
never trained on, and the tree commits fewer tokens than the marginals could give it.

This objective shows the model those rows. Each sequence is cut into windows of `window`
positions; in each window a random cut m (at most `window - scored` after the window's start)
keeps the tokens before m and masks the rest. The window's tokens see the clean tokens before
the window and, block-causally, the window's own (a masked block sees the masked blocks
before it, as in the row), so every window is exactly one row of the sampler, and one forward
of the windows beside a clean copy (BD3-LM's vectorised form) reads them all. The loss is the
cross-entropy of the true tokens at m .. m + scored - 1: the conditional at m (as BD3-LM's
loss trains it) and the marginals 1 .. scored - 1 positions after it.

`bd3lm_lookahead_objective` adds it to BD3-LM's loss, which keeps training the exact
conditionals and the ELBO; the sampler's law (and so its text) is still the left-to-right
conditionals alone, whatever the guesses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib import env
from course_lib.diffusion import (
    Denoiser,
    _block_len_of,
    bd3lm_objective,
    check_clean,
    next_token_shift,
    resolve_mask_id,
)
from course_lib.model import eval_mode

WINDOW = 8  # positions per window: a row of the sampler
SCORED = 4  # positions scored from the cut: the conditional and 3 marginals past it


def lookahead_attention_mask(
    length: int, block_len: int, window: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Who sees whom when windows of a sequence and its clean copy are read side by side.

    Bool (2 * length, 2 * length), True = may attend; ids 0..length-1 are the windows,
    length..2*length-1 the clean copy, both at positions 0..length-1. A window token i sees
    the window tokens of its own window in blocks up to its own (block-causal, as a row
    reads them) and the clean tokens before its window's start; a clean token sees clean
    tokens block-causally and never a window token. With windows of one block it is BD3-LM's
    `diffusion.bd3lm_attention_mask`, of which this is the generalisation (tested equal).
    """
    if window % block_len or length % window:
        raise ValueError(
            f"window={window} must be a multiple of block_len={block_len} and divide {length}"
        )
    i = torch.arange(length, device=device)
    block, win = i // block_len, i // window
    causal = block[None, :] <= block[:, None]  # key's block up to the query's
    own = (win[None, :] == win[:, None]) & causal
    before = i[None, :] < (win * window)[:, None]  # clean keys before the query's window
    window_rows = torch.cat([own, before], dim=1)
    clean_rows = torch.cat([torch.zeros_like(own), causal], dim=1)
    return torch.cat([window_rows, clean_rows], dim=0)


def _windows(model, x0, window, scored, mask_id, generator):
    """The windows' logits (B, L, V) and each position's place past its window's cut (B, L;
    negative before it)."""
    mask_id = resolve_mask_id(model, mask_id)
    check_clean(x0, mask_id)
    block_len = _block_len_of(model)
    if next_token_shift(model):
        raise ValueError("the lookahead loss reads models whose logits at i predict token i")
    if not 0 < scored <= window:
        raise ValueError(f"scored must be in [1, window={window}], got {scored}")
    B, L = x0.shape
    attn_mask = lookahead_attention_mask(L, block_len, window, device=x0.device)
    gen_device = env.generator_device(generator, x0.device)
    cuts = torch.randint(
        0, window - scored + 1, (B, L // window), generator=generator, device=gen_device
    ).to(x0.device)
    offset = (torch.arange(L, device=x0.device) % window)[None, :]  # (1, L)
    after = offset - cuts.repeat_interleave(window, dim=1)  # (B, L): positions past the cut
    x_t = x0.masked_fill(after >= 0, mask_id)
    logits = model(
        torch.cat([x_t, x0], dim=1),
        positions=torch.arange(L, device=x0.device).repeat(2),
        attn_mask=attn_mask,
    )[:, :L]
    return logits.to(torch.promote_types(logits.dtype, torch.float32)), after


def lookahead_loss(
    model: Denoiser,
    x0: torch.Tensor,
    *,
    window: int = WINDOW,
    scored: int = SCORED,
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean cross-entropy (nats per scored token, a scalar) of the true tokens at the first
    `scored` masked positions of each window (module docstring). Random numbers: one cut per
    window, uniform in 0 .. window - scored."""
    logits, after = _windows(model, x0, window, scored, mask_id, generator)
    score = (after >= 0) & (after < scored)
    return F.cross_entropy(logits[score], x0[score])


@torch.no_grad()
def guess_bits(
    model: Denoiser,
    x0: torch.Tensor,
    *,
    window: int = WINDOW,
    scored: int = SCORED,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Bits per token of the true tokens at 0, 1, ..., scored - 1 positions past the cut: the
    conditional (0), then the marginals the draft tree guesses from."""
    with eval_mode(model):
        logits, after = _windows(model, x0, window, scored, None, generator)
    nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # (B, L) nats
    return [nll[after == d].mean().item() / math.log(2) for d in range(scored)]


def bd3lm_lookahead_objective(
    model: Denoiser, batch: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training objective "bd3lm-lookahead" for `course_lib.train`: BD3-LM's loss plus the
    lookahead loss (nats per token each), for a block-causal model without the shift."""
    return bd3lm_objective(model, batch, generator) + lookahead_loss(
        model, batch[:, :-1], generator=generator
    )
