"""Timing done honestly (notebook 00 introduces it; notebooks 09-10 rely on it).

A measurement warms up first (first calls pay for allocation, kernel selection and, on a
GPU, compilation), synchronises the device before reading the clock (GPU work is queued,
not finished, when a Python call returns), and reports the median of several runs with
their spread. Every result carries its protocol so a number is never printed without it.

The benchmark suites built on these timings (`python -m course_lib bench`) live in
`course_lib.bench_suites`: bench itself comes first in the course (notebook 00), the samplers
they measure much later (notebooks 08-10).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from course_lib import env
from course_lib.model import device_and_dtype, eval_mode


@dataclass
class Timing:
    """Seconds per call: the median of `repeats` runs after `warmup` discarded ones."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    warmup: int
    device: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.median_s * 1e3:.3f} ms (median of {self.repeats}, range "
            f"{self.min_s * 1e3:.3f}-{self.max_s * 1e3:.3f} ms, {self.warmup} warm-up, {self.device})"
        )


def time_fn(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = 10,
    device: torch.device | str = "cpu",
    min_time_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time `fn()`: `warmup` untimed calls, then `repeats` timed ones, each synchronised.

    With `min_time_s` > 0, each timed run calls `fn` enough times in a row to last at least
    that long and reports the time per call (for calls too short for the clock).
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup}, {repeats}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    env.synchronize(device)
    inner = 1
    if min_time_s > 0:
        start = clock()
        fn()
        env.synchronize(device)
        one = max(clock() - start, 1e-9)
        inner = max(1, int(min_time_s / one))
    times = []
    for _ in range(repeats):
        start = clock()
        for _ in range(inner):
            fn()
        env.synchronize(device)
        times.append((clock() - start) / inner)
    return Timing(
        median_s=statistics.median(times),
        min_s=min(times),
        max_s=max(times),
        repeats=repeats,
        warmup=warmup,
        device=str(device),
    )


@dataclass(frozen=True)
class Plan:
    """How a measurement times its calls: the one timing plan of the course's measurements
    (the benchmark suites and the measured ceilings). See `time_fn` for the fields."""

    warmup: int = 3
    repeats: int = 10
    min_time_s: float = 0.0
    clock: Callable[[], float] = time.perf_counter

    def time(self, fn: Callable[[], object], device: torch.device | str = "cpu") -> Timing:
        """`time_fn(fn)` under this plan."""
        return time_fn(
            fn,
            warmup=self.warmup,
            repeats=self.repeats,
            device=device,
            min_time_s=self.min_time_s,
            clock=self.clock,
        )

    def describe(self) -> dict:
        """The plan for a results file's protocol (the clock by name)."""
        return {
            "warmup": self.warmup,
            "repeats": self.repeats,
            "min_time_s": self.min_time_s,
            "clock": getattr(self.clock, "__name__", repr(self.clock)),
        }


def forward_time_vs_tokens(
    model: torch.nn.Module,
    token_counts: list[int],
    *,
    batch_size: int = 1,
    warmup: int = 3,
    repeats: int = 10,
) -> dict[int, Timing]:
    """Time one forward pass scoring `n` positions at once, for each n in `token_counts`.

    The course's first measurement (notebook 00): the time grows far more slowly than n,
    because every forward reads all the weights once, however many positions it scores.
    """
    device, _ = device_and_dtype(model)
    results = {}
    with eval_mode(model), torch.inference_mode():
        for n in token_counts:
            ids = torch.randint(0, model.config.vocab_size, (batch_size, n), device=device)
            results[n] = time_fn(
                lambda ids=ids: model(ids), warmup=warmup, repeats=repeats, device=device
            )
    return results


def profile(fn: Callable[[], object], *, row_limit: int = 15, sort_by: str | None = None) -> str:
    """Run `fn()` once under torch.profiler; its most expensive operators as a table.

    Notebook 09 starts here: before removing a cost, see where the time goes. Sorted by the
    operators' own time on the CPU (on the GPU with CUDA, where kernels run). The table is
    narrow (an operator, its share, its own time, its calls) so it reads without wrapping.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profiler_log_hidden(), torch_profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    where = "device" if cuda else "cpu"
    key = sort_by or f"self_{where}_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total_us = sum(getattr(e, f"self_{where}_time_total") for e in rows) or 1.0
    lines = [f"{'operator':<44} {'share':>6} {'self ' + where + ' time':>15} {'calls':>7}"]
    for e in rows[:row_limit]:
        own_us = getattr(e, f"self_{where}_time_total")
        name = e.key if len(e.key) <= 44 else e.key[:41] + "..."
        lines.append(f"{name:<44} {own_us / total_us:>6.1%} {own_us / 1e3:>12.2f} ms {e.count:>7}")
    lines.append(f"{'all operators':<44} {1:>6.1%} {total_us / 1e3:>12.2f} ms")
    return "\n".join(lines)


@contextlib.contextmanager
def profiler_log_hidden():
    """Keep the profiler's own log lines (written by C++ straight to file descriptor 2, e.g.
    "USDT: ... profiler_start") out of a notebook's output; anything else written there
    still comes through."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (an embedded interpreter): nothing to hide
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                if not line.startswith("USDT:")
            ]
            if kept:
                sys.stderr.write("".join(kept))
