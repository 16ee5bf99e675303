"""The ceilings of a roofline: what this machine (or a GPU's datasheet) can do (notebook 10).

`measure_ceilings` measures this machine's matmul FLOP/s per dtype, its main-memory and
cache-resident copy bandwidth, the bandwidth a matrix-vector product attains, and the fixed
cost of a tiny forward (the overhead floor small models hit). `datasheet_ceilings` makes the
same `Ceilings` from a GPU's datasheet (`course_lib.hardware.CATALOG`). `course_lib.roofline`
turns ceilings and a step's cost into a predicted time; `course_lib.roofline_check` compares
that with measurement.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from course_lib import bench, env
from course_lib.hardware import HardwareSpec
from course_lib.model import ModelConfig, Transformer
from course_lib.roofline import BYTES_PER_ELEMENT, dtype_name

MiB = 2**20
_FALLBACK_CACHE_BYTES = 4 * MiB  # used when the cache size cannot be read (e.g. macOS)

# ----------------------------------------------------------------------------------------
# Measured ceilings
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


def measure_matmul_flops(n: int, name: str, device: torch.device, plan: bench.Plan) -> float:
    """FLOP/s of an n x n x n matmul stored in dtype `name` ("tf32": float32 on TF32 cores)."""
    a = torch.randn(n, n, device=device).to(_storage_dtype(name))  # (n, n)
    b = torch.randn(n, n, device=device).to(_storage_dtype(name))
    if device.type != "cuda":
        return 2 * n**3 / plan.time(lambda: a @ b, device).median_s
    previous = torch.get_float32_matmul_precision()
    # "tf32": float32 storage on TF32 tensor cores; "float32": IEEE float32 ("highest")
    torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    try:
        return 2 * n**3 / plan.time(lambda: a @ b, device).median_s
    finally:
        torch.set_float32_matmul_precision(previous)


def measure_copy_bandwidth(n_bytes: int, device: torch.device, plan: bench.Plan) -> float:
    """Bytes per second (read plus written) of copying a float32 tensor of `n_bytes`."""
    src = torch.full((n_bytes // 4,), 0.5, device=device)  # float32
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / plan.time(lambda: dst.copy_(src), device).median_s


def weight_stack(
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


def stack_seconds(
    weights: list[tuple[torch.Tensor, torch.Tensor]], rows: int, device, plan: bench.Plan
) -> float:
    """Median seconds to push `rows` rows through every pair of `weights`."""
    up = weights[0][0]
    x = torch.full((rows, up.shape[1]), 0.5, device=device, dtype=up.dtype)  # (rows, d)

    def forward_like() -> None:
        for up, down in weights:
            F.linear(F.linear(x, up), down)  # (rows, 4d) then (rows, d)

    return plan.time(forward_like, device).median_s


def measure_matvec_and_rows(
    total_bytes: int,
    matrix_bytes: int,
    name: str,
    device: torch.device,
    plan: bench.Plan,
    rows: Sequence[int],
) -> tuple[float, dict[int, float]]:
    """Matrix-vector bandwidth (weight bytes/s of 1-row matmuls) and FLOP/s per row count.

    One row through a stack of weights is the access pattern of an AR decode step at batch
    1: every weight read once for 2 FLOPs. More rows reuse each weight read, and the rate
    climbs towards the large-matmul peak.
    """
    weights = weight_stack(total_bytes, matrix_bytes, name, device)
    n_weights = sum(up.numel() + down.numel() for up, down in weights)
    n_bytes = n_weights * weights[0][0].element_size()
    seconds = {m: stack_seconds(weights, m, device, plan) for m in sorted({1, *rows})}
    return n_bytes / seconds[1], {m: 2 * m * n_weights / t for m, t in seconds.items()}


def _tiny_forward_seconds(
    n_layer: int, device: torch.device, *, cached: bool, plan: bench.Plan
) -> float:
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
            return plan.time(lambda: model(ids), device).median_s
        cache = model.new_cache(1)
        model(ids, cache=cache)  # one cached position to attend to
        return plan.time(lambda: model(ids, cache=cache, update_cache=False), device).median_s


def _tiny_forward_overhead(device: torch.device, *, cached: bool, plan: bench.Plan) -> Overhead:
    """Fit call + per-layer overhead from tiny forwards at two depths (1 and 4 blocks)."""
    shallow, deep = 1, 4
    t_shallow = _tiny_forward_seconds(shallow, device, cached=cached, plan=plan)
    t_deep = _tiny_forward_seconds(deep, device, cached=cached, plan=plan)
    per_layer = max(0.0, (t_deep - t_shallow) / (deep - shallow))
    return Overhead(call_s=max(0.0, t_shallow - shallow * per_layer), per_layer_s=per_layer)


ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # row counts of the few-row matmul rates
QUICK_ROWS = (1, 4, 16, 64, 256)


def _sizes(gpu: bool, quick: bool, cache_bytes: int) -> tuple[int, int, int, int]:
    """`measure_ceilings`'s sizes: the matmul's n, the bytes of a main-memory copy (>= 4x
    the cache) and of a cache copy, and the bytes of one matrix of a matrix-vector stack."""
    n = (4096 if quick else 8192) if gpu else (1024 if quick else 2048)
    big = max(((512 if quick else 2048) if gpu else (64 if quick else 256)) * MiB, 4 * cache_bytes)
    small = max(64 * 2**10, cache_bytes // 4)  # src and dst together fill half the cache
    matrix = max(cache_bytes // 4, 64 * MiB if gpu else 0)  # big enough to hide launches
    return n, big, small, matrix


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
    plan = bench.Plan(
        warmup=1 if quick else 3,
        repeats=3 if quick else 7,
        min_time_s=0.01 if quick else 0.05,
        clock=clock,
    )
    detected = cache_size_bytes(device)
    cache_bytes = detected if detected else _FALLBACK_CACHE_BYTES
    n, big, small, matrix = _sizes(gpu, quick, cache_bytes)
    names = _matmul_dtypes(device)
    matmul = {name: measure_matmul_flops(n, name, device, plan) for name in names}
    stored = [name for name in names if name != "tf32"]
    rows = QUICK_ROWS if quick else ROWS
    # (bandwidth, FLOP/s per row count) per dtype: weights in memory, and 4 pairs filling half
    # the cache (a model that fits in it)
    mem = {n: measure_matvec_and_rows(big, matrix, n, device, plan, rows) for n in stored}
    half = (cache_bytes // 2, cache_bytes // 16)
    cached = {n: measure_matvec_and_rows(*half, n, device, plan, rows) for n in stored}
    memory = measure_copy_bandwidth(big, device, plan)
    cache = measure_copy_bandwidth(small, device, plan)
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
        matvec_bandwidth={name: rate for name, (rate, _) in mem.items()},
        matvec_cache_bandwidth={name: rate for name, (rate, _) in cached.items()},
        overhead=overhead,
        cached_overhead=cached_overhead,
        overhead_overlaps=gpu,
        rows_flops={name: flops for name, (_, flops) in mem.items()},
        rows_cache_flops={name: flops for name, (_, flops) in cached.items()},
        protocol={
            **plan.describe(),
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
