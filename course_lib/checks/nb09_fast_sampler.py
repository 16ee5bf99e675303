"""Checks for notebook 09 (the fast sampler).

- `check_amdahl_speedup(fn)`: fn(fraction, factor) -> the speedup of a whole run when a part
  that takes `fraction` of its time is made `factor` times faster (Amdahl's law).
- `check_vectorized_commit(fn)`: fn(conf, masked, quota) -> bool (B, b), the `quota[i]` most
  confident masked positions of every row i, for all rows at once: no Python loop over the
  rows and no value read back from a tensor (each would be a device-to-host sync on a GPU).
- `check_static_cache_write(fn)`: fn(cache, new, positions) writes `new` (B, H, T, D) into the
  preallocated `cache` (B, H, capacity, D) at the positions tensor `positions` (T,), in place
  and without turning the positions into Python numbers (gpt-fast's static KV cache).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from course_lib.checks._core import (
    CheckFailed,
    as_number,
    expect_commit_mask,
    expect_inputs_unchanged,
    run_check,
)

SOLUTIONS = "The solutions are in notebooks/solutions/09_fast_sampler_solutions.ipynb."


# -- watching a function: how many tensor calls it makes, and whether it reads values back ------

# the ways Python reads a tensor's value (on a GPU, each waits for the device to catch up)
_READS = {
    torch.Tensor.__bool__: "bool(tensor) or `if tensor:`",
    torch.Tensor.__int__: "int(tensor)",
    torch.Tensor.__float__: "float(tensor)",
    torch.Tensor.__index__: "a tensor as a Python index or range",
    torch.Tensor.item: ".item()",
    torch.Tensor.tolist: ".tolist()",
    torch.Tensor.numpy: ".numpy()",
}


class _TensorCalls(TorchFunctionMode):
    """Counts the tensor functions and methods called from Python (attribute reads excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name != "__get__":  # .shape, .dtype, ...: no work, no dispatch
            self.calls += 1
        if func in _READS:
            self.reads.append(_READS[func])
        return func(*args, **(kwargs or {}))


class _ScalarReads(TorchDispatchMode):
    """Counts values read out of tensors at the operator level (a slice bound such as
    x[: n] with a tensor n reads it without a Python-level call)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _watched(fn: Callable, *args) -> tuple[object, int, str]:
    """fn(*args), the number of tensor calls it made, and how it read values back ("" if not)."""
    with _TensorCalls() as calls, _ScalarReads() as scalars:
        out = fn(*args)
    if calls.reads:
        reads = ", ".join(sorted(set(calls.reads)))
    else:
        reads = "a tensor used where Python needs a number, such as a slice bound" * bool(
            scalars.count
        )
    return out, calls.calls, reads


# why a read matters, for the hints
_SYNC = (
    "On a GPU every such read stops the CPU until the device has finished all the work queued "
    "so far (a host-device synchronisation), and a CUDA graph cannot contain it."
)


# -- exercise 1: Amdahl's law ---------------------------------------------------------------------

_AMDAHL_CASES = [(0.5, 2.0), (0.9, 10.0), (0.75, 3.0), (0.2, math.inf), (0.0, 5.0), (1.0, 4.0)]


def amdahl_reference(fraction: float, factor: float) -> float:
    """1 / ((1 - fraction) + fraction / factor); factor = inf removes the part."""
    return 1.0 / ((1.0 - fraction) + fraction / factor)


_AMDAHL_MISTAKES = [
    (
        lambda f, s: (1 - f) + f / s,
        "you returned the new run time as a fraction of the old one, (1 - fraction) + "
        "fraction / factor. The speedup is old time / new time: its reciprocal",
    ),
    (
        lambda f, s: 1 / ((1 - f) / s + f),
        "you made the OTHER part faster: the part that takes `fraction` of the time is divided "
        "by factor, the remaining 1 - fraction stays as it is",
    ),
    (
        lambda f, s: f * s + (1 - f),
        "speedups do not combine by weighting them with the fractions: add up the new TIMES, "
        "(1 - fraction) + fraction / factor, and divide the old time (1) by their sum",
    ),
    (
        lambda f, s: s / f,
        "you left out the part that was not sped up: it still takes (1 - fraction) of the old "
        "time. New time = (1 - fraction) + fraction / factor",
    ),
    (
        lambda f, s: 1 / (1 - f),
        "that is only the limit when the part costs nothing at all (factor = inf). For a "
        "finite factor the part still takes fraction / factor of the old time",
    ),
    (
        lambda f, s: s,
        "the whole run is only `factor` times faster if the part is the whole run "
        "(fraction = 1); the rest of the run keeps its time",
    ),
]


def _test_amdahl(fn) -> str:
    for fraction, factor in _AMDAHL_CASES:
        expected = amdahl_reference(fraction, factor)
        got = as_number(fn(fraction, factor), f"amdahl_speedup({fraction}, {factor})")
        if math.isclose(got, expected, rel_tol=1e-6):
            continue
        if math.isnan(got) and math.isinf(factor):
            raise CheckFailed(
                f"amdahl_speedup({fraction}, math.inf) is nan: with factor = inf the part takes "
                "no time at all. Divide (fraction / factor is 0.0 for an infinite factor) rather "
                "than multiplying by factor (inf * 0 and inf / inf are nan)."
            )
        for mistake, hint in _AMDAHL_MISTAKES:
            try:
                same = all(
                    math.isclose(as_number(fn(f, s), ""), mistake(f, s), rel_tol=1e-6)
                    for f, s in _AMDAHL_CASES[:3]
                )
            except (ZeroDivisionError, CheckFailed):
                same = False
            if same:
                raise CheckFailed(f"{hint}.")
        raise CheckFailed(
            f"amdahl_speedup({fraction}, {factor}) should be {expected:.4f}, got {got:.4f}. The "
            "old run takes 1; the new one takes (1 - fraction) + fraction / factor; the speedup "
            "is the ratio."
        )
    return (
        f"A part taking 90% of the time made 10x faster gives {amdahl_reference(0.9, 10):.2f}x; "
        f"removed entirely, {amdahl_reference(0.9, math.inf):.0f}x at most: what is left sets "
        "the limit."
    )


def check_amdahl_speedup(fn: Callable) -> bool:
    """Check fn(fraction, factor) -> 1 / ((1 - fraction) + fraction / factor)."""
    return run_check("amdahl_speedup", SOLUTIONS, lambda: _test_amdahl(fn))


# -- exercise 2: committing every row's quota at once ---------------------------------------------


def commit_reference(conf: torch.Tensor, masked: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """The quota[i] most confident masked positions of each row i: bool (B, b)."""
    ranked = conf.masked_fill(~masked, float("-inf"))  # unmasked positions never compete
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices  # (B, b)
    ranks = torch.arange(conf.shape[1], device=conf.device)  # (b,) rank of each sorted slot
    return torch.zeros_like(masked).scatter(1, order, ranks[None, :] < quota[:, None])


def _fixed_commit_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """conf, masked (5, 8) without ties, quota (5,): row 0's most confident position is
    already unmasked; row 3 commits everything it has; quotas differ between rows."""
    generator = torch.Generator().manual_seed(9)
    conf = 0.05 + 0.9 * torch.rand(5, 8, dtype=torch.float64, generator=generator)
    masked = torch.tensor(
        [
            [1, 1, 0, 1, 0, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [0, 1, 0, 1, 1, 0, 1, 1],
            [0, 0, 1, 0, 1, 0, 0, 1],
            [1, 0, 1, 1, 1, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    conf[0, 2] = 0.99  # unmasked, and the most confident of its row
    quota = torch.tensor([2, 1, 3, 3, 4])
    return conf, masked, quota


def _random_commit_case(batch: int, b: int, seed: int):
    """A random case: distinct confidences, at least one masked position per row, quotas
    from 1 to the row's masked count."""
    generator = torch.Generator().manual_seed(seed)
    conf = torch.rand(batch, b, dtype=torch.float64, generator=generator)
    masked = torch.rand(batch, b, generator=generator) < 0.6
    masked[torch.arange(batch), torch.randint(0, b, (batch,), generator=generator)] = True
    n_masked = masked.sum(1)
    quota = (torch.rand(batch, generator=generator) * n_masked).long() + 1  # 1..n_masked
    return conf, masked, quota


def _rows(commit: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in commit]


def _commit_hint(got, conf, masked, quota) -> str:
    expected = commit_reference(conf, masked, quota)
    counts, wanted = got.sum(1), quota
    if not torch.equal(counts, wanted):
        if torch.equal(counts, wanted + 1):
            return (
                "every row committed one position more than its quota: the positions ranked "
                "0, 1, ..., quota - 1 are committed, so compare ranks < quota (not <=)"
            )
        if torch.equal(counts, wanted - 1):
            return (
                "every row committed one position fewer than its quota: ranks start at 0, so "
                "the committed ones are those with rank < quota"
            )
        if (counts == counts[0]).all():
            return (
                f"every row committed {int(counts[0])} positions, but the quotas differ from "
                f"row to row ({quota.tolist()}): compare each row's ranks with its own quota, "
                "quota[:, None]"
            )
    wrong_unmasked = got & ~masked
    if wrong_unmasked.any():
        r, i = wrong_unmasked.nonzero()[0].tolist()
        return (
            f"you committed position {i} of row {r}, which is not masked: it already holds its "
            "final token. Only masked positions compete: give the others a confidence of "
            "-inf first (conf.masked_fill(~masked, float('-inf')))"
        )
    if not torch.equal(counts, wanted):
        r = int((counts != wanted).nonzero()[0])
        return f"row {r} committed {int(counts[r])} positions; its quota is {int(quota[r])}"
    least = commit_reference(-conf, masked, quota)
    if torch.equal(got, least):
        return (
            "you committed the LEAST confident masked positions: sort the confidences in "
            "descending order (or take topk's largest), so the surest come first"
        )
    r = int((got != expected).any(1).nonzero()[0])
    return (
        f"in row {r} the {int(quota[r])} most confident masked positions are "
        f"{_rows(expected[r : r + 1])[0]}, you committed {_rows(got[r : r + 1])[0]}"
    )


def _run_commit(fn, conf, masked, quota):
    before = conf.clone(), masked.clone(), quota.clone()
    call = "commit_most_confident(conf, masked, quota)"
    got, calls, reads = _watched(fn, conf, masked, quota)
    expect_inputs_unchanged(call, (conf, masked, quota), before)
    expect_commit_mask(call, got, masked, "block")
    return got, calls, reads


def _test_vectorized_commit(fn) -> str:
    cases = [_fixed_commit_case(), _random_commit_case(16, 12, 0), _random_commit_case(3, 32, 1)]
    for conf, masked, quota in cases:
        got, _, _ = _run_commit(fn, conf, masked, quota)
        if not torch.equal(got, commit_reference(conf, masked, quota)):
            raise CheckFailed(f"{_commit_hint(got, conf, masked, quota)}.")
    _, small_calls, reads = _run_commit(fn, *_random_commit_case(4, 16, 2))
    if reads:
        raise CheckFailed(
            f"your function reads tensor values back into Python ({reads}). {_SYNC} Keep the "
            "quota on the device: sort each row, and compare the rank of every sorted slot "
            "with quota[:, None]."
        )
    _, big_calls, _ = _run_commit(fn, *_random_commit_case(64, 16, 3))
    if big_calls > small_calls:
        raise CheckFailed(
            f"your function makes {small_calls} tensor calls for 4 rows and {big_calls} for 64: "
            "it loops over the rows in Python. Each call is a dispatch from Python (and a "
            "kernel launch on a GPU), so the cost grows with the batch. Work on all rows at "
            "once: one sort along dim=1, one comparison with quota[:, None], one scatter."
        )
    return (
        f"{small_calls} tensor calls for 4 rows or for 64, and no value read back: the step "
        "costs the same number of launches at any batch size, and the host never waits."
    )


def check_vectorized_commit(fn: Callable) -> bool:
    """Check fn(conf, masked, quota) -> bool (B, b): each row's quota of its most confident
    masked positions, with no loop over rows and no host reads."""
    return run_check("vectorized_commit", SOLUTIONS, lambda: _test_vectorized_commit(fn))


# -- exercise 4: writing into a static KV cache ---------------------------------------------------

# (batch, heads, capacity, head_dim), positions: a block, the last slot (an AR step), all slots
_CACHE_CASES = [
    ((2, 3, 16, 4), torch.arange(4, 8)),
    ((2, 3, 16, 4), torch.tensor([15])),
    ((1, 2, 8, 5), torch.arange(0, 8)),
]


def _test_cache_write(fn) -> str:
    for (B, H, capacity, D), positions in _CACHE_CASES:
        T = len(positions)
        cache = torch.arange(B * H * capacity * D, dtype=torch.float32).view(B, H, capacity, D)
        before = cache.clone()
        new = -1.0 - torch.rand(B, H, T, D, generator=torch.Generator().manual_seed(T))
        new_before, positions_before = new.clone(), positions.clone()
        address = cache.data_ptr()
        call = f"write_kv(cache {tuple(cache.shape)}, new {tuple(new.shape)}, positions {positions.tolist()})"
        _, _, reads = _watched(fn, cache, new, positions)
        if not torch.equal(new, new_before) or not torch.equal(positions, positions_before):
            raise CheckFailed(f"{call} changed `new` or `positions`: only the cache may change.")
        if reads:
            raise CheckFailed(
                f"{call} turned the positions into Python numbers ({reads}). {_SYNC} A "
                "compiled or graph-captured step would also keep the numbers it saw the first "
                "time and write every later step into the same slots. Index with the tensor "
                "itself: cache.index_copy_(2, positions, new)."
            )
        if cache.data_ptr() != address:
            raise CheckFailed(
                f"{call} replaced the cache's storage (e.g. cache.set_ or a resize): a static "
                "cache keeps its memory for the whole run; write into it."
            )
        expected = before.clone()
        expected[:, :, positions] = new
        if torch.equal(cache, expected):
            continue
        if torch.equal(cache, before):
            raise CheckFailed(
                f"{call} left the cache unchanged. Did you build a new tensor (torch.cat, "
                "cache.clone(), `cache = ...`)? The caller keeps the preallocated cache, so "
                "write into it, in place: cache.index_copy_(2, positions, new) or "
                "cache[:, :, positions] = new."
            )
        others = torch.ones(capacity, dtype=torch.bool)
        others[positions] = False
        if not torch.equal(cache[:, :, others], before[:, :, others]):
            if (cache[:, :, others] == 0).all():
                raise CheckFailed(
                    f"{call} erased the slots it was not asked to write (they hold zeros now): "
                    "those are the keys and values of earlier positions, which later steps "
                    "still attend to. Write only at `positions`."
                )
            raise CheckFailed(
                f"{call} changed slots outside positions {positions.tolist()}. The positions "
                "index dimension 2 of the cache (B, H, capacity, D); write there and nowhere "
                "else."
            )
        raise CheckFailed(
            f"{call} wrote the right slots but not the values of `new` in them: slot "
            "positions[j] gets new[:, :, j] (same batch, head and head-dim order)."
        )
    return (
        "One in-place write at a positions tensor: the same code serves every step, so it can "
        "be compiled once and captured in a CUDA graph once."
    )


def check_static_cache_write(fn: Callable) -> bool:
    """Check fn(cache, new, positions): new (B, H, T, D) written in place into cache
    (B, H, capacity, D) at positions (T,), without reading positions back."""
    return run_check("static_cache_write", SOLUTIONS, lambda: _test_cache_write(fn))


# -- exercise 3 (predict, then run): what the KV cache buys ----------------------------------


def check_kv_cache_prediction(prediction, measured_speedup, positions_factor) -> bool:
    """Exercise 3 (predict, then run). `prediction`: the learner's speed-up of the kv_cache
    stage over the reference, written before it was timed; `measured_speedup` the timed one,
    `positions_factor` how many times fewer positions the cached forwards run. Right within
    35% of the measurement (the point is the reasoning, not the decimals)."""

    def test() -> str:
        if prediction is ...:
            raise NotImplementedError
        guess = as_number(prediction, "prediction", finite=True)
        measured = as_number(measured_speedup, "measured_speedup", finite=True)
        factor = as_number(positions_factor, "positions_factor", finite=True)
        if abs(guess - measured) <= 0.35 * measured:
            return (
                f"Measured x{measured:.2f} against your x{guess:.2f}: the network's share of "
                "the step shrank, the sampler's own work did not, and a forward of a block "
                "costs more than its share of positions."
            )
        if guess >= 0.9 * factor:
            raise CheckFailed(
                f"you predicted x{guess:.2f}, close to the {factor:.2f}x fewer positions; the "
                f"run measured x{measured:.2f}. Two things do not shrink with the positions: "
                "the sampler's own work between forwards (Amdahl: only the network's share "
                "gets faster) and each forward's fixed cost, which a 16-position forward pays "
                "in full (notebook 00)"
            )
        direction = "too high" if guess > measured else "too low"
        raise CheckFailed(
            f"you predicted x{guess:.2f}, {direction}: the run measured x{measured:.2f}. Put "
            "the network's share of the reference (section 3) and the timed forwards of the "
            "cell above into Amdahl's law (exercise 1)"
        )

    return run_check("kv_cache_prediction", SOLUTIONS, test)


# -- exercise 5 (debug): a timer that flatters nobody ------------------------------------------


class _FakeRun:
    """A call whose cost is scripted on a fake clock: a slow first call (allocation,
    compilation), steady calls after it, and one slow call in the middle (another process)."""

    def __init__(self, costs):
        self.now, self.costs, self.calls = 0.0, list(costs), 0

    def clock(self) -> float:
        return self.now

    def __call__(self) -> None:
        self.now += self.costs[min(self.calls, len(self.costs) - 1)]
        self.calls += 1


def _test_timer_fix(fn) -> str:
    steady = 0.010
    scripts = [
        [0.500, steady, steady, 0.080, steady, steady, steady, steady, steady],
        [2.000, 0.020, 0.021, 0.019, 0.300, 0.020, 0.020, 0.020, 0.020],
    ]
    for costs in scripts:
        run = _FakeRun(costs)
        got = as_number(fn(run, 5, run.clock), "seconds_per_call")
        want = statistics.median(costs[1:6])  # after the warm-up call, 5 timed calls
        if abs(got - want) <= 0.05 * want:
            continue
        first_in = (sum(costs[:5]) / 5, statistics.median(costs[:5]))
        if any(abs(got - f) <= 1e-9 for f in first_in):
            raise CheckFailed(
                f"the first call ({costs[0] * 1e3:.0f} ms on this fake clock: allocation, "
                "compilation) is inside your timing. Call fn once before you start the clock"
            )
        if abs(got - sum(costs[1:6]) / 5) <= 1e-9:
            raise CheckFailed(
                "warm-up excluded, but one slow call (another process took the core) moves "
                "your mean: report the median of the timed calls, as bench.time_fn does"
            )
        raise CheckFailed(
            f"on a scripted run whose steady calls take {costs[1] * 1e3:.0f} ms you returned "
            f"{got * 1e3:.1f} ms; time each call on its own, after one warm-up call, and "
            "return the median"
        )
    return (
        "One warm-up call outside the clock, each call timed on its own, the median: the "
        "protocol of bench.time_fn (which also synchronises the device before reading the clock)."
    )


def check_timer_fix(fn: Callable) -> bool:
    """Exercise 5 (debug). The fixed `seconds_per_call(fn, repeats, clock)`: one untimed
    warm-up call, then `repeats` calls each timed on its own, and their median. Checked on
    scripted runs on a fake clock (a slow first call, one slow call among the timed ones)."""
    return run_check("timer_fix", SOLUTIONS, lambda: _test_timer_fix(fn))
