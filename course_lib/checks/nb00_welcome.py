"""Checks for notebook 00 (welcome): timing honestly, and the memory-vs-compute bound.

- `check_timer(measure)`: warm-up excluded, device synchronised before every clock read,
  the median of the timed runs returned. The check runs `measure` against a fake device whose
  work is queued (like a GPU's) and only finishes when `sync()` is called.
- `check_forward_time_bound(forward_time_bound)`: the larger of the time to read every weight
  once and the time to do 2 FLOPs per weight per scored token.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from course_lib.checks._core import CheckFailed, run_check

SOLUTIONS = "The solutions are in notebooks/solutions/00_welcome_solutions.ipynb."


class _FakeDevice:
    """A device whose work runs asynchronously: `run()` queues work, `sync()` waits for it.

    The clock only moves when queued work finishes, so a timer that reads the clock without
    synchronising first sees (almost) no time pass, exactly the mistake on a real GPU.
    """

    def __init__(self, durations: list[float]) -> None:
        self.durations = list(durations)
        self.now = 100.0
        self.queued = 0.0
        self.runs = 0
        self.clock_reads = 0
        self.syncs = 0

    def run(self) -> None:
        if self.runs < len(self.durations):
            self.queued += self.durations[self.runs]
        self.runs += 1

    def clock(self) -> float:
        self.clock_reads += 1
        return self.now

    def sync(self) -> None:
        self.syncs += 1
        self.now += self.queued
        self.queued = 0.0


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _timer_cases(measure: Callable) -> str:
    def case(warm: list[float], timed: list[float]) -> tuple[float, str]:
        device = _FakeDevice(warm + timed)
        result = measure(
            device.run, warmup=len(warm), repeats=len(timed), clock=device.clock, sync=device.sync
        )
        where = f"(warmup={len(warm)}, repeats={len(timed)}, run times {warm + timed} s)"
        if device.runs != len(warm) + len(timed):
            raise CheckFailed(
                f"measure called fn {device.runs} times {where}; it should call it "
                f"warmup + repeats = {len(warm) + len(timed)} times: warm-up calls first "
                "(untimed), then one call per timed run."
            )
        if device.clock_reads == 0:
            raise CheckFailed(
                "measure never called `clock()`: read the time with the `clock` argument, not "
                "time.perf_counter() directly (the check passes a fake clock)."
            )
        if device.syncs == 0:
            raise CheckFailed(
                "measure never called `sync()`. On a GPU a call returns before its work is "
                "done: call sync() after the warm-up and after each timed call, before reading "
                "the clock."
            )
        try:
            value = float(result)
        except (TypeError, ValueError) as err:
            raise CheckFailed(
                f"measure returned {result!r}; it should return one number, the median time "
                "per call in seconds."
            ) from err
        return value, where

    # Case 1: slow warm-up, one straggler, times not in order.
    warm, timed = [9.0, 9.0], [3.0, 1.0, 50.0, 2.0, 2.0]
    value, where = case(warm, timed)
    expected = _median(timed)
    if not math.isclose(value, expected, rel_tol=1e-9):
        wrong = {
            0.0: "no time passed between your clock reads: the work was still queued. Call "
            "sync() after each timed call and before reading the clock.",
            sum(timed) / len(timed): "that is the mean: one slow run (50 s) drags it up. "
            "Return the median of the timed runs.",
            sum(timed): "that is the total of the timed runs; return the median time per run.",
            timed[len(timed) // 2]: "that is the middle run in the order they ran; sort the "
            "times before taking the middle one (or use statistics.median).",
            _median(warm + timed): "the warm-up runs were counted: time only the `repeats` "
            "runs after the warm-up.",
        }
        hint = next((h for w, h in wrong.items() if math.isclose(value, w, rel_tol=1e-9)), None)
        raise CheckFailed(
            f"measure returned {value:g} s {where}, expected the median {expected:g} s. "
            + (hint or "Time each run after the warm-up on its own, then take the median.")
        )

    # Case 2: an even number of runs: the median is the mean of the two middle ones.
    value, where = case([], [4.0, 1.0, 3.0, 2.0])
    if not math.isclose(value, 2.5, rel_tol=1e-9):
        hint = (
            "with an even number of runs the median is the mean of the two middle ones "
            "(statistics.median does that)."
            if value in (2.0, 3.0)
            else "take the median of the per-run times."
        )
        raise CheckFailed(f"measure returned {value:g} s {where}, expected 2.5 s: {hint}")

    # Case 3: a single timed run after a long warm-up.
    value, where = case([7.0, 7.0, 7.0], [0.5])
    if not math.isclose(value, 0.5, rel_tol=1e-9):
        hint = (
            "your timed run included the warm-up's queued work: call sync() after the "
            "warm-up, before the first clock read."
            if math.isclose(value, 21.5, rel_tol=1e-9)
            else "with one timed run, the median is that run's time."
        )
        raise CheckFailed(f"measure returned {value:g} s {where}, expected 0.5 s: {hint}")

    return "Warm-up excluded, device synchronised, median reported: bench.time_fn's protocol."


def check_timer(measure: Callable) -> bool:
    """Check `measure(fn, *, warmup, repeats, clock, sync)`: the median seconds per call."""
    return run_check("timer", SOLUTIONS, lambda: _timer_cases(measure))


def _bound_variants(
    n_params: float, n_tokens: float, bytes_per_param: float, bandwidth: float, flops: float
) -> tuple[float, dict[str, float]]:
    """The right answer, and the typical wrong ones keyed by the hint that explains each."""
    memory = n_params * bytes_per_param / bandwidth
    compute = 2 * n_params * n_tokens / flops
    return max(memory, compute), {
        "you added the two times; the weights stream in while the arithmetic runs, so the "
        "slower of the two sets the pace: take the max, not the sum.": memory + compute,
        "you took the smaller of the two times; a forward cannot finish before BOTH its reads "
        "and its arithmetic are done: take the max.": min(memory, compute),
        "the compute time is 2x too small: every weight does a multiply AND an add per "
        "scored token, 2 FLOPs, so compute = 2 * n_params * n_tokens / flops_per_s.": max(
            memory, compute / 2
        ),
        "the memory time ignores bytes_per_param: reading the weights moves n_params * "
        "bytes_per_param bytes.": max(n_params / bandwidth, compute),
        "the memory time counts bits, not bytes: bandwidth is in bytes per second, so read "
        "n_params * bytes_per_param bytes (no factor 8).": max(8 * memory, compute),
        "the memory time grows with n_tokens, but a forward reads each weight ONCE however "
        "many tokens it scores: memory = n_params * bytes_per_param / bandwidth.": max(
            memory * n_tokens, compute
        ),
        "you returned only the memory time; when a forward scores many tokens the arithmetic "
        "takes longer than the reads: return max(memory, compute).": memory,
        "you returned only the compute time; with few tokens, reading the weights takes "
        "longer than the arithmetic: return max(memory, compute).": compute,
    }


def _bound_cases(forward_time_bound: Callable) -> str:
    cases = [
        # (n_params, n_tokens, bytes_per_param, bandwidth B/s, FLOP/s), what it shows
        ((1e9, 1, 2, 1e12, 1e15), "one token: memory-bound"),
        ((1e9, 10_000, 2, 1e12, 1e15), "10,000 tokens: compute-bound"),
        ((3e6, 64, 4, 5e10, 2e11), "a small float32 model on a CPU"),
        ((1e9, 1_000, 2, 1e12, 1e15), "the crossover: both times equal"),
    ]
    values = []
    for args, _ in cases:
        result = forward_time_bound(*args)
        try:
            values.append(float(result))
        except (TypeError, ValueError) as err:
            raise CheckFailed(
                f"forward_time_bound returned {result!r}; it should return seconds as a number."
            ) from err
    answers = [_bound_variants(*args) for args, _ in cases]
    variants = [wrong for _, wrong in answers]
    for (args, what), value, (expected, variant) in zip(cases, values, answers, strict=True):
        if math.isclose(value, expected, rel_tol=1e-6):
            continue
        # the mistake that explains every case, else one that explains this case
        matches = [
            h
            for h in variant
            if all(
                math.isclose(v, w[h], rel_tol=1e-6) for v, w in zip(values, variants, strict=True)
            )
        ] or [h for h in variant if math.isclose(value, variant[h], rel_tol=1e-6)]
        hint = (
            matches[0]
            if matches
            else (
                "time = max(n_params * bytes_per_param / bandwidth, "
                "2 * n_params * n_tokens / flops_per_s)."
            )
        )
        shown = ", ".join(f"{a:g}" for a in args)
        raise CheckFailed(
            f"forward_time_bound({shown}) ({what}) returned {value:.4g} s, expected "
            f"{expected:.4g} s: {hint}"
        )
    return "Below the crossover, reading the weights sets the time; above it, the arithmetic."


def check_forward_time_bound(forward_time_bound: Callable) -> bool:
    """Check `forward_time_bound(n_params, n_tokens, bytes_per_param, bandwidth, flops_per_s)`."""
    return run_check("forward time bound", SOLUTIONS, lambda: _bound_cases(forward_time_bound))
