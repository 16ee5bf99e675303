"""The roofline's performance model checked against measurement (notebook 10).

Times real steps (`measure_ar_decode_step`, `measure_diffusion_step`) and real sampler runs
(`measure_sampling`, `measure_fast_sampler`), and compares them with
`roofline.predict_step_time` / `predict_sampling` under this machine's measured ceilings:
`check_performance_model`, or from the command line

    python -m course_lib roofline-check [--full] [--threads N] [--cpu-clock] [--dtype D]
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from course_lib import bench, env
from course_lib.ceilings import Ceilings, describe_ceilings, measure_ceilings
from course_lib.model import ModelConfig, Transformer, device_and_dtype, eval_mode
from course_lib.roofline import (
    ARDecoding,
    BlockDiffusionSampling,
    DiffusionSampling,
    Sampler,
    StepCost,
    ar_decode_step_cost,
    config_key,
    diffusion_step_cost,
    predict_sampling,
)

# ----------------------------------------------------------------------------------------
# Measurement: achieved FLOP/s of real steps, tokens/s of real sampler runs
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
    dtype = device_and_dtype(model)[1]
    cost = ar_decode_step_cost(model.config, batch_size=batch_size, context=context, dtype=dtype)
    timing = _time_cached_step(model, cost, warmup, repeats, min_time_s, clock)
    return StepMeasurement(f"AR decode B={batch_size} C={context}", cost, timing)


def _time_cached_step(
    model: Transformer, cost: StepCost, warmup: int, repeats: int, min_time_s: float, clock
) -> bench.Timing:
    device, _ = device_and_dtype(model)
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
    device, dtype = device_and_dtype(model)
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
    device, dtype = device_and_dtype(model)
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

    device, _ = device_and_dtype(model)
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
            diffuser.commit_block = lambda x, start, end: None

    else:
        raise ValueError(f"no fast sampler for {sampler.describe()}")
    timing = bench.time_fn(run, warmup=warmup, repeats=repeats, device=device, clock=clock)
    free_network()
    own = bench.time_fn(run, warmup=warmup, repeats=repeats, device=device, clock=clock)
    n_calls = len(sampler.step_costs(model.config, device_and_dtype(model)[1]))
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
        key = config_key(config)
        if key not in models:
            env.seed_everything(0)
            models[key] = Transformer(config).to(device=device, dtype=dtype)
        result = measure(models[key], sampler, warmup=1, repeats=repeats, clock=clock)
        measured.append((label, config, sampler, result.tokens_per_s, result.own_s))
    return compare_tokens_per_s(measured, ceilings, dtype=dtype)


def add_arguments(parser) -> None:
    """The options of `python -m course_lib roofline-check`."""
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: automatic)")
    parser.add_argument("--full", action="store_true", help="full mode: longer, steadier")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--cpu-clock", action="store_true", help="time in process CPU seconds (shared machines)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def run(args) -> int:
    """Measure the ceilings, then print the model's predictions against measurement."""
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
    return 0
