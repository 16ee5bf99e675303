"""Checks for notebook 08 (block diffusion and caching).

- `check_bd3lm_mask(fn)`: fn(length, block_len) -> the bool (2L, 2L) attention mask of
  BD3-LM's loss, noisy copy first, clean copy second, compared with
  `diffusion.bd3lm_attention_mask`.
- `check_forward_positions(fn)`: fn(length, block_len, steps_per_block, use_kv_cache) -> how
  many positions a block-causal model runs to decode one sequence block by block, with and
  without the exact KV cache of the finished blocks.
- `check_threshold_commit(fn)`: fn(conf, masked, tau) -> bool (B, L), the positions threshold
  decoding commits: every masked position whose confidence exceeds tau, and at least the most
  confident masked position of every sequence that still has one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from course_lib.checks._core import (
    CheckFailed,
    expect_attention_mask,
    expect_commit_mask,
    expect_inputs_unchanged,
    run_check,
)
from course_lib.diffusion import bd3lm_attention_mask

SOLUTIONS = (
    "The solutions are in notebooks/solutions/08_block_diffusion_and_caching_solutions.ipynb."
)


# -- exercise 1: the attention mask of BD3-LM's loss ------------------------------------------

_MASK_CASES = [(4, 2), (8, 4), (6, 3), (4, 4), (3, 1)]

# what each quadrant of the (2L, 2L) mask holds, by name: rows are queries, columns keys
_QUADRANTS = {
    ("noisy", "noisy"): "same",
    ("noisy", "clean"): "before",
    ("clean", "noisy"): "never",
    ("clean", "clean"): "same_or_before",
}

_QUADRANT_HINTS = {
    ("noisy", "noisy", "before"): (
        "a noisy token sees nothing of its own noisy block: inside a block attention is "
        "bidirectional, so noisy i sees noisy j when k(j) == k(i)"
    ),
    ("noisy", "noisy", "same_or_before"): (
        "a noisy token sees the NOISY copy of earlier blocks. When the sampler decodes block k, "
        "the blocks before it are finished, clean text: the noisy query must read the earlier "
        "blocks from the clean copy, and only its own block from the noisy copy (k(j) == k(i))"
    ),
    ("noisy", "noisy", "always"): (
        "a noisy token sees the whole noisy copy, later blocks included: it sees only its own "
        "noisy block (k(j) == k(i)); earlier blocks come from the clean copy"
    ),
    ("noisy", "noisy", "never"): (
        "a noisy token must see its own noisy block (k(j) == k(i)): that is where the unmasked "
        "tokens of the block it denoises are"
    ),
    ("noisy", "noisy", "diagonal"): (
        "a noisy token sees only itself in the noisy copy; it must see its whole block "
        "(k(j) == k(i)): the block is denoised jointly, bidirectionally"
    ),
    ("noisy", "clean", "same_or_before"): (
        "a noisy token sees the CLEAN copy of its own block: the answer it is asked to predict. "
        "The loss would fall to zero by copying. It sees clean tokens of earlier blocks only: "
        "k(j) < k(i), strictly"
    ),
    ("noisy", "clean", "same"): (
        "a noisy token sees the CLEAN copy of its own block (the answer it must predict) "
        "instead of the earlier blocks: use k(j) < k(i) for the noisy-to-clean quadrant"
    ),
    ("noisy", "clean", "always"): (
        "a noisy token sees the whole clean copy, its own block and later ones included: the "
        "answer it must predict. It sees clean blocks strictly before its own: k(j) < k(i)"
    ),
    ("noisy", "clean", "never"): (
        "a noisy token sees nothing of the clean copy, so block k is denoised without its "
        "context. It must see the clean blocks before its own (k(j) < k(i)): that is the "
        "finished text the sampler conditions on"
    ),
    ("clean", "noisy", "same"): (
        "a clean token sees the noisy copy of its block. The clean copy plays the finished "
        "blocks the sampler keeps in its KV cache, computed from clean text only: a clean "
        "token never sees a noisy one (that quadrant is all False)"
    ),
    ("clean", "noisy", "before"): (
        "a clean token sees noisy tokens of earlier blocks. The clean copy stands for finished "
        "text, computed from clean tokens only: the clean-to-noisy quadrant is all False"
    ),
    ("clean", "noisy", "same_or_before"): (
        "a clean token sees noisy tokens. The clean copy stands for finished text, computed "
        "from clean tokens only: the clean-to-noisy quadrant is all False"
    ),
    ("clean", "noisy", "always"): (
        "a clean token sees the noisy copy: the clean-to-noisy quadrant is all False (finished "
        "text is computed from clean tokens only)"
    ),
    ("clean", "clean", "always"): (
        "the clean copy is bidirectional, so a clean token of block j sees clean blocks after "
        "j. Then the keys and values that a noisy block-k token reads from block j < k carry "
        "block k's clean tokens: the answer leaks. Clean tokens are block-causal: k(j) <= k(i)"
    ),
    ("clean", "clean", "same"): (
        "a clean token sees only its own block; it must see the earlier clean blocks too "
        "(k(j) <= k(i)), exactly as the sampler's KV cache computed them, block by block"
    ),
    ("clean", "clean", "before"): (
        "a clean token does not see its own block (and a token of block 0 sees nothing at "
        "all, a softmax over nothing). Clean tokens are block-causal: k(j) <= k(i)"
    ),
    ("clean", "clean", "never"): (
        "the clean copy attends to nothing: a clean token sees clean blocks up to its own, "
        "k(j) <= k(i) (a row with no True at all is a softmax over nothing: nan)"
    ),
    ("clean", "clean", "diagonal"): (
        "a clean token sees only itself: it sees every clean token of its own and earlier "
        "blocks (k(j) <= k(i))"
    ),
}


def _patterns(length: int, block_len: int) -> dict[str, torch.Tensor]:
    block = torch.arange(length) // block_len
    return {
        "same": block[:, None] == block[None, :],
        "before": block[None, :] < block[:, None],
        "same_or_before": block[None, :] <= block[:, None],
        "never": torch.zeros(length, length, dtype=torch.bool),
        "always": torch.ones(length, length, dtype=torch.bool),
        "diagonal": torch.eye(length, dtype=torch.bool),
    }


def _quadrant(mask: torch.Tensor, rows: str, cols: str, length: int) -> torch.Tensor:
    r = slice(0, length) if rows == "noisy" else slice(length, 2 * length)
    c = slice(0, length) if cols == "noisy" else slice(length, 2 * length)
    return mask[r, c]


def _mask_hint(got: torch.Tensor, expected: torch.Tensor, length: int, block_len: int) -> str:
    n = length
    if torch.equal(got, expected.T):
        return (
            "your mask is transposed: rows are queries (who looks) and columns are keys (who "
            "is looked at)"
        )
    swapped = torch.cat(
        [torch.cat([got[n:, n:], got[n:, :n]], 1), torch.cat([got[:n, n:], got[:n, :n]], 1)]
    )
    if torch.equal(swapped, expected):
        return (
            "your halves are swapped: ids 0..L-1 are the NOISY copy and L..2L-1 the clean one "
            "(the loss feeds torch.cat([x_t, x0], dim=1))"
        )
    patterns = _patterns(length, block_len)
    for (rows, cols), right in _QUADRANTS.items():
        quadrant = _quadrant(got, rows, cols, length)
        if torch.equal(quadrant, patterns[right]):
            continue
        for name, pattern in patterns.items():
            hint = _QUADRANT_HINTS.get((rows, cols, name))
            if hint is not None and torch.equal(quadrant, pattern):
                return f"in the {rows}-to-{cols} quadrant, {hint}"
        q, k = (quadrant != patterns[right]).nonzero()[0].tolist()
        allowed = "may" if patterns[right][q, k] else "may not"
        return (
            f"{rows} token {q} (block {q // block_len}) {allowed} see {cols} token {k} (block "
            f"{k // block_len}). The rule: noisy sees noisy of its own block and clean of "
            "earlier blocks; clean sees clean of its own and earlier blocks, never noisy"
        )
    raise AssertionError("unreachable: the masks differ, so some quadrant does")


def _test_bd3lm_mask(fn) -> str:
    for length, block_len in _MASK_CASES:
        call = f"bd3lm_mask({length}, {block_len})"
        got = fn(length, block_len)
        expected = bd3lm_attention_mask(length, block_len)
        if isinstance(got, torch.Tensor) and got.shape == (length, length):
            raise CheckFailed(
                f"{call} has shape {tuple(got.shape)}: the loss reads 2L ids (the noisy copy, "
                f"then the clean copy), so the mask is ({2 * length}, {2 * length})."
            )
        layout = "one row per query, one column per key, over the 2L ids"
        expect_attention_mask(call, got, expected.shape, layout)
        if not torch.equal(got.cpu(), expected):
            raise CheckFailed(f"{call}: {_mask_hint(got.cpu(), expected, length, block_len)}.")
    return (
        "Each noisy block sees itself and the clean past; the clean copy is block-causal. One "
        "forward of 2L ids scores every block."
    )


def check_bd3lm_mask(fn: Callable) -> bool:
    """Check fn(length, block_len) -> bool (2L, 2L) against diffusion.bd3lm_attention_mask."""
    return run_check("bd3lm_mask", SOLUTIONS, lambda: _test_bd3lm_mask(fn))


# -- exercise 2: what the exact KV cache saves --------------------------------------------------


def forward_positions_reference(
    length: int, block_len: int, steps_per_block: int, use_kv_cache: bool
) -> int:
    """Positions a block-causal model runs to decode one sequence of `length` from scratch.

    Every block takes `steps_per_block` steps. With the cache each step runs the block's
    block_len positions, and each finished block but the last is committed by one more
    forward of block_len positions. Without it, a step of block k (from 0) runs blocks 0..k:
    (k + 1) * block_len positions.
    """
    n_blocks = length // block_len
    if use_kv_cache:
        return n_blocks * steps_per_block * block_len + (n_blocks - 1) * block_len
    return steps_per_block * block_len * n_blocks * (n_blocks + 1) // 2


_POSITION_CASES = [(128, 16, 16), (64, 16, 4), (48, 8, 3), (16, 16, 5), (32, 4, 1)]


def _position_mistakes(length, block_len, steps, use_kv_cache) -> list[tuple[int, str]]:
    n, b, S = length // block_len, block_len, steps
    if use_kv_cache:
        return [
            (
                n * S * b,
                "you left out the commits: after a block is finished, one more forward of its "
                "block_len positions writes its keys and values into the cache (the denoising "
                "steps used update_cache=False). Every finished block but the last is committed",
            ),
            (
                n * S * b + n * b,
                "you committed the last block too: nothing comes after it, so its keys and "
                "values are never needed. n_blocks - 1 commits",
            ),
            (
                n * b + (n - 1) * b,
                "each of the steps_per_block steps of a block runs the block once: multiply the "
                "block's positions by steps_per_block",
            ),
            (
                S * b * n * (n + 1) // 2,
                "that is the count WITHOUT the cache: with it, a step runs only the block being "
                "denoised (block_len positions), and the finished blocks are read from the cache",
            ),
        ]
    return [
        (
            n * S * length,
            "without a cache each step runs the finished blocks and the current one, not the "
            "whole sequence: a block-causal model never looks at the masked blocks to its "
            "right, so they are not run. Block k (from 0) runs (k + 1) * block_len positions",
        ),
        (
            S * b * n * (n - 1) // 2,
            "off by one block: a step of block k (counting from 0) runs blocks 0..k, that is "
            "k + 1 blocks, so the total is steps_per_block * block_len * n(n + 1) / 2",
        ),
        (
            b * n * (n + 1) // 2,
            "each of the steps_per_block steps of a block is a forward: multiply by "
            "steps_per_block",
        ),
        (
            S * b * n * (n + 1) // 2 + (n - 1) * b,
            "without a cache there is nothing to commit: a finished block is simply run again "
            "at every later step",
        ),
        (
            n * S * b + (n - 1) * b,
            "that is the count WITH the cache; without it, a step of block k runs blocks 0..k "
            "again: (k + 1) * block_len positions",
        ),
    ]


def _test_forward_positions(fn) -> str:
    for use_kv_cache in (True, False):
        for length, block_len, steps in _POSITION_CASES:
            call = f"forward_positions({length}, {block_len}, {steps}, use_kv_cache={use_kv_cache})"
            got = fn(length, block_len, steps, use_kv_cache)
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = got.item()
            if isinstance(got, bool) or not isinstance(got, (int, float)):
                raise CheckFailed(f"{call} returned {type(got).__name__}; return a number.")
            expected = forward_positions_reference(length, block_len, steps, use_kv_cache)
            if math.isclose(got, expected, rel_tol=0, abs_tol=1e-6):
                continue
            for value, hint in _position_mistakes(length, block_len, steps, use_kv_cache):
                if math.isclose(got, value, rel_tol=0, abs_tol=1e-6):
                    raise CheckFailed(f"{call} = {got}, expected {expected}: {hint}.")
            raise CheckFailed(
                f"{call} = {got}, expected {expected}. Count, block by block, the positions of "
                "every forward: the denoising steps, and (with the cache) the commits."
            )
    with_cache = forward_positions_reference(128, 16, 16, True)
    without = forward_positions_reference(128, 16, 16, False)
    return (
        f"128 tokens in blocks of 16, 16 steps each: {with_cache:,} positions with the cache, "
        f"{without:,} without ({without / with_cache:.1f}x). The cached cost grows like the "
        "length, the uncached one like its square."
    )


def check_forward_positions(fn: Callable) -> bool:
    """Check fn(length, block_len, steps_per_block, use_kv_cache) -> positions run."""
    return run_check("forward_positions", SOLUTIONS, lambda: _test_forward_positions(fn))


# -- exercise 3: the threshold commit rule -----------------------------------------------------


def threshold_commit_reference(
    conf: torch.Tensor, masked: torch.Tensor, tau: float
) -> torch.Tensor:
    """Every masked position with conf > tau, and the most confident masked one of each row."""
    ranked = conf.masked_fill(~masked, float("-inf"))  # (B, L): only masked positions compete
    best = torch.zeros_like(masked).scatter(1, ranked.argmax(1, keepdim=True), True)  # (B, L)
    return masked & ((conf > tau) | best)


def _commit_case() -> tuple[torch.Tensor, torch.Tensor]:
    """conf, masked (5, 6), no ties. Rows: several above 0.6; none above 0.6; nothing masked;
    an unmasked position the most confident of its row; exactly 0.6 at a masked position."""
    conf = torch.tensor(
        [
            [0.95, 0.20, 0.75, 0.61, 0.10, 0.85],
            [0.30, 0.55, 0.10, 0.45, 0.20, 0.05],
            [0.99, 0.90, 0.80, 0.10, 0.20, 0.30],
            [0.99, 0.40, 0.35, 0.97, 0.50, 0.15],
            [0.60, 0.93, 0.25, 0.70, 0.05, 0.15],
        ],
        dtype=torch.float64,
    )
    masked = torch.tensor(
        [
            [True, True, False, True, True, True],
            [True, True, True, True, True, False],
            [False, False, False, False, False, False],
            [False, True, True, False, True, True],
            [True, False, True, True, True, False],
        ]
    )
    return conf, masked


def _rows(commit: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in commit]


def _missing_hint(got, conf, masked, tau, missing, floor, above) -> str:
    """Why a position that threshold decoding commits was left out."""
    r, i = missing.nonzero()[0].tolist()
    if above[r, i]:
        return (
            f"in row {r}, position {i} is masked with confidence {conf[r, i]:.2f} > tau = "
            f"{tau}, but you did not commit it"
        )
    best_overall = int(conf[r].argmax())
    if not masked[r, best_overall]:
        return (
            f"row {r} exceeds tau nowhere, so its most confident MASKED position ({i}) must "
            f"be committed. Its most confident position overall ({best_overall}) is already "
            "unmasked: take the argmax after setting the confidence of unmasked positions "
            "to -inf"
        )
    needs_floor = masked.any(1) & ~above.any(1)  # (B,)
    if (needs_floor & (got & floor).any(1)).any():
        return (
            f"row {r} exceeds tau nowhere, and you committed nothing in it, though you did "
            "in another such row. The floor is one token per ROW (per sequence), not one "
            "for the whole batch: take the argmax along dim=1"
        )
    return (
        f"row {r} exceeds tau nowhere, and you committed nothing in it: commit at least its "
        f"most confident masked position ({i}), or the sampler makes no progress"
    )


def _commit_hint(fn, got, conf, masked, tau) -> str:
    expected = threshold_commit_reference(conf, masked, tau)
    if (got & ~masked).any():
        r, i = (got & ~masked).nonzero()[0].tolist()
        if not masked[r].any():
            return (
                f"row {r} has no masked position left, yet you committed position {i}. A row "
                "that is finished commits nothing (an argmax over all -inf still returns an "
                "index: keep only masked positions, e.g. `& masked` at the end)"
            )
        return (
            f"you committed position {i} of row {r}, which is not masked: only masked positions "
            "may be committed (unmasked ones already hold their final token). Restrict the rule "
            "to `masked`"
        )
    floor = threshold_commit_reference(conf, masked, 1.0)  # the most confident masked ones
    above = masked & (conf > tau)
    if torch.equal(got, floor) and not torch.equal(floor, expected):
        return (
            "you committed only the most confident masked position of each row. Threshold "
            f"decoding commits EVERY masked position whose confidence exceeds tau = {tau}, "
            "and falls back to the most confident one only to make progress"
        )
    if torch.equal(got, masked & (conf >= tau)) or torch.equal(
        got, (masked & (conf >= tau)) | floor
    ):
        return (
            f"a position whose confidence is exactly tau = {tau} was committed. 'Exceeds' is "
            "strictly greater, conf > tau (so that tau = 1.0 commits one token per step: "
            "confidence decoding)"
        )
    if torch.equal(got, above):
        probe = fn(conf.clone(), masked.clone(), 1.0)  # nothing exceeds 1: only the floor
        if isinstance(probe, torch.Tensor) and probe.shape == masked.shape and probe.sum() == 1:
            return (
                "rows in which no masked position exceeds tau committed nothing, and with "
                "tau = 1.0 your rule commits a single position in the whole batch. The floor "
                "is one token per ROW (per sequence) that still has a masked position: take "
                "the argmax along dim=1"
            )
        return (
            "a row in which no masked position exceeds tau committed nothing: the sampler would "
            "make no progress, step after step. Commit at least the most confident masked "
            "position of every row that still has one"
        )
    lower = masked & (conf < tau)
    if torch.equal(got, lower) or torch.equal(got, lower | floor):
        return (
            "you committed the positions whose confidence is BELOW tau: commit those that "
            "exceed it (conf > tau)"
        )
    missing = expected & ~got
    if missing.any():
        return _missing_hint(got, conf, masked, tau, missing, floor, above)
    r, i = (got & ~expected).nonzero()[0].tolist()
    return (
        f"in row {r} you committed position {i} (confidence {conf[r, i]:.2f}), which neither "
        f"exceeds tau = {tau} nor is the row's most confident masked position"
    )


def _run_commit(fn, conf, masked, tau) -> torch.Tensor:
    before = conf.clone(), masked.clone()
    call = f"threshold_commit(conf, masked, tau={tau})"
    got = fn(conf, masked, tau)
    expect_inputs_unchanged(call, (conf, masked), before)
    expect_commit_mask(call, got, masked, "x")
    return got


def _test_threshold_commit(fn) -> str:
    conf, masked = _commit_case()
    for tau in (0.6, 1.0, 0.0):
        got = _run_commit(fn, conf.clone(), masked.clone(), tau)
        expected = threshold_commit_reference(conf, masked, tau)
        if not torch.equal(got, expected):
            hint = _commit_hint(fn, got, conf, masked, tau)
            raise CheckFailed(
                f"with tau = {tau}: {hint}. (Expected positions {_rows(expected)} by row, "
                f"got {_rows(got)}.)"
            )
    counts = threshold_commit_reference(conf, masked, 0.6).sum(1).tolist()
    return (
        f"With tau = 0.6 the five test rows commit {counts} tokens: as many as the model is "
        "sure of, at least one while anything is masked. tau = 1.0 commits one per row: "
        "confidence decoding."
    )


def check_threshold_commit(fn: Callable) -> bool:
    """Check fn(conf, masked, tau) -> bool (B, L): masked & conf > tau, plus each row's best."""
    return run_check("threshold_commit", SOLUTIONS, lambda: _test_threshold_commit(fn))


# -- exercise 4 (debug): a block loop that forgets its cache ---------------------------------


def _tiny_block_model(seed: int):
    from course_lib.model import ModelConfig, Transformer

    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=12,
        context_len=24,
        n_layer=2,
        n_head=2,
        d_model=32,
        attention="block_causal",
        block_len=4,
        position="rotary",
    )
    model = Transformer(config).eval()
    with torch.no_grad():  # larger weights than at initialisation: tokens depend on context
        for weight in model.parameters():
            if weight.dim() >= 2:
                weight.mul_(3)
    return model


def _test_block_cache_fix(fn) -> str:
    from course_lib import sampling

    for seed, steps in ((0, 4), (1, 2), (2, 4)):
        model = _tiny_block_model(seed)
        with torch.inference_mode():
            try:
                got = fn(model, 24, 4, steps, torch.Generator().manual_seed(seed))
            except ValueError as err:
                if "longer than the model's context" not in str(err):
                    raise
                raise CheckFailed(
                    "the cache overflowed: the denoising steps wrote the block into the cache at "
                    "every step. Keep update_cache=False while the block is still changing"
                ) from err
            want = sampling.sample_block_diffusion(
                model,
                length=24,
                block_len=4,
                steps_per_block=steps,
                generator=torch.Generator().manual_seed(seed),
            ).tokens
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            raise CheckFailed("return the (1, length) ids, like the colleague's function")
        if torch.equal(got, want):
            continue
        if torch.equal(got[:, :4], want[:, :4]) and not torch.equal(got[:, 4:8], want[:, 4:8]):
            raise CheckFailed(
                "the first block is right and the second is not: when block 2 is denoised, "
                "what does the cache hold? A finished block must be written into it (one "
                "forward with update_cache left on) before the next block starts"
            )
        raise CheckFailed(
            f"with seed {seed} and {steps} steps per block your tokens differ from "
            "sample_block_diffusion's with the same seed. The denoising steps must see the "
            "finished blocks through the cache, and the block being denoised must stay out of it"
        )
    return (
        "Same tokens as sample_block_diffusion with the exact cache: each finished block is "
        "committed with one forward, and the block being denoised never enters the cache."
    )


def check_block_cache_fix(fn: Callable) -> bool:
    """Exercise 4 (debug). The fixed `block_decode(model, length, block_len, steps_per_block,
    generator)` -> (1, length) ids: the same tokens as `sampling.sample_block_diffusion` with
    its exact KV cache, same seed, on hidden tiny block-causal models."""
    return run_check("block_cache_fix", SOLUTIONS, lambda: _test_block_cache_fix(fn))
