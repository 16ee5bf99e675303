"""Checks for notebook 03 (the autoregressive baseline).

- `check_next_token_bits(fn)`: fn(model, batch) -> mean next-character cross-entropy in bits.
- `check_lr_schedule(fn)`: fn(step, cfg) -> learning rate, warm-up then cosine (`train.lr_at`).
- `check_temperature_probs(fn)`: fn(logits, temperature) -> probabilities softmax(logits / T).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from course_lib.checks._core import CheckFailed, as_number, close, run_check
from course_lib.train import TrainConfig, lr_at

SOLUTIONS = "The solutions are in notebooks/solutions/03_autoregressive_baseline_solutions.ipynb."


_close = functools.partial(close, rtol=1e-4, atol=1e-6)


def _as_number(value, what: str) -> float:
    return as_number(
        value,
        what,
        hint="the mean over every prediction: average with .mean()",
        finite="check for log(0) or an overflowing exp",
    )


# -- exercise 1: the next-token loss in bits --------------------------------------------------


def _bigram_model(vocab_size: int = 11, seed: int = 3) -> Callable[[torch.Tensor], torch.Tensor]:
    """A causal stand-in for a Transformer: logits (B, L, V) that depend on the current id."""
    table = 2.0 * torch.randn(vocab_size, vocab_size, generator=torch.Generator().manual_seed(seed))
    return lambda idx: table[idx]


def _sample_batch(model, vocab_size: int, batch_size: int, length: int) -> torch.Tensor:
    """(batch_size, length) ids drawn from `model` itself, so that it predicts them well."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch_size, 1), generator=generator)
    for _ in range(length - 1):
        probs = torch.softmax(model(ids[:, -1:])[:, -1], dim=-1)  # (B, V)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return ids


def _cross_entropy_bits(logits: torch.Tensor, targets: torch.Tensor) -> float:
    flat = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat, targets.reshape(-1)).item() / math.log(2)


def _test_next_token_bits(fn) -> str:
    vocab, batch_size, length = 11, 4, 9
    model = _bigram_model(vocab)
    batch = _sample_batch(model, vocab, batch_size, length + 1)  # (B, L + 1)
    expected = _cross_entropy_bits(model(batch[:, :-1]), batch[:, 1:])
    got = _as_number(fn(model, batch.clone()), "next_token_bits(model, batch)")
    if _close(got, expected):
        return (
            f"On the check's text, drawn from a random bigram model over {vocab} symbols, that "
            f"model costs {expected:.3f} bits per character (a uniform guess: log2({vocab}) = "
            f"{math.log2(vocab):.3f})."
        )
    n_predictions = batch_size * length
    ln2 = math.log(2)
    unshifted = [
        _cross_entropy_bits(model(batch[:, :-1]), batch[:, :-1]),
        _cross_entropy_bits(model(batch), batch),
        _cross_entropy_bits(model(batch[:, 1:]), batch[:, :-1]),
        _cross_entropy_bits(model(batch[:, 1:]), batch[:, 1:]),
    ]
    diagnoses = [
        (
            [expected * ln2],
            "your loss is in nats (natural logarithm): divide by math.log(2) to get bits",
        ),
        (
            [-expected, -expected * ln2],
            "your loss is negative: cross-entropy is MINUS the mean log-probability of the "
            "right next character",
        ),
        (
            [expected * n_predictions, expected * n_predictions * ln2],
            f"you summed -log p over all {n_predictions} predictions: average them (.mean()) so "
            "the number is per character",
        ),
        (
            [expected * length, expected * length * ln2],
            "you summed over the positions of each sequence: average over every prediction, "
            "positions and batch alike",
        ),
        (
            unshifted + [b * ln2 for b in unshifted],
            "each prediction must be scored against the NEXT character: feed batch[:, :-1] and "
            "compare logits[:, i] with batch[:, i + 1], i.e. targets = batch[:, 1:]",
        ),
    ]
    for candidates, hint in diagnoses:
        if any(_close(got, c) for c in candidates):
            raise CheckFailed(f"expected {expected:.4f} bits, got {got:.4f}: {hint}.")
    if got < 0:
        raise CheckFailed(
            f"expected {expected:.4f} bits, got {got:.4f}: -log p is never negative for a "
            "probability p <= 1. Take the log of probabilities (log_softmax over the last "
            "dimension, or F.cross_entropy), not of raw logits."
        )
    raise CheckFailed(
        f"expected {expected:.4f} bits per character on the check's batch, got {got:.4f}. Check "
        "that you (1) feed batch[:, :-1] and score against batch[:, 1:], (2) take log_softmax "
        "over the last dimension (or use F.cross_entropy on flattened logits), (3) average over "
        "every prediction and (4) convert to base 2."
    )


def check_next_token_bits(fn: Callable) -> bool:
    """Check fn(model, batch) -> mean -log2 p(batch[:, i+1] | batch[:, :i+1]) over all i."""
    return run_check("next_token_bits", SOLUTIONS, lambda: _test_next_token_bits(fn))


# -- exercise 2: warm-up then cosine ----------------------------------------------------------


def _cosine_lr(
    step: int,
    cfg: TrainConfig,
    *,
    warmup_from_zero=False,
    progress_from_start=False,
    to_zero=False,
    half_cosine=True,
    clamp=True,
) -> float:
    """`train.lr_at` with one of the usual mistakes switched on (all off: lr_at itself)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step if warmup_from_zero else step + 1) / cfg.warmup_steps
    if progress_from_start:
        progress = step / cfg.steps
    else:
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, progress) if clamp else progress
    cosine = math.cos(math.pi * progress)
    cosine = 0.5 * (1 + cosine) if half_cosine else cosine
    floor = 0.0 if to_zero else cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * cosine)


_LR_MISTAKES = [
    (
        {"warmup_from_zero": True},
        "at step 0 your learning rate is 0, so the first update does nothing. Steps are "
        "counted from 0: warm up as lr * (step + 1) / warmup_steps",
    ),
    (
        {"to_zero": True},
        "your schedule decays to 0, but it should end at lr * min_lr_ratio: use "
        "lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine)",
    ),
    (
        {"progress_from_start": True},
        "the cosine should start where the warm-up ends: measure its progress as "
        "(step - warmup_steps) / (steps - warmup_steps), not step / steps",
    ),
    (
        {"half_cosine": False},
        "cos(pi * progress) runs from 1 down to -1, so your rate goes below its floor: use "
        "0.5 * (1 + cos(pi * progress)), which runs from 1 down to 0",
    ),
    (
        {"clamp": False},
        "after cfg.steps your rate rises again: clamp the progress at 1 (min(1.0, progress)) "
        "so that a run continued past its plan stays at the floor",
    ),
]


def _test_lr_schedule(fn) -> str:
    configs = [
        TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1),
        TrainConfig(steps=40, warmup_steps=0, lr=3e-4, min_lr_ratio=0.2),
    ]
    for cfg in configs:
        steps = list(range(cfg.steps + 10))
        try:
            got = [_as_number(fn(step, cfg), f"lr_schedule({step}, cfg)") for step in steps]
        except ZeroDivisionError as err:
            raise CheckFailed(
                f"division by zero with warmup_steps={cfg.warmup_steps}: with no warm-up, go "
                "straight to the cosine (only steps < warmup_steps are warm-up steps)."
            ) from err
        expected = [lr_at(step, cfg) for step in steps]
        if all(_close(g, e) for g, e in zip(got, expected, strict=True)):
            continue
        for mistake, hint in _LR_MISTAKES:
            wrong = [_cosine_lr(step, cfg, **mistake) for step in steps]
            if all(_close(g, w) for g, w in zip(got, wrong, strict=True)):
                raise CheckFailed(f"{hint}.")
        step = next(s for s, g, e in zip(steps, got, expected, strict=True) if not _close(g, e))
        phase = "warm-up" if step < cfg.warmup_steps else "cosine"
        raise CheckFailed(
            f"with steps={cfg.steps}, warmup_steps={cfg.warmup_steps}, lr={cfg.lr}, "
            f"min_lr_ratio={cfg.min_lr_ratio}: at step {step} ({phase} phase) expected "
            f"{expected[step]:.4g}, got {got[step]:.4g}. Warm-up: lr * (step + 1) / warmup_steps; "
            "then lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + cos(pi * progress)))."
        )
    return "Your schedule matches course_lib.train.lr_at."


def check_lr_schedule(fn: Callable) -> bool:
    """Check fn(step, cfg) -> the learning rate of `train.lr_at` (warm-up, then cosine)."""
    return run_check("lr_schedule", SOLUTIONS, lambda: _test_lr_schedule(fn))


# -- exercise 3: temperature ------------------------------------------------------------------


def _temperature_hint(got: torch.Tensor, logits: torch.Tensor, temperature: float) -> str:
    """What a wrong answer `got` (float64, the logits' shape) most likely did."""

    def same(reference: torch.Tensor) -> bool:
        return torch.allclose(got, reference.double(), atol=1e-5)

    if same(logits / temperature):
        return (
            "you returned the scaled logits; turn them into probabilities with a softmax over "
            "the last dimension"
        )
    if same(torch.softmax(logits.double() * temperature, dim=-1)):
        return (
            "you multiplied the logits by the temperature; divide them instead, so that T > 1 "
            "flattens the distribution and T < 1 sharpens it"
        )
    if same(torch.softmax(logits.double(), dim=-1)):
        return (
            "your probabilities do not change with the temperature. Divide the LOGITS by T "
            "before the softmax (dividing the probabilities by T and renormalising changes "
            "nothing)"
        )
    sums = got.sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        return (
            "each row should sum to 1 (a distribution over the vocabulary, the last dimension), "
            "but your rows sum to " + ", ".join(f"{x:.3g}" for x in sums.tolist())
        )
    worst = (got - torch.softmax(logits.double() / temperature, dim=-1)).abs().max().item()
    return (
        f"your probabilities are off by up to {worst:.3g}; expected softmax(logits / temperature) "
        "over the last dimension"
    )


def _test_temperature_probs(fn) -> str:
    logits = 3.0 * torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    logits[0] = torch.tensor([1000.0, 999.0, 990.0, 0.0, -5.0, 3.0, 1.0])  # exp() overflows
    for temperature in (1.0, 0.5, 2.0):
        got = fn(logits.clone(), temperature)
        where = f"at temperature {temperature}"
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"return a tensor of probabilities, got {type(got).__name__}")
        if got.shape != logits.shape:
            raise CheckFailed(
                f"{where}: the probabilities should have the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(got.shape)}"
            )
        got = got.double()
        if not torch.isfinite(got).all():
            raise CheckFailed(
                f"{where}: your probabilities contain nan or inf for logits near 1000, where "
                "exp() overflows: subtract each row's max logit before exp, or use torch.softmax."
            )
        expected = torch.softmax(logits.double() / temperature, dim=-1)
        if not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
            raise CheckFailed(f"{where}: {_temperature_hint(got, logits, temperature)}.")
    return "T < 1 sharpens the distribution, T > 1 flattens it, T = 1 leaves it alone."


def check_temperature_probs(fn: Callable) -> bool:
    """Check fn(logits, temperature) -> softmax(logits / temperature) over the last dimension."""
    return run_check("temperature_probs", SOLUTIONS, lambda: _test_temperature_probs(fn))


# -- exercise 4 (derive): the KV cache's size -------------------------------------------------


def check_kv_cache_bytes(fn: Callable) -> bool:
    """Exercise 4 (derive). fn(n_layer, d_model, n_positions, batch_size, bytes_per_value) ->
    the bytes a full KV cache holds: every layer keeps a key and a value vector of d_model
    numbers for every position of every sequence. Checked on hidden shapes, one of them
    against the buffers `Transformer.new_cache` really allocates."""
    from course_lib.model import ModelConfig, Transformer

    cases = [(4, 256, 128, 1, 4), (32, 4096, 4096, 1, 2), (24, 2048, 2048, 8, 2), (2, 64, 16, 3, 8)]

    def test() -> str:
        got = [as_number(fn(*c), f"fn{c}") for c in cases]
        want = [2 * n_layer * d * n * b * s for n_layer, d, n, b, s in cases]
        if all(close(g, w) for g, w in zip(got, want, strict=True)):
            config = ModelConfig(n_layer=3, d_model=64, n_head=4, context_len=32)
            cache = Transformer(config).new_cache(2)
            allocated = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
            mine = as_number(fn(3, 64, 32, 2, 4), "fn(3, 64, 32, 2, 4)")
            if not close(mine, allocated):
                raise CheckFailed(
                    f"new_cache(2) of a 3-layer, d=64, 32-position float32 model allocates "
                    f"{allocated:,} bytes; your function says {mine:,.0f}"
                )
            seven_b = want[1] / 2**30
            return (
                f"A 7B-shaped model (32 layers, d=4096) keeps {seven_b:.0f} GiB for one sequence "
                "of 4,096 positions in bfloat16: at long contexts and large batches the cache, "
                "not the weights, fills the memory, and every decode step reads it."
            )
        slips = [
            (
                lambda L, d, n, b, s: L * d * n * b * s,
                "a layer keeps two vectors per position: a key AND a value",
            ),
            (lambda L, d, n, b, s: 2 * d * n * b * s, "every layer has its own keys and values"),
            (
                lambda L, d, n, b, s: 2 * L * d * n * s,
                "every sequence of the batch has its own cache",
            ),
            (
                lambda L, d, n, b, s: 2 * L * d * n * b,
                "you counted numbers, not bytes: multiply by bytes_per_value",
            ),
        ]
        for slip, hint in slips:
            if all(close(g, slip(*c)) for g, c in zip(got, cases, strict=True)):
                raise CheckFailed(hint + ".")
        case, g, w = next(
            (c, g, w) for c, g, w in zip(cases, got, want, strict=True) if not close(g, w)
        )
        raise CheckFailed(
            f"for (n_layer, d_model, n_positions, batch_size, bytes_per_value) = {case} you "
            f"returned {g:,.0f} bytes, expected {w:,}. What does one layer store per position?"
        )

    return run_check("kv_cache_bytes", SOLUTIONS, test)


# -- exercise 5 (predict, then run): what the cache buys here ---------------------------------


def check_cache_speedup_prediction(prediction, measured_speedup) -> bool:
    """Exercise 5 (predict, then run). `prediction`: the KV cache's speed-up when generating
    120 characters, written before the timing; right within 40% of `measured_speedup`."""

    def test() -> str:
        if prediction is ...:
            raise NotImplementedError
        guess = as_number(prediction, "prediction")
        measured = as_number(measured_speedup, "measured_speedup")
        if abs(guess - measured) <= 0.4 * measured:
            return (
                f"Measured x{measured:.1f}: far less than the positions saved. A forward over a "
                "few dozen positions costs barely more than one over a single position here."
            )
        if guess > 3 * measured:
            raise CheckFailed(
                f"measured x{measured:.1f}, against your x{guess:g}: you counted positions. "
                "Notebook 00 timed a forward over many positions against one over a single "
                "position: at these sizes time grows far more slowly than positions"
            )
        raise CheckFailed(
            f"measured x{measured:.1f}, against your x{guess:g}. The cache saves positions, and "
            "a long prefix still costs something; see notebook 00's forward timings"
        )

    return run_check("cache_speedup_prediction", SOLUTIONS, test)
