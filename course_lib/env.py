"""The course's environment: fast mode, device choice, seeding, data folder, a report.

Introduced in notebook 00. Everything else in `course_lib` asks this module which device to
use and whether it runs in fast mode, so one environment variable changes the whole course:

- ``COURSE_FAST=1`` (set by the test suite): tiny runs, shipped checkpoints downstream.
- ``COURSE_DEVICE=cpu|cuda|cuda:1|mps``: overrides the automatic device choice.
- ``COURSE_DATA_DIR=/some/path``: where checkpoints, results and the download cache live.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

FAST: bool = os.environ.get("COURSE_FAST", "0").strip().lower() in {"1", "true", "yes"}

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
DATA_DIR: Path = Path(os.environ.get("COURSE_DATA_DIR", REPO_ROOT / "data")).resolve()


def shown_path(path: str | Path) -> str:
    """`path` as a notebook or a message prints it: relative to the course's folder when it
    lies inside (`data/runs/ar-small`), so no output names the folders of one machine."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def get_device(name: str | None = None) -> torch.device:
    """The device the course runs on: `name`, else $COURSE_DEVICE, else CUDA, else CPU.

    Apple's MPS is used only when asked for by name, with a warning: some operations the
    course relies on (float64 sampling among them) are missing or slow there.
    """
    requested = name if name is not None else os.environ.get("COURSE_DEVICE")
    if requested is None or requested.strip() == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    requested = requested.strip().lower()
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ValueError(
            f"unknown device {requested!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps' "
            "(or unset COURSE_DEVICE to choose automatically)"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {requested!r} was requested but this PyTorch sees no CUDA GPU; "
                "use 'cpu' or unset COURSE_DEVICE"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {requested!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        return device
    if device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' was requested but MPS is not available; use 'cpu'")
        warnings.warn(
            "running on Apple MPS: float64 sampling falls back to the CPU and timings are not "
            "comparable with the course's CPU and CUDA numbers",
            stacklevel=2,
        )
        return device
    if device.type == "cpu":
        return device
    raise ValueError(f"unknown device {requested!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (every device); return a CPU generator seeded the same.

    Library functions that draw random numbers take an explicit `generator`; seeding the
    global state as well makes model initialisation reproducible.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def generator_device(
    generator: torch.Generator | None, default: torch.device | str
) -> torch.device:
    """Where random numbers are drawn: `generator`'s own device, or `default` without one (a
    CPU generator draws on the CPU even for a model on a GPU, so the same seed gives the same
    numbers on every machine)."""
    return generator.device if generator is not None else torch.device(default)


def synchronize(device: torch.device | str) -> None:
    """Wait until all queued work on `device` has finished (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def cpu_has_bf16_units() -> bool:
    """Whether the CPU advertises native bfloat16 arithmetic (AVX-512 BF16 or AMX on x86)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


@functools.cache
def bf16_speedup_on_cpu(size: int = 512, repeats: int = 5) -> float:
    """Measured float32-time / bfloat16-time of a `size`^3 matmul on this CPU (cached).

    A CPU without bfloat16 units emulates it, usually slower than float32; one with them
    (about 4x on the course's AVX-512 BF16 EPYC development machine) runs it much faster.
    """

    def best_time(dtype: torch.dtype) -> float:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    return best_time(torch.float32) / best_time(torch.bfloat16)


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype to autocast training and inference to on `device`, or None for float32.

    bfloat16 on CUDA GPUs that support it, and on CPUs whose bfloat16 matmuls measure at
    least 1.5x faster than float32; float32 everywhere else. ``COURSE_BF16=0`` turns it off.
    """
    if os.environ.get("COURSE_BF16", "1").strip().lower() in {"0", "false", "no"}:
        return None
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16_units() and bf16_speedup_on_cpu() >= 1.5 else None
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None, *, cache_enabled=True):
    """The course's one way to autocast: `torch.autocast` to `dtype` on `device`'s type, or
    nothing when `dtype` is None (float32). `cache_enabled=False` while capturing a CUDA
    graph, which the autocast cache would break."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype, cache_enabled=cache_enabled)


def describe_environment(device: torch.device | str | None = None) -> dict:
    """A dict describing this machine and software: printed in notebooks, saved with results."""
    device = get_device() if device is None else torch.device(device)
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "fast_mode": FAST,
        "cuda_available": torch.cuda.is_available(),
        "cpu_bf16_units": cpu_has_bf16_units(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
