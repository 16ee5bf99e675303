"""Rooflines: when a decoding step is memory-bound, and why diffusion's extra positions are
nearly free at batch 1 (notebook 10).

A forward pass reads every weight once, however many positions it scores. An AR decode step
scores one position per sequence, ~2 FLOPs per weight read: at batch 1 it sits far under the
memory roof. A diffusion step scores many positions per weight read; over a few tens of
positions it is still under the memory roof, so its extra positions cost almost nothing, and
the speed-up over AR is (tokens committed per forward) x (AR step time / diffusion step time).
Only as positions x batch grow does a step reach the ridge and become compute-bound.
This module puts numbers on that:

1. `measure_ceilings`: this machine's matmul FLOP/s per dtype, main-memory and cache-resident
   copy bandwidth, the bandwidth a matrix-vector product attains, and the fixed cost of a
   tiny forward (the overhead floor small models hit).
2. `datasheet_ceilings`: the same ceilings from a GPU datasheet (`course_lib.hardware.CATALOG`).
3. `forward_cost` and friends: analytic FLOPs and bytes of one forward (AR decode step,
   diffusion step, block-diffusion step) and their arithmetic intensity.
4. `plot_roofline`: measured ceilings solid, datasheet ceilings dashed, measured points.
5. `predict_step_time` / `predict_sampling`: time per step = max(compute, memory) + overhead,
   hence tokens/s of a sampler; `measure_*` and `check_performance_model` check it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import bench, env
from course_lib.hardware import HardwareSpec
from course_lib.model import ModelConfig, Transformer, eval_mode, forward_flops

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

MiB = 2**20
BYTES_PER_ELEMENT = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
_FALLBACK_CACHE_BYTES = 4 * MiB  # used when the cache size cannot be read (e.g. macOS)


def dtype_name(dtype: torch.dtype | str) -> str:
    """'float32', 'bfloat16', ... for a torch dtype or its name."""
    name = str(dtype).removeprefix("torch.")
    if name not in BYTES_PER_ELEMENT:
        raise ValueError(f"unsupported dtype {dtype!r}: use one of {sorted(BYTES_PER_ELEMENT)}")
    return name


# ----------------------------------------------------------------------------------------
# 1. Measured ceilings
# ----------------------------------------------------------------------------------------


@dataclass
class Overhead:
    """Fixed seconds of one forward whatever its size: `call_s` once plus `per_layer_s` per block.

    Python dispatch and kernel launches; fitted from a tiny model at two depths.
    """

    call_s: float
    per_layer_s: float

    def seconds(self, n_layer: int) -> float:
        return self.call_s + n_layer * self.per_layer_s


@dataclass
class Ceilings:
    """What one device can do, measured (`measure_ceilings`) or from a datasheet (`datasheet_ceilings`).

    Rates are per second; bandwidths count bytes read plus bytes written.
    """

    device: str
    matmul_flops: dict[str, float]  # FLOP/s of a large square matmul, per dtype name
    memory_bandwidth: float  # bytes/s, a copy far larger than the cache
    cache_bandwidth: float  # bytes/s, a copy that fits in the last-level cache
    cache_bytes: int  # last-level cache of a CPU, L2 of a GPU
    matvec_bandwidth: dict[str, float]  # weight bytes/s a 1-row matmul reads, weights in memory
    matvec_cache_bandwidth: dict[str, float]  # the same, weights resident in the cache
    overhead: Overhead  # a forward without a KV cache
    cached_overhead: Overhead  # a forward that appends to a KV cache
    overhead_overlaps: bool = False  # GPUs: the host queues kernels while the device runs
    # FLOP/s of matmuls with few rows (a decode step's batch, a block's positions) through
    # the weight stacks of the matrix-vector bandwidths: dtype -> {rows: FLOP/s}. Empty: the
    # large-matmul peak is assumed for every row count (datasheet ceilings).
    rows_flops: dict[str, dict[int, float]] = field(default_factory=dict)  # weights in memory
    rows_cache_flops: dict[str, dict[int, float]] = field(default_factory=dict)  # in the cache
    protocol: dict = field(default_factory=dict)

    def __post_init__(self) -> None:  # JSON keys are strings: make the row counts ints again
        for name in ("rows_flops", "rows_cache_flops"):
            table = getattr(self, name)
            setattr(
                self,
                name,
                {k: {int(r): float(v) for r, v in rows.items()} for k, rows in table.items()},
            )

    def compute_peak(self, dtype: torch.dtype | str) -> float:
        """Matmul FLOP/s for `dtype` ("tf32" too, where measured)."""
        name = "tf32" if dtype == "tf32" else dtype_name(dtype)
        if name not in self.matmul_flops:
            raise ValueError(
                f"no {name} matmul ceiling for {self.device} (measured: "
                f"{sorted(self.matmul_flops)}); predict with one of those dtypes"
            )
        return self.matmul_flops[name]

    def matmul_rate(
        self, dtype: torch.dtype | str, rows: int, *, weights_in_cache: bool = False
    ) -> float:
        """FLOP/s of a matmul that pushes `rows` rows through the weights (rows >= 1).

        Interpolated (log-log) between the measured row counts, and from the largest of them
        up to the large-matmul peak at `protocol["matmul_n"]` rows; the peak where nothing
        was measured. A 1-row matmul runs at a fraction of the peak (it waits on memory), and
        the rate climbs with the rows until the arithmetic units are busy.
        """
        peak = self.compute_peak(dtype)
        name = "tf32" if dtype == "tf32" else dtype_name(dtype)
        table = (self.rows_cache_flops if weights_in_cache else self.rows_flops).get(name)
        if not table:
            return peak
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        points = sorted(table.items())
        n_peak = int(self.protocol.get("matmul_n", 0))
        if n_peak > points[-1][0]:
            points.append((n_peak, max(peak, points[-1][1])))
        if rows <= points[0][0]:
            return points[0][1]
        for (r0, f0), (r1, f1) in itertools.pairwise(points):
            if rows <= r1:
                w = math.log(rows / r0) / math.log(r1 / r0)
                return math.exp((1 - w) * math.log(f0) + w * math.log(f1))
        return points[-1][1]

    def ridge_point(self, dtype: torch.dtype | str = "float32") -> float:
        """FLOP/byte above which a kernel is compute-bound (main-memory roof)."""
        return self.compute_peak(dtype) / self.memory_bandwidth

    def to_dict(self) -> dict:
        return asdict(self)


def cache_size_bytes(device: torch.device | str) -> int | None:
    """The last-level cache of the CPU (from Linux sysfs) or the L2 of a CUDA GPU, or None."""
    device = torch.device(device)
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", None) or None
    if device.type != "cpu":
        return None
    best_level, best_size = 0, None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip()  # e.g. "32768K"
        except (OSError, ValueError):
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        size = int(text.rstrip("KMG")) * scale
        if level > best_level:
            best_level, best_size = level, size
    return best_size


def _matmul_dtypes(device: torch.device) -> list[str]:
    if device.type == "cuda":
        names = ["float32"]
        if torch.cuda.get_device_capability(device) >= (8, 0):
            names.append("tf32")
        if torch.cuda.is_bf16_supported():
            names.append("bfloat16")
        return [*names, "float16"]
    if device.type == "cpu":  # bfloat16 only where the CPU has the units (else it is emulated)
        return ["float32", "bfloat16"] if env.cpu_has_bf16_units() else ["float32"]
    return ["float32", "float16"]


def _storage_dtype(name: str) -> torch.dtype:
    return torch.float32 if name == "tf32" else getattr(torch, name)


def _time(fn: Callable[[], object], device: torch.device, plan: dict) -> float:
    timing = bench.time_fn(
        fn,
        warmup=plan["warmup"],
        repeats=plan["repeats"],
        device=device,
        min_time_s=plan["min_time_s"],
        clock=plan["clock"],
    )
    return timing.median_s


def _matmul_flops(n: int, name: str, device: torch.device, plan: dict) -> float:
    a = torch.randn(n, n, device=device).to(_storage_dtype(name))  # (n, n)
    b = torch.randn(n, n, device=device).to(_storage_dtype(name))
    if device.type != "cuda":
        return 2 * n**3 / _time(lambda: a @ b, device, plan)
    previous = torch.get_float32_matmul_precision()
    # "tf32": float32 storage on TF32 tensor cores; "float32": IEEE float32 ("highest")
    torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    try:
        return 2 * n**3 / _time(lambda: a @ b, device, plan)
    finally:
        torch.set_float32_matmul_precision(previous)


def _copy_bandwidth(n_bytes: int, device: torch.device, plan: dict) -> float:
    src = torch.full((n_bytes // 4,), 0.5, device=device)  # float32
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _time(lambda: dst.copy_(src), device, plan)


def _weight_stack(
    total_bytes: int, matrix_bytes: int, name: str, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """MLP-shaped weight pairs, (4d, d) then (d, 4d), each about `matrix_bytes`, in all
    about `total_bytes`: what the matmuls of a forward read."""
    dtype = _storage_dtype(name)
    size = BYTES_PER_ELEMENT[dtype_name(dtype)]
    d = max(64, int(math.sqrt(matrix_bytes / (4 * size))) // 64 * 64)
    pairs = max(1, round(total_bytes / (8 * d * d * size)))
    return [
        (
            torch.full((4 * d, d), 0.01, device=device, dtype=dtype),
            torch.full((d, 4 * d), 0.01, device=device, dtype=dtype),
        )
        for _ in range(pairs)
    ]


def _stack_seconds(
    weights: list[tuple[torch.Tensor, torch.Tensor]], rows: int, device, plan: dict
) -> float:
    """Median seconds to push `rows` rows through every pair of `weights`."""
    up = weights[0][0]
    x = torch.full((rows, up.shape[1]), 0.5, device=device, dtype=up.dtype)  # (rows, d)

    def forward_like() -> None:
        for up, down in weights:
            F.linear(F.linear(x, up), down)  # (rows, 4d) then (rows, d)

    return _time(forward_like, device, plan)


def _matvec_and_rows(
    total_bytes: int,
    matrix_bytes: int,
    name: str,
    device: torch.device,
    plan: dict,
    rows: Sequence[int],
) -> tuple[float, dict[int, float]]:
    """Matrix-vector bandwidth (weight bytes/s of 1-row matmuls) and FLOP/s per row count.

    One row through a stack of weights is the access pattern of an AR decode step at batch
    1: every weight read once for 2 FLOPs. More rows reuse each weight read, and the rate
    climbs towards the large-matmul peak.
    """
    weights = _weight_stack(total_bytes, matrix_bytes, name, device)
    n_weights = sum(up.numel() + down.numel() for up, down in weights)
    n_bytes = n_weights * weights[0][0].element_size()
    seconds = {m: _stack_seconds(weights, m, device, plan) for m in sorted({1, *rows})}
    return n_bytes / seconds[1], {m: 2 * m * n_weights / t for m, t in seconds.items()}


def _tiny_forward_seconds(n_layer: int, device: torch.device, *, cached: bool, plan: dict) -> float:
    """Median seconds of a 1-token forward of a d=8 model of `n_layer` blocks."""
    config = ModelConfig(
        context_len=8,
        n_layer=n_layer,
        n_head=1,
        d_model=8,
        attention="causal" if cached else "bidirectional",
    )
    model = Transformer(config).to(device).eval()
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)  # (B=1, L=1)
    with torch.inference_mode():
        if not cached:
            return _time(lambda: model(ids), device, plan)
        cache = model.new_cache(1)
        model(ids, cache=cache)  # one cached position to attend to
        return _time(lambda: model(ids, cache=cache, update_cache=False), device, plan)


def _tiny_forward_overhead(device: torch.device, *, cached: bool, plan: dict) -> Overhead:
    """Fit call + per-layer overhead from tiny forwards at two depths (1 and 4 blocks)."""
    shallow, deep = 1, 4
    t_shallow = _tiny_forward_seconds(shallow, device, cached=cached, plan=plan)
    t_deep = _tiny_forward_seconds(deep, device, cached=cached, plan=plan)
    per_layer = max(0.0, (t_deep - t_shallow) / (deep - shallow))
    return Overhead(call_s=max(0.0, t_shallow - shallow * per_layer), per_layer_s=per_layer)


ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # row counts of the few-row matmul rates
QUICK_ROWS = (1, 4, 16, 64, 256)


def measure_ceilings(
    device: torch.device | str | None = None,
    *,
    quick: bool = env.FAST,
    clock: Callable[[], float] = time.perf_counter,
) -> Ceilings:
    """Measure this device's ceilings with `bench.time_fn` (warm-up, synchronise, median).

    - matmul FLOP/s of an n x n x n product per dtype (CPU: n=1024 quick / 2048 full; GPU:
      4096 / 8192). bfloat16 on a CPU only where it has bfloat16 units; on GPUs from Ampere
      on, "tf32" is float32 storage with TF32 tensor cores and "float32" is IEEE float32.
    - main-memory bandwidth: a copy of >= 4x the cache (CPU 64 / 256 MiB, GPU 0.5 / 2 GiB),
      counting bytes read plus written; cache bandwidth: a copy filling half the cache.
    - matrix-vector bandwidth: the weight bytes per second 1-row matmuls read through a stack
      of MLP-shaped weights (4d x d, d x 4d), in main memory (each matrix a quarter of the
      cache, >= 4x the cache in all) and resident in the cache (4 pairs, half of it).
      An AR decode step is made of these; a CPU's BLAS often reads weights far slower than a
      copy moves them.
    - few-row matmul FLOP/s: the same stacks with 1 to 256 rows (`ROWS`; `QUICK_ROWS` in
      quick mode): a decode step at batch B pushes B rows, a block step B x block rows.
    - overhead: 1-token forwards of a d=8 model at 1 and 4 layers, with and without a KV cache.

    Quick mode takes a few seconds on 2 CPU cores; full mode under a minute. On a CPU shared
    with other work, `torch.set_num_threads(1)` and `clock=time.process_time` (CPU seconds
    instead of wall seconds) give steadier numbers; use the same in `check_performance_model`.
    """
    device = env.get_device(None if device is None else str(device))
    gpu = device.type == "cuda"
    plan = {
        "warmup": 1 if quick else 3,
        "repeats": 3 if quick else 7,
        "min_time_s": 0.01 if quick else 0.05,
        "clock": clock,
    }
    detected = cache_size_bytes(device)
    cache_bytes = detected if detected else _FALLBACK_CACHE_BYTES
    n = (4096 if quick else 8192) if gpu else (1024 if quick else 2048)
    big = max(((512 if quick else 2048) if gpu else (64 if quick else 256)) * MiB, 4 * cache_bytes)
    small = max(64 * 2**10, cache_bytes // 4)  # src and dst together fill half the cache

    names = _matmul_dtypes(device)
    matmul = {name: _matmul_flops(n, name, device, plan) for name in names}
    stored = [name for name in names if name != "tf32"]
    matrix = max(cache_bytes // 4, 64 * MiB if gpu else 0)  # big enough to hide launches
    rows = QUICK_ROWS if quick else ROWS
    matvec, matvec_cache, rows_flops, rows_cache_flops = {}, {}, {}, {}
    for name in stored:
        matvec[name], rows_flops[name] = _matvec_and_rows(big, matrix, name, device, plan, rows)
        # 4 pairs filling half the cache, as a model that fits in it
        matvec_cache[name], rows_cache_flops[name] = _matvec_and_rows(
            cache_bytes // 2, cache_bytes // 16, name, device, plan, rows
        )
    memory = _copy_bandwidth(big, device, plan)
    cache = _copy_bandwidth(small, device, plan)
    overhead = _tiny_forward_overhead(device, cached=False, plan=plan)
    cached_overhead = _tiny_forward_overhead(device, cached=True, plan=plan)
    if gpu:
        torch.cuda.empty_cache()
    return Ceilings(
        device=str(device),
        matmul_flops=matmul,
        memory_bandwidth=memory,
        cache_bandwidth=cache,
        cache_bytes=cache_bytes,
        matvec_bandwidth=matvec,
        matvec_cache_bandwidth=matvec_cache,
        overhead=overhead,
        cached_overhead=cached_overhead,
        overhead_overlaps=gpu,
        rows_flops=rows_flops,
        rows_cache_flops=rows_cache_flops,
        protocol={
            **{k: v for k, v in plan.items() if k != "clock"},
            "clock": getattr(clock, "__name__", repr(clock)),
            "matmul_n": n,
            "copy_bytes_each": big,
            "matvec_matrix_bytes": matrix,
            "cache_copy_bytes_each": small,
            "cache_bytes_source": "detected" if detected else "unknown, assumed 4 MiB",
            "overhead_model": "ModelConfig(d_model=8, n_head=1), 1 token, 1 and 4 layers",
            "quick": quick,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    )


def datasheet_ceilings(
    spec: HardwareSpec, overhead: Overhead | None = None, cached_overhead: Overhead | None = None
) -> Ceilings:
    """Datasheet ceilings in `Ceilings` form, to extrapolate the performance model.

    Assumes an ideal matrix-vector kernel (it reads weights at the full memory bandwidth)
    and, as datasheets give no L2 bandwidth, cache traffic at memory bandwidth. The
    overhead defaults to zero: pass a measured one (e.g. with CUDA graphs) to include it.
    """
    overhead = overhead or Overhead(0.0, 0.0)
    bandwidth = spec.memory_bandwidth.value
    stored = {k: bandwidth for k in spec.flops if k != "tf32"}
    return Ceilings(
        device=f"{spec.name} (datasheet)",
        matmul_flops={k: v.value for k, v in spec.flops.items()},
        memory_bandwidth=bandwidth,
        cache_bandwidth=bandwidth,
        cache_bytes=int(spec.cache_bytes.value),
        matvec_bandwidth=stored,
        matvec_cache_bandwidth=dict(stored),
        overhead=overhead,
        cached_overhead=cached_overhead or overhead,
        overhead_overlaps=True,
        protocol={"source": "datasheet"},
    )


# ----------------------------------------------------------------------------------------
# 3. Analytic FLOPs and bytes of one forward
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepCost:
    """FLOPs and bytes of one forward that scores `new_tokens` positions of `batch_size`
    sequences after `context` cached ones. Bytes are the unfused (eager PyTorch) traffic.
    """

    kind: str
    batch_size: int
    new_tokens: int
    context: int
    n_layer: int
    dtype: str
    uses_cache: bool
    flops: int
    weight_bytes: int  # every weight read once per forward
    kv_bytes: int  # cached keys/values read plus new ones written
    activation_bytes: int  # every op's input read and output written once
    layer_activation_bytes: int  # the same for one block: decides whether it stays in cache

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte moved."""
        return self.flops / self.bytes


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _config_key(config: ModelConfig) -> tuple:
    return tuple(sorted(config.to_dict().items()))


@functools.lru_cache(maxsize=64)
def _weights_read(key: tuple) -> int:
    with torch.device("meta"):  # the model's own parameter count, without allocating it
        return Transformer(ModelConfig(**dict(key))).num_params(non_embedding=True)


def forward_cost(
    config: ModelConfig,
    *,
    batch_size: int,
    new_tokens: int,
    context: int = 0,
    uses_cache: bool = False,
    dtype: torch.dtype | str = torch.float32,
    kind: str = "forward",
) -> StepCost:
    """FLOPs and bytes of one forward: B=`batch_size` sequences, T=`new_tokens` scored
    positions each, attending to C=`context` cached positions plus themselves.

    FLOPs: `model.forward_flops(config, B*T, context=C+T)` (2 per weight per token, plus
    attention; full attention is counted, as the model's masked kernel computes it).
    Bytes (each element `dtype`-sized), assuming nothing stays in cache between ops:

    - weights: every non-embedding parameter (matmuls, biases, norms, head) read once per
      forward, however many positions it scores: `Transformer.num_params()` elements.
    - KV cache (with `uses_cache`): B * n_layer * 2 * d_model * (C + T) elements: the C
      cached positions' keys and values read, the T new ones written.
    - activations: every op reads its input and writes its output once. Per token, per
      block: ln 2d, qkv d+3d, attention 3d+d, head merge 2d, proj 2d, residual 3d, ln 2d,
      fc d+f, gelu 2f, proj f+d, residual 3d = 24d + 4f (f = mlp_ratio * d); plus, per token,
      embeddings 7d, final ln 2d and head d + vocab_size. Attention scores are not stored
      (fused attention), and the embedding tables are only gathered.
    """
    _check_positive(batch_size=batch_size, new_tokens=new_tokens)
    if not isinstance(context, int) or context < 0:
        raise ValueError(f"context must be a non-negative int, got {context!r}")
    if context + new_tokens > config.context_len:
        raise ValueError(
            f"context {context} + new_tokens {new_tokens} exceeds the model's context "
            f"length {config.context_len}"
        )
    if context and not uses_cache:
        raise ValueError("context > 0 means cached positions: pass uses_cache=True")
    name = dtype_name(dtype)
    size = BYTES_PER_ELEMENT[name]
    B, T, C = batch_size, new_tokens, context
    d, f, n_layer = config.d_model, config.mlp_ratio * config.d_model, config.n_layer
    per_token_layer = 24 * d + 4 * f  # activation elements per token per block
    per_token = n_layer * per_token_layer + 10 * d + config.vocab_size
    return StepCost(
        kind=kind,
        batch_size=B,
        new_tokens=T,
        context=C,
        n_layer=n_layer,
        dtype=name,
        uses_cache=uses_cache,
        flops=forward_flops(config, B * T, context=C + T),
        weight_bytes=size * _weights_read(_config_key(config)),
        kv_bytes=size * B * n_layer * 2 * d * (C + T) if uses_cache else 0,
        activation_bytes=size * B * T * per_token,
        layer_activation_bytes=size * B * T * per_token_layer,
    )


def ar_decode_step_cost(
    config: ModelConfig, *, batch_size: int, context: int, dtype: torch.dtype | str = torch.float32
) -> StepCost:
    """One AR decode step with a KV cache: 1 new token per sequence after `context` cached."""
    return forward_cost(
        config,
        batch_size=batch_size,
        new_tokens=1,
        context=context,
        uses_cache=True,
        dtype=dtype,
        kind="ar_decode",
    )


def diffusion_step_cost(
    config: ModelConfig, *, batch_size: int, length: int, dtype: torch.dtype | str = torch.float32
) -> StepCost:
    """One masked-diffusion step: a bidirectional forward over all `length` positions, no cache."""
    return forward_cost(
        config, batch_size=batch_size, new_tokens=length, dtype=dtype, kind="diffusion"
    )


def block_diffusion_step_cost(
    config: ModelConfig,
    *,
    batch_size: int,
    block_len: int,
    context: int,
    dtype: torch.dtype | str = torch.float32,
) -> StepCost:
    """One block-diffusion step: a block of `block_len` positions after `context` cached ones."""
    return forward_cost(
        config,
        batch_size=batch_size,
        new_tokens=block_len,
        context=context,
        uses_cache=True,
        dtype=dtype,
        kind="block_diffusion",
    )


# ----------------------------------------------------------------------------------------
# 4. The roofline plot
# ----------------------------------------------------------------------------------------


def plot_roofline(
    ceilings: Ceilings | None = None,
    *,
    specs: Sequence[HardwareSpec] = (),
    points: Sequence[tuple[str, float, float]] = (),
    spec_dtype: str = "bfloat16",
    title: str | None = None,
) -> MplFigure:
    """A log-log roofline: arithmetic intensity (FLOP/byte) against attained FLOP/s.

    Measured `ceilings` are solid: one roof per matmul dtype under the main-memory bandwidth,
    and the cache-resident bandwidth. Datasheet `specs` are dashed, at `spec_dtype` (or their
    fastest dtype if they lack it). `points` are (label, intensity, FLOP/s) measurements.
    Returns a `matplotlib.figure.Figure` (no pyplot state: it renders headless).
    """
    from matplotlib.figure import Figure as MplFigure  # on use: a light import

    fig = MplFigure(figsize=(10.5, 5.5))  # the legend beside the axes, off the points
    ax = fig.add_subplot()
    intensities = [p[1] for p in points]
    lo = min([0.1, *intensities]) / 2
    hi = max([1e4, *intensities]) * 2
    xs = np.logspace(math.log10(lo), math.log10(hi), 256)  # FLOP/byte
    if ceilings is not None:
        for name, peak in sorted(ceilings.matmul_flops.items(), key=lambda kv: kv[1]):
            ax.plot(
                xs,
                np.minimum(peak, ceilings.memory_bandwidth * xs),
                "-",
                label=f"measured {name}: {peak / 1e9:,.0f} GFLOP/s, "
                f"{ceilings.memory_bandwidth / 1e9:,.0f} GB/s",
            )
        ax.plot(
            xs,
            np.minimum(max(ceilings.matmul_flops.values()), ceilings.cache_bandwidth * xs),
            "-",
            color="grey",
            alpha=0.6,
            label=f"measured cache-resident: {ceilings.cache_bandwidth / 1e9:,.0f} GB/s",
        )
    for spec in specs:
        name = (
            spec_dtype
            if spec_dtype in spec.flops
            else max(spec.flops, key=lambda k: spec.flops[k].value)
        )
        peak, bandwidth = spec.flops[name].value, spec.memory_bandwidth.value
        ax.plot(
            xs,
            np.minimum(peak, bandwidth * xs),
            "--",
            label=f"{spec.name} {name} (datasheet, dense)",
        )
    for label, intensity, flops in points:
        ax.plot([intensity], [flops], "o", color="black", markersize=5)
        ax.annotate(
            label, (intensity, flops), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attained performance (FLOP/s)")
    ax.set_title(title or f"Roofline{' of ' + ceilings.device if ceilings else ''}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# 5. Performance model: time per step, tokens per second
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTime:
    """Predicted seconds of one forward and what bounds it.

    `compute_s` is the FLOPs at the matmul rate measured for the step's row count,
    `peak_compute_s` the same FLOPs at the large-matmul peak. `bound` is the classic
    roofline's verdict: "overhead" if the fixed cost dominates, else "compute" when the FLOPs
    at the peak take longer than the bytes at the bandwidth, "memory" otherwise. (A few-row
    matmul runs below the peak mostly because it waits on the weights it reads.)
    """

    compute_s: float
    memory_s: float
    overhead_s: float
    total_s: float
    peak_compute_s: float | None = None

    @property
    def bound(self) -> str:
        if self.overhead_s >= max(self.compute_s, self.memory_s):
            return "overhead"
        peak = self.compute_s if self.peak_compute_s is None else self.peak_compute_s
        return "compute" if peak >= self.memory_s else "memory"


def predict_step_time(cost: StepCost, ceilings: Ceilings) -> StepTime:
    """Seconds of one forward: max(compute, memory) + overhead (max of all three on a GPU).

    - compute: FLOPs / the dtype's matmul FLOP/s at the step's row count (batch x new
      tokens; `Ceilings.matmul_rate`): a few rows run far below the large-matmul peak.
    - memory, a sum over what is read: weights at the matrix-vector bandwidth (the cache's
      if all weights fit in it, since they are re-read every step); the KV cache at the cache
      bandwidth if it fits beside the weights, else main memory's; activations at the cache
      bandwidth if one block's activations fit, else main memory's.
    - overhead: the fixed cost of a forward of `n_layer` blocks (the cached path if the step
      uses a KV cache). On a CPU it adds to the rest (the same threads dispatch and compute);
      on a GPU the host queues kernels while the device runs, so it only sets a floor.
    """
    fits = ceilings.cache_bytes
    weights_fit = cost.weight_bytes <= fits
    matvec = ceilings.matvec_cache_bandwidth if weights_fit else ceilings.matvec_bandwidth
    if cost.dtype not in matvec:
        raise ValueError(f"no {cost.dtype} matrix-vector bandwidth for {ceilings.device}")
    kv_bw = (
        ceilings.cache_bandwidth
        if cost.weight_bytes + cost.kv_bytes <= fits
        else ceilings.memory_bandwidth
    )
    act_bw = (
        ceilings.cache_bandwidth
        if cost.layer_activation_bytes <= fits
        else ceilings.memory_bandwidth
    )
    rows = cost.batch_size * cost.new_tokens  # rows each weight matrix multiplies
    compute = cost.flops / ceilings.matmul_rate(cost.dtype, rows, weights_in_cache=weights_fit)
    memory = (
        cost.weight_bytes / matvec[cost.dtype]
        + cost.kv_bytes / kv_bw
        + cost.activation_bytes / act_bw
    )
    overhead = (ceilings.cached_overhead if cost.uses_cache else ceilings.overhead).seconds(
        cost.n_layer
    )
    if ceilings.overhead_overlaps:
        total = max(compute, memory, overhead)
    else:
        total = max(compute, memory) + overhead
    return StepTime(
        compute_s=compute,
        memory_s=memory,
        overhead_s=overhead,
        total_s=total,
        peak_compute_s=cost.flops / ceilings.compute_peak(cost.dtype),
    )


@dataclass(frozen=True)
class ARDecoding:
    """AR sampling with a KV cache: the prompt in one forward, then one forward per token."""

    batch_size: int
    n_tokens: int
    prompt_len: int = 1

    def __post_init__(self) -> None:
        _check_positive(
            batch_size=self.batch_size, n_tokens=self.n_tokens, prompt_len=self.prompt_len
        )

    @property
    def tokens(self) -> int:
        return self.batch_size * self.n_tokens

    def describe(self) -> str:
        return f"AR B={self.batch_size} prompt={self.prompt_len} +{self.n_tokens} tokens"

    def step_costs(self, config: ModelConfig, dtype: torch.dtype | str) -> list[StepCost]:
        if self.prompt_len + self.n_tokens > config.context_len:
            raise ValueError(
                f"prompt {self.prompt_len} + {self.n_tokens} tokens exceeds the context "
                f"{config.context_len}"
            )
        B = self.batch_size
        prefill = forward_cost(
            config,
            batch_size=B,
            new_tokens=self.prompt_len,
            uses_cache=True,
            dtype=dtype,
            kind="prefill",
        )
        decode = [
            ar_decode_step_cost(config, batch_size=B, context=self.prompt_len + i, dtype=dtype)
            for i in range(self.n_tokens - 1)
        ]
        return [prefill, *decode]


@dataclass(frozen=True)
class DiffusionSampling:
    """Masked-diffusion sampling: `steps` bidirectional forwards over all `length` positions."""

    batch_size: int
    length: int
    steps: int

    def __post_init__(self) -> None:
        _check_positive(batch_size=self.batch_size, length=self.length, steps=self.steps)

    @property
    def tokens(self) -> int:
        return self.batch_size * self.length

    @property
    def tokens_per_step(self) -> float:
        return self.length / self.steps

    def describe(self) -> str:
        return f"diffusion B={self.batch_size} L={self.length} steps={self.steps}"

    def step_costs(self, config: ModelConfig, dtype: torch.dtype | str) -> list[StepCost]:
        cost = diffusion_step_cost(
            config, batch_size=self.batch_size, length=self.length, dtype=dtype
        )
        return [cost] * self.steps


@dataclass(frozen=True)
class BlockDiffusionSampling:
    """Block diffusion with an exact KV cache: blocks of `block_len` left to right, each
    denoised in `steps_per_block` forwards over the block after the cached prefix, then (with
    `commit`) one more forward that writes the finished block into the cache.
    """

    batch_size: int
    length: int
    block_len: int
    steps_per_block: int
    commit: bool = True

    def __post_init__(self) -> None:
        _check_positive(
            batch_size=self.batch_size,
            length=self.length,
            block_len=self.block_len,
            steps_per_block=self.steps_per_block,
        )
        if self.length % self.block_len:
            raise ValueError(f"block_len {self.block_len} must divide length {self.length}")

    @property
    def tokens(self) -> int:
        return self.batch_size * self.length

    def describe(self) -> str:
        return (
            f"block diffusion B={self.batch_size} L={self.length} block={self.block_len} "
            f"steps/block={self.steps_per_block}"
        )

    def step_costs(self, config: ModelConfig, dtype: torch.dtype | str) -> list[StepCost]:
        calls_per_block = self.steps_per_block + int(self.commit)
        costs = []
        for start in range(0, self.length, self.block_len):
            cost = block_diffusion_step_cost(
                config,
                batch_size=self.batch_size,
                block_len=self.block_len,
                context=start,
                dtype=dtype,
            )
            costs += [cost] * calls_per_block
        return costs


Sampler = ARDecoding | DiffusionSampling | BlockDiffusionSampling


@dataclass(frozen=True)
class SamplingPrediction:
    """Predicted time of the network calls one sampler run makes, split by term."""

    sampler: str
    n_calls: int
    tokens: int
    seconds: float
    compute_s: float
    memory_s: float
    overhead_s: float
    peak_compute_s: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def bound(self) -> str:
        """The verdict of `StepTime.bound` for the run's summed terms."""
        return StepTime(
            self.compute_s, self.memory_s, self.overhead_s, self.seconds, self.peak_compute_s
        ).bound


def predict_sampling(
    config: ModelConfig,
    sampler: Sampler,
    ceilings: Ceilings,
    *,
    dtype: torch.dtype | str = torch.float32,
) -> SamplingPrediction:
    """Predicted seconds and tokens/s of a sampler run: the sum of its forwards' step times.

    Counts generated tokens only, and the network only (sampling from the logits is not
    modelled: notebook 09's fast sampler makes it small).
    """
    times = [predict_step_time(cost, ceilings) for cost in sampler.step_costs(config, dtype)]
    return SamplingPrediction(
        sampler=sampler.describe(),
        n_calls=len(times),
        tokens=sampler.tokens,
        seconds=sum(t.total_s for t in times),
        compute_s=sum(t.compute_s for t in times),
        memory_s=sum(t.memory_s for t in times),
        overhead_s=sum(t.overhead_s for t in times),
        peak_compute_s=sum(t.peak_compute_s for t in times),
    )


# ----------------------------------------------------------------------------------------
# 6. Measurement: achieved FLOP/s of real steps, tokens/s of real sampler runs
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepMeasurement:
    """A timed forward with its analytic cost: a point for the roofline."""

    label: str
    cost: StepCost
    timing: bench.Timing

    @property
    def achieved_flops(self) -> float:
        """FLOP/s this step attained (analytic FLOPs / median seconds)."""
        return self.cost.flops / self.timing.median_s

    @property
    def intensity(self) -> float:
        return self.cost.intensity

    def point(self) -> tuple[str, float, float]:
        """(label, intensity, FLOP/s), as `plot_roofline(points=...)` takes it."""
        return (self.label, self.intensity, self.achieved_flops)


def _model_device_dtype(model: Transformer) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def _needs_cache(model: Transformer) -> None:
    if model.config.attention == "bidirectional":
        raise ValueError("this measurement needs a KV cache: use a causal or block_causal model")


@contextlib.contextmanager
def _evaluating(model: Transformer) -> Iterator[None]:
    """Eval mode and inference mode for the duration; the training flag is restored."""
    with eval_mode(model), torch.inference_mode():
        yield


def measure_ar_decode_step(
    model: Transformer,
    *,
    batch_size: int,
    context: int,
    warmup: int = 3,
    repeats: int = 10,
    min_time_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> StepMeasurement:
    """Time one AR decode step: 1 token per sequence after `context` cached positions.

    The cache is filled once with `context` positions; each timed call runs the next token
    without advancing the cache (`update_cache=False`), so every call is the same step.
    Timed with `bench.time_fn` (warm-up, synchronised, median) in inference mode; the cost
    is in the model's parameter dtype.
    """
    _needs_cache(model)
    dtype = _model_device_dtype(model)[1]
    cost = ar_decode_step_cost(model.config, batch_size=batch_size, context=context, dtype=dtype)
    timing = _time_cached_step(model, cost, warmup, repeats, min_time_s, clock)
    return StepMeasurement(f"AR decode B={batch_size} C={context}", cost, timing)


def measure_block_diffusion_step(
    model: Transformer,
    *,
    batch_size: int,
    block_len: int,
    context: int,
    warmup: int = 3,
    repeats: int = 10,
    min_time_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> StepMeasurement:
    """Time one block-diffusion step: a block of `block_len` after `context` cached positions."""
    _needs_cache(model)
    dtype = _model_device_dtype(model)[1]
    cost = block_diffusion_step_cost(
        model.config, batch_size=batch_size, block_len=block_len, context=context, dtype=dtype
    )
    timing = _time_cached_step(model, cost, warmup, repeats, min_time_s, clock)
    return StepMeasurement(f"block B={batch_size} b={block_len} C={context}", cost, timing)


def _time_cached_step(
    model: Transformer, cost: StepCost, warmup: int, repeats: int, min_time_s: float, clock
) -> bench.Timing:
    device, _ = _model_device_dtype(model)
    B, T, C = cost.batch_size, cost.new_tokens, cost.context
    ids = torch.randint(0, model.config.vocab_size, (B, C + T), device=device)  # (B, C + T)
    with _evaluating(model):
        cache = model.new_cache(B)
        if C:
            model(ids[:, :C], cache=cache)  # fill the cache once, untimed
        step = ids[:, C:]  # (B, T)
        return bench.time_fn(
            lambda: model(step, cache=cache, update_cache=False),
            warmup=warmup,
            repeats=repeats,
            device=device,
            min_time_s=min_time_s,
            clock=clock,
        )


def measure_diffusion_step(
    model: Transformer,
    *,
    batch_size: int,
    length: int,
    warmup: int = 3,
    repeats: int = 10,
    min_time_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> StepMeasurement:
    """Time one diffusion step: a forward over (batch_size, length) ids, all masked."""
    device, dtype = _model_device_dtype(model)
    cost = diffusion_step_cost(model.config, batch_size=batch_size, length=length, dtype=dtype)
    ids = torch.full((batch_size, length), model.mask_id, device=device)  # (B, L)
    with _evaluating(model):
        timing = bench.time_fn(
            lambda: model(ids),
            warmup=warmup,
            repeats=repeats,
            device=device,
            min_time_s=min_time_s,
            clock=clock,
        )
    return StepMeasurement(f"diffusion B={batch_size} L={length}", cost, timing)


@dataclass(frozen=True)
class SamplingMeasurement:
    """Measured time of the network calls one sampler run makes."""

    sampler: str
    n_calls: int
    tokens: int
    timing: bench.Timing
    own_s: float = 0.0  # the sampler's own work, without the network (`measure_fast_sampler`)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.timing.median_s


def measure_sampling(
    model: Transformer,
    sampler: Sampler,
    *,
    warmup: int = 1,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> SamplingMeasurement:
    """Time the forwards a sampler run makes (the same calls `predict_sampling` models).

    Token values do not change the cost of a forward, so the ids are fixed: what is timed is
    the network, call for call. The KV cache is allocated once, outside the timing.
    """
    device, dtype = _model_device_dtype(model)
    costs = sampler.step_costs(model.config, dtype)  # validates the sampler against the model
    B = sampler.batch_size
    if isinstance(sampler, ARDecoding):
        _needs_cache(model)
        cache = model.new_cache(B)
        prompt = torch.zeros(B, sampler.prompt_len, dtype=torch.long, device=device)
        token = torch.zeros(B, 1, dtype=torch.long, device=device)

        def run() -> None:
            cache.reset()
            model(prompt, cache=cache)
            for _ in range(sampler.n_tokens - 1):
                model(token, cache=cache)

    elif isinstance(sampler, DiffusionSampling):
        ids = torch.full((B, sampler.length), model.mask_id, device=device)

        def run() -> None:
            for _ in range(sampler.steps):
                model(ids)

    else:
        if model.config.attention != "block_causal" or model.config.block_len != sampler.block_len:
            raise ValueError(
                f"block diffusion with block_len {sampler.block_len} needs a block_causal model "
                "with the same block_len"
            )
        cache = model.new_cache(B)
        block = torch.full((B, sampler.block_len), model.mask_id, device=device)

        def run() -> None:
            cache.reset()
            for _ in range(sampler.length // sampler.block_len):
                for _ in range(sampler.steps_per_block):
                    model(block, cache=cache, update_cache=False)
                if sampler.commit:
                    model(block, cache=cache)  # write the finished block into the cache
                else:
                    cache.length += sampler.block_len  # the last step wrote its keys already

    with _evaluating(model):
        timing = bench.time_fn(run, warmup=warmup, repeats=repeats, device=device, clock=clock)
    return SamplingMeasurement(sampler.describe(), len(costs), sampler.tokens, timing)


def measure_fast_sampler(
    model: Transformer,
    sampler: Sampler,
    *,
    warmup: int = 1,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> SamplingMeasurement:
    """Time notebook 09's optimized samplers (not only their forwards) on `sampler`'s settings.

    ARDecoding runs `fast.FastARDecoder` (stage "static_buffers": static KV cache, no
    synchronisation); BlockDiffusionSampling runs `fast.FastDiffusionSampler` (stage
    "kv_cache", the fastest token-exact stage on a CPU) with confidence decoding, one token
    per step when `steps_per_block == block_len`. Sampling from the logits is included.

    `own_s` is the same run with the network replaced by a stand-in that returns fixed logits
    at no cost (nor any cache commit): the sampler's own work (float64 probabilities, draws,
    confidences, bookkeeping), which the network's performance model does not cover.
    """
    from course_lib import fast  # notebook 09's samplers

    device, _ = _model_device_dtype(model)
    B = sampler.batch_size
    generator = torch.Generator(device)
    if isinstance(sampler, ARDecoding):
        options = dict(fast.AR_STAGES)["static_buffers"]
        decoder = fast.FastARDecoder(model, batch_size=B, options=options)
        prompt = torch.zeros(B, sampler.prompt_len, dtype=torch.long, device=device)

        def run() -> None:
            decoder(prompt=prompt, n_tokens=sampler.n_tokens, generator=generator.manual_seed(0))

        logits = torch.randn(B, model.config.vocab_size, device=device)

        def free_network() -> None:
            decoder.step = lambda ids, positions: logits  # (B, V): the next token's logits

    elif isinstance(sampler, BlockDiffusionSampling) and sampler.commit:
        if model.config.block_len != sampler.block_len:
            raise ValueError(f"the model's block_len is not {sampler.block_len}")
        options = dict(fast.DIFFUSION_STAGES)["kv_cache"]
        diffuser = fast.FastDiffusionSampler(
            model, length=sampler.length, batch_size=B, options=options
        )

        def run() -> None:
            diffuser(steps_per_block=sampler.steps_per_block, generator=generator.manual_seed(0))

        logits = torch.randn(B, sampler.block_len, model.config.vocab_size, device=device)

        def free_network() -> None:
            diffuser.step = lambda ids, positions: logits  # (B, b, V): the block's logits
            diffuser._commit = lambda x, start, end: None

    else:
        raise ValueError(f"no fast sampler for {sampler.describe()}")
    timing = bench.time_fn(run, warmup=warmup, repeats=repeats, device=device, clock=clock)
    free_network()
    own = bench.time_fn(run, warmup=warmup, repeats=repeats, device=device, clock=clock)
    n_calls = len(sampler.step_costs(model.config, _model_device_dtype(model)[1]))
    return SamplingMeasurement(sampler.describe(), n_calls, sampler.tokens, timing, own.median_s)


def compare_tokens_per_s(
    cases: Sequence[tuple],
    ceilings: Ceilings,
    *,
    dtype: torch.dtype | str = torch.float32,
) -> list[dict]:
    """Predicted against measured tokens/s: one row per (label, config, sampler, measured),
    or (label, config, sampler, measured, own_s) where the run also did `own_s` seconds of
    its own work beside the network (measured: `measure_fast_sampler`), added to the
    prediction.

    `relative_error` is predicted / measured - 1: +0.25 means the model is 25% optimistic.
    """
    rows = []
    for label, config, sampler, measured, *own in cases:
        if not measured > 0:
            raise ValueError(f"measured tokens/s must be positive, got {measured!r} for {label}")
        p = predict_sampling(config, sampler, ceilings, dtype=dtype)
        own_s = own[0] if own else 0.0
        rows.append(
            {
                "label": label,
                "sampler": p.sampler,
                "calls": p.n_calls,
                "sampler_own_s": own_s,
                "predicted_tokens_per_s": p.tokens / (p.seconds + own_s),
                "measured_tokens_per_s": measured,
                "relative_error": p.tokens / (p.seconds + own_s) / measured - 1,
                "bound": p.bound,
                "compute_s": p.compute_s,
                "memory_s": p.memory_s,
                "overhead_s": p.overhead_s,
            }
        )
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """`compare_tokens_per_s` rows as aligned text (with the samplers' own seconds, if any)."""
    own = any(r.get("sampler_own_s") for r in rows)
    extra = f" {'own s':>7}" if own else ""
    lines = [f"{'configuration':<58} {'predicted':>10} {'measured':>10} {'error':>7}{extra}  bound"]
    for r in rows:
        extra = f" {r['sampler_own_s']:>7.3f}" if own else ""
        lines.append(
            f"{r['label'] + ': ' + r['sampler']:<58} {r['predicted_tokens_per_s']:>10,.0f} "
            f"{r['measured_tokens_per_s']:>10,.0f} {r['relative_error']:>+7.0%}{extra}  "
            f"{r['bound']}"
        )
    return "\n".join(lines)


SMALL = ModelConfig()  # the course's 4-layer, d=256 model: 3.2M parameters, fits a CPU cache
MEDIUM = ModelConfig(n_layer=8, n_head=8, d_model=512)  # 25M parameters
WIDE = ModelConfig(n_layer=12, n_head=12, d_model=768)  # 85M parameters


def default_check_cases(quick: bool) -> list[tuple[str, ModelConfig, Sampler]]:
    """The configurations `check_performance_model` measures: AR decoding at batch 1 for three
    model sizes and at batch 8 and 32 for two; diffusion for three; one block diffusion."""
    n_tokens = 16 if quick else 64
    steps = 4 if quick else 16
    ar = [("small", SMALL, b) for b in (1, 8, 32)] + [("medium", MEDIUM, 1)]
    ar += [("wide", WIDE, b) for b in (1, 8, 32)]
    cases: list[tuple[str, ModelConfig, Sampler]] = [
        (name, config, ARDecoding(batch, n_tokens, prompt_len=16)) for name, config, batch in ar
    ]
    for name, config, batch in (("small", SMALL, 1), ("small", SMALL, 8), ("wide", WIDE, 1)):
        diffusion = replace(config, attention="bidirectional")
        cases.append((name, diffusion, DiffusionSampling(batch, 256, steps)))
    block = replace(SMALL, attention="block_causal", block_len=16)
    cases.append(("small", block, BlockDiffusionSampling(1, 256, 16, 4)))
    return cases


def fast_sampler_cases(quick: bool) -> list[tuple[str, ModelConfig, Sampler]]:
    """The configurations `check_performance_model(fast_samplers=True)` measures: notebook
    09's AR decoder at batch 1 and 8 and its block-diffusion sampler, three model sizes."""
    n_tokens = 16 if quick else 64
    sizes = [("small", SMALL)] if quick else [("small", SMALL), ("medium", MEDIUM), ("wide", WIDE)]
    cases: list[tuple[str, ModelConfig, Sampler]] = []
    for name, config in sizes:
        for batch in (1, 8):
            cases.append((name, config, ARDecoding(batch, n_tokens, prompt_len=16)))
        block = replace(config, attention="block_causal", block_len=16)
        length = 64 if quick else 256
        cases.append((name, block, BlockDiffusionSampling(1, length, 16, 16)))
    return cases


def check_performance_model(
    device: torch.device | str | None = None,
    *,
    quick: bool = env.FAST,
    dtype: torch.dtype = torch.float32,
    ceilings: Ceilings | None = None,
    cases: Sequence[tuple[str, ModelConfig, Sampler]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    fast_samplers: bool = False,
) -> list[dict]:
    """Measure tokens/s of each case on `device` and compare with the prediction.

    By default the forwards each sampler makes are timed (`measure_sampling`); with
    `fast_samplers=True` notebook 09's real samplers are (`measure_fast_sampler`, cases
    `fast_sampler_cases`), and their own work without the network, measured apart, is added
    to the predicted network time. Rerun it on a quiet machine: on a shared one the timings are
    noisy. Returns the rows of `compare_tokens_per_s` (print them with `format_table`).
    """
    device = env.get_device(None if device is None else str(device))
    ceilings = ceilings or measure_ceilings(device, quick=quick, clock=clock)
    if cases is None:
        cases = fast_sampler_cases(quick) if fast_samplers else default_check_cases(quick)
    measure = measure_fast_sampler if fast_samplers else measure_sampling
    repeats = 2 if quick else 3
    models: dict[tuple, Transformer] = {}
    measured = []
    for label, config, sampler in cases:
        key = _config_key(config)
        if key not in models:
            env.seed_everything(0)
            models[key] = Transformer(config).to(device=device, dtype=dtype)
        result = measure(models[key], sampler, warmup=1, repeats=repeats, clock=clock)
        measured.append((label, config, sampler, result.tokens_per_s, result.own_s))
    return compare_tokens_per_s(measured, ceilings, dtype=dtype)


def describe_ceilings(c: Ceilings) -> str:
    """The ceilings in one readable paragraph, with units."""
    per_dtype = ", ".join(f"{k} {v / 1e9:,.0f}" for k, v in c.matmul_flops.items())
    matvec = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in c.matvec_bandwidth.items())
    matvec_cache = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in c.matvec_cache_bandwidth.items())
    return (
        f"{c.device}: matmul GFLOP/s {per_dtype}; copy GB/s main memory "
        f"{c.memory_bandwidth / 1e9:.1f}, cache {c.cache_bandwidth / 1e9:.1f} "
        f"(cache {c.cache_bytes / MiB:g} MiB); matrix-vector GB/s main memory {matvec}, "
        f"cache {matvec_cache}; overhead per forward {c.overhead.call_s * 1e6:.0f} us + "
        f"{c.overhead.per_layer_s * 1e6:.0f} us/layer, with a KV cache "
        f"{c.cached_overhead.call_s * 1e6:.0f} us + {c.cached_overhead.per_layer_s * 1e6:.0f} "
        "us/layer"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m course_lib.roofline [--full] [--threads N] [--cpu-clock] [--dtype D]`."""
    import argparse

    parser = argparse.ArgumentParser(description=check_performance_model.__doc__)
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: automatic)")
    parser.add_argument("--full", action="store_true", help="full mode: longer, steadier")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--cpu-clock", action="store_true", help="time in process CPU seconds (shared machines)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_clock else time.perf_counter
    ceilings = measure_ceilings(args.device, quick=not args.full, clock=clock)
    print(describe_ceilings(ceilings))
    for fast_samplers in (False, True):
        print("the forwards of each sampler" if not fast_samplers else "notebook 09's samplers")
        rows = check_performance_model(
            args.device,
            quick=not args.full,
            dtype=getattr(torch, args.dtype),
            ceilings=ceilings,
            clock=clock,
            fast_samplers=fast_samplers,
        )
        print(format_table(rows))


if __name__ == "__main__":
    main()
