"""Rooflines: when a decoding step is memory-bound, and why diffusion's extra positions are
nearly free at batch 1 (notebook 10).

A forward pass reads every weight once, however many positions it scores. An AR decode step
scores one position per sequence, ~2 FLOPs per weight read: at batch 1 it sits far under the
memory roof. A diffusion step scores many positions per weight read; over a few tens of
positions it is still under the memory roof, so its extra positions cost almost nothing, and
the speed-up over AR is (tokens committed per forward) x (AR step time / diffusion step time).
Only as positions x batch grow does a step reach the ridge and become compute-bound.

The roofline is three modules, to read one at a time:

- this one, pure functions of a model's shape and a machine's ceilings: `forward_cost` and
  friends (the analytic FLOPs and bytes of one forward: AR decode step, diffusion step,
  block-diffusion step, and their arithmetic intensity), `plot_roofline`, and the
  performance model `predict_step_time` / `predict_sampling` (time per step = max(compute,
  memory) + overhead, hence a sampler's tokens/s);
- `course_lib.ceilings`: the ceilings themselves, measured on this machine
  (`measure_ceilings`) or read from a GPU's datasheet (`datasheet_ceilings`, with
  `course_lib.hardware`'s catalog);
- `course_lib.roofline_check`: the check of the model against measured steps and samplers,
  `python -m course_lib roofline-check`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from course_lib.hardware import HardwareSpec
from course_lib.model import ModelConfig, Transformer, forward_flops

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

    from course_lib.ceilings import Ceilings

BYTES_PER_ELEMENT = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def dtype_name(dtype: torch.dtype | str) -> str:
    """'float32', 'bfloat16', ... for a torch dtype or its name."""
    name = str(dtype).removeprefix("torch.")
    if name not in BYTES_PER_ELEMENT:
        raise ValueError(f"unsupported dtype {dtype!r}: use one of {sorted(BYTES_PER_ELEMENT)}")
    return name


# ----------------------------------------------------------------------------------------
# 1. Analytic FLOPs and bytes of one forward
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


def config_key(config: ModelConfig) -> tuple:
    """A hashable key for `config` (for the cached `weights_read`)."""
    return tuple(sorted(config.to_dict().items()))


@functools.lru_cache(maxsize=64)
def weights_read(key: tuple) -> int:
    """The weights one forward reads for the config behind `key`: its non-embedding count."""
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
        weight_bytes=size * weights_read(config_key(config)),
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
# 2. The roofline plot
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
# 3. Performance model: time per step, tokens per second
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
