"""The course's benchmark suites: `python -m course_lib bench --suite quick|cpu|gpu`.

Each suite times the reference and optimized samplers (diffusion and AR) with
`bench.time_fn`, and writes the rows as JSON to data/results/ with the environment and the
course's speed protocol (notebook 00): generated tokens only, warm-up excluded, median of several runs,
compile time apart, the same-output check and, for trained checkpoints, quality beside speed.
Notebooks 09 and 10 read the results.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from course_lib import env
from course_lib.bench import Plan, Timing

_CLOCKS = {
    time.process_time: "process_time (CPU seconds)",
    time.perf_counter: "perf_counter (wall)",
}

SUITES = ("quick", "cpu", "gpu")

PROTOCOL = {
    "tokens": "generated tokens only (no prompt), summed over the batch",
    "tokens_per_s": "generated tokens / median seconds of one call",
    "timing": "bench.time_fn: untimed warm-up calls, device synchronised before every clock "
    "read, median of `repeats` calls (min and max beside it)",
    "first_call": "the first call of every row is timed apart: it includes torch.compile and "
    "CUDA-graph capture; compile_s = first_call_s - median_s",
    "same_output": "every fast row is compared with its reference row, same seed: "
    "same_tokens_as_reference and token_agreement",
    "nfe": "network calls (forward passes) per call, cache commits included",
    "tokens_per_step": "generated tokens per sequence per denoising step",
    "quality": "only for trained checkpoints: generative perplexity under the AR scorer "
    "ar-small.pt and unigram entropy (bits) of the same samples; random-init rows measure "
    "speed only (it depends on shapes, not weights)",
}

# model shapes the suites use (vocabulary: the course's 98 characters)
SHAPES = {
    "tiny": dict(context_len=32, n_layer=2, n_head=2, d_model=32),
    "small": dict(context_len=128, n_layer=4, n_head=4, d_model=256),  # the *-small presets
    "design": dict(
        context_len=256, n_layer=6, n_head=6, d_model=384
    ),  # the course's 10.8M baseline shape
    "gpt2-small": dict(context_len=512, n_layer=12, n_head=12, d_model=768),
}


class Suite:
    """Rows of one benchmark run, written to JSON after every row (a crash keeps the rest).

    Each row is a dict (see PROTOCOL); a row that cannot run on this device says why
    ("skipped"), and one that failed says how ("error") instead of stopping the suite.
    """

    def __init__(self, name: str, device: torch.device, plan: Plan, out: Path, log) -> None:
        self.name, self.device, self.plan, self.out, self.log = name, device, plan, out, log
        self.result = {
            "suite": name,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "environment": env.describe_environment(device),
            "protocol": {
                **PROTOCOL,
                "warmup": plan.warmup,
                "repeats": plan.repeats,
                "clock": _CLOCKS.get(plan.clock, plan.describe()["clock"]),
                "threads": torch.get_num_threads(),
            },
            "rows": [],
            "notes": [],
        }

    def note(self, text: str) -> None:
        self.result["notes"].append(text)
        self.save()

    def add(self, row: dict) -> dict:
        self.result["rows"].append(row)
        self.save()
        shown = {k: row[k] for k in ("section", "sampler", "stage", "batch") if k in row}
        if "tokens_per_s" in row:
            shown["tokens/s"] = round(row["tokens_per_s"], 1)
        for key in ("speedup_vs_reference", "same_tokens_as_reference", "skipped", "error"):
            if key in row:
                shown[key] = row[key]
        self.log(f"  {shown}")
        return row

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        tmp.replace(self.out)

    def measure(self, fn: Callable[[], object]) -> tuple[object, float, Timing]:
        """(the first call's result, its seconds, the timing of the calls after it)."""
        clock = self.plan.clock
        env.synchronize(self.device)
        start = clock()
        first = fn()
        env.synchronize(self.device)
        first_s = clock() - start
        return first, first_s, self.plan.time(fn, self.device)


def _timing_fields(first_s: float, timing: Timing, n_tokens: int) -> dict:
    return {
        "tokens_per_s": n_tokens / timing.median_s,
        "median_s": timing.median_s,
        "min_s": timing.min_s,
        "max_s": timing.max_s,
        "warmup": timing.warmup,
        "repeats": timing.repeats,
        "first_call_s": first_s,
        "compile_s": max(0.0, first_s - timing.median_s),
    }


def _random_model(shape: dict, attention: str, device: torch.device, block_len: int = 16):
    from course_lib.model import ModelConfig, Transformer

    config = ModelConfig(
        **shape, attention=attention, block_len=block_len if attention == "block_causal" else None
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialised on the device: fast for big models
        return Transformer(config).eval()


def _generator(device: torch.device, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _same(tokens, reference) -> dict:
    a, b = tokens.cpu(), reference.cpu()
    if a.shape != b.shape:
        return {"same_tokens_as_reference": False, "token_agreement": 0.0}
    return {
        "same_tokens_as_reference": bool(torch.equal(a, b)),
        "token_agreement": (a == b).double().mean().item(),
    }


def _guarded(suite: Suite, base: dict, run: Callable[[], dict]) -> dict | None:
    """Run one row; a failure becomes an "error" row instead of ending the suite."""
    try:
        return suite.add({**base, **run()})
    except Exception as err:  # noqa: BLE001 - a benchmark reports, it does not crash
        suite.add({**base, "error": f"{type(err).__name__}: {err}"})
        return None


def _skipped_stage(options) -> str | None:
    from course_lib import fast

    missing = fast.needs_cuda(options)
    return f"needs CUDA ({', '.join(missing)})" if missing else None


def _compare(suite: Suite, base: dict, runs: list, *, reference, quality) -> dict:
    """Measure each run (stage, options or None, make_draw) and compare it with the reference.

    `make_draw()` builds the sampler (its buffers, its compiled step: not timed) and returns
    the call to time, whose result is a `DiffusionSample` or a token tensor. A run named
    "reference" fills `reference` (tokens and median time) for the runs after it.
    """
    for stage, options, make_draw in runs:
        row = {**base, "stage": stage}
        if options is not None:
            row["options"] = asdict(options)
            if _skipped_stage(options) and suite.device.type != "cuda":
                suite.add({**row, "skipped": _skipped_stage(options)})
                continue

        def run(stage=stage, options=options, make_draw=make_draw) -> dict:
            out, first_s, timing = suite.measure(make_draw())
            if isinstance(out, torch.Tensor):  # AR: one token per sequence per step
                tokens, n_new = out, out.shape[0] * (out.shape[1] - base["prompt_len"])
                counts = {"nfe": out.shape[1] - base["prompt_len"], "tokens_per_step": 1.0}
            else:
                tokens, n_new = out.tokens, out.n_generated
                counts = {"nfe": out.nfe, "tokens_per_step": out.tokens_per_step}
            fields = {
                "dtype": "bfloat16" if getattr(options, "bf16", False) else "float32",
                **counts,
                **_timing_fields(first_s, timing, n_new),
            }
            if stage == "reference":
                reference.update(tokens=tokens, median_s=timing.median_s)
            elif "tokens" in reference:
                fields |= _same(tokens, reference["tokens"])
                fields["speedup_vs_reference"] = reference["median_s"] / timing.median_s
            if quality:
                fields |= quality(tokens, base["prompt_len"])
            return fields

        _guarded(suite, row, run)
    return reference


def diffusion_rows(
    suite: Suite,
    model,
    *,
    section: str,
    length: int,
    steps_per_block: int,
    strategy: str = "confidence",
    threshold: float | None = None,
    confidence: str | None = None,
    batch_size: int = 1,
    stages: list | None = None,
    quality: Callable | None = None,
    reference: dict | None = None,
) -> dict:
    """The reference diffusion sampler, then each stage of the fast one, at the same settings.

    Returns the reference's tokens and median time; pass them back as `reference` to compare
    later rows with it without running it again (an empty dict: compare with nothing).
    """
    from course_lib import fast

    config, device = model.config, suite.device
    settings = dict(length=length, batch_size=batch_size, strategy=strategy, threshold=threshold)
    if confidence is not None:
        settings["confidence"] = confidence
    base = {
        "section": section,
        "sampler": "block_diffusion" if config.attention == "block_causal" else "diffusion",
        "model": {**config.to_dict(), "params": model.num_params()},
        "batch": batch_size,
        "length": length,
        "prompt_len": 0,
        "block_len": config.block_len or length,
        "steps_per_block": steps_per_block,
        "strategy": strategy,
        "threshold": threshold,
        "confidence": confidence,
        "device": str(device),
    }

    def reference_draw():
        return lambda: fast.reference_sample_diffusion(
            model, steps_per_block=steps_per_block, generator=_generator(device), **settings
        )

    def fast_draw(options):
        sampler = fast.FastDiffusionSampler(
            model, length=length, batch_size=batch_size, options=options
        )
        return lambda: sampler(
            steps_per_block=steps_per_block,
            strategy=strategy,
            threshold=threshold,
            confidence=confidence,
            generator=_generator(device),
        )

    runs = [] if reference is not None else [("reference", None, reference_draw)]
    stages = fast.stages_for(device) if stages is None else stages
    runs += [(name, options, lambda o=options: fast_draw(o)) for name, options in stages]
    return _compare(
        suite, base, runs, reference={} if reference is None else reference, quality=quality
    )


def ar_rows(
    suite: Suite,
    model,
    *,
    section: str,
    n_tokens: int,
    batch_size: int = 1,
    stages: list | None = None,
    quality: Callable | None = None,
    reference: dict | None = None,
) -> dict:
    """sample_ar without and with its KV cache, then each stage of the fast AR decoder.

    `reference` and the value returned: as in `diffusion_rows`.
    """
    from course_lib import fast, sampling

    device = suite.device
    prompt = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # one token
    base = {
        "section": section,
        "sampler": "ar",
        "model": {**model.config.to_dict(), "params": model.num_params()},
        "batch": batch_size,
        "length": 1 + n_tokens,
        "prompt_len": 1,
        "device": str(device),
    }

    def sample_ar_draw(use_kv_cache):
        return lambda: sampling.sample_ar(
            model,
            prompt=prompt,
            n_tokens=n_tokens,
            use_kv_cache=use_kv_cache,
            generator=_generator(device),
        )

    def fast_draw(options):
        decoder = fast.FastARDecoder(model, batch_size=batch_size, options=options)
        return lambda: decoder(prompt=prompt, n_tokens=n_tokens, generator=_generator(device))

    runs = []
    if reference is None:
        runs = [
            ("reference", None, lambda: sample_ar_draw(False)),
            ("sample_ar_kv_cache", None, lambda: sample_ar_draw(True)),
        ]
    stages = fast.stages_for(device, fast.AR_STAGES) if stages is None else stages
    runs += [(name, options, lambda o=options: fast_draw(o)) for name, options in stages]
    return _compare(
        suite, base, runs, reference={} if reference is None else reference, quality=quality
    )


def _exact_and_fastest(device: torch.device, stages: list) -> list:
    """The last float32 stage (the reference's tokens) and, on a GPU, the last one with bf16
    and CUDA graphs (compile left out: it has rows of its own)."""
    from course_lib import fast

    runnable = fast.stages_for(device, stages)
    exact = fast.final_stage([(name, o) for name, o in runnable if not fast.needs_cuda(o)])
    fastest = fast.final_stage(runnable)
    return [exact] if fastest == exact else [exact, fastest]


def _and_reading(stages: list) -> list:
    """`stages`, and before a last stage with no_host_reads the same stage without it. That
    stage's CUDA graphs hold only the network, the whole step's being the other's, and
    threshold and ancestral decoding read the host once a step in it, to finish a block early
    or to skip an unchanged step: the two trade launches and reads for forwards, and which
    wins is the GPU's to say."""
    name, last = stages[-1]
    if not getattr(last, "no_host_reads", False):
        return stages
    return [
        *stages[:-1],
        (f"{name}, network graphed alone", replace(last, no_host_reads=False)),
        stages[-1],
    ]


def batch_rows(suite: Suite, diffusion_model, ar_model, *, batches, compile: bool = False) -> None:
    """The optimized samplers at several batch sizes (tokens/s grows while weights are shared)."""
    from course_lib import fast

    diffusion_stage = fast.final_stage(fast.stages_for(suite.device), compile=compile)
    ar_stage = fast.final_stage(fast.stages_for(suite.device, fast.AR_STAGES), compile=compile)
    L = diffusion_model.config.context_len
    for batch in batches:
        diffusion_rows(
            suite,
            diffusion_model,
            section="batch sweep",
            length=L,
            steps_per_block=diffusion_model.config.block_len,
            batch_size=batch,
            stages=[diffusion_stage],
            reference={},
        )
        ar_rows(
            suite,
            ar_model,
            section="batch sweep",
            n_tokens=ar_model.config.context_len - 1,
            batch_size=batch,
            stages=[ar_stage],
            reference={},
        )


def _checkpoint(name: str, device: torch.device):
    from course_lib import checkpoints

    path = env.DATA_DIR / "checkpoints" / f"{name}.pt"
    return checkpoints.load_checkpoint(path, device=device) if path.exists() else None


def quality_rows(suite: Suite, *, batch_size: int, length: int | None = None) -> None:
    """Speed and quality of the shipped checkpoints (skipped where one is missing).

    The float32 fast samplers write the references' tokens; on a GPU the bf16 ones do not,
    so their quality is measured beside (and their token agreement with the reference).
    Samples are `length` tokens long (default: each model's context); MDLM takes one step
    per token.
    """
    from course_lib import data, fast, metrics

    device = suite.device
    scorer = _checkpoint("ar-small", device)
    if scorer is None:
        suite.note("quality: data/checkpoints/ar-small.pt (the scorer) is missing; no quality rows")
        return
    tokenizer = data.CharTokenizer()

    def validity(generated: torch.Tensor) -> float | None:
        texts = [tokenizer.decode(row) for row in generated.tolist()]
        try:
            return metrics.python_validity(texts)
        except ValueError:  # not one complete statement to judge (e.g. only spaces)
            return None

    def quality(tokens: torch.Tensor, prompt_len: int) -> dict:
        generated = tokens[:, prompt_len:].cpu()
        return {
            "quality": {
                "generative_perplexity": metrics.generative_perplexity(
                    tokens.cpu(), scorer, prompt_len=prompt_len, device=device
                ),
                "unigram_entropy_bits": metrics.unigram_entropy(generated),
                "statement_validity": validity(generated),
                "scorer": "ar-small.pt",
                "samples": tokens.shape[0],
            }
        }

    stages = _exact_and_fastest(device, fast.DIFFUSION_STAGES)
    for name, settings in (
        # margin confidence: the default (low_confidence) makes these small models write
        # mostly spaces (notebook 07)
        ("bd3lm-small", dict(steps_per_block=16, confidence="margin")),
        (
            "bd3lm-small",
            dict(steps_per_block=16, strategy="threshold", threshold=0.9, confidence="margin"),
        ),
        ("mdlm-small", dict(strategy="ancestral")),
    ):
        model = _checkpoint(name, device)
        if model is None:
            suite.note(f"quality: data/checkpoints/{name}.pt is missing; its rows are skipped")
            continue
        n = length or model.config.context_len
        settings = {"steps_per_block": n, **settings}  # MDLM: one step per token
        diffusion_rows(
            suite,
            model,
            section=f"quality {name}.pt",
            length=n,
            batch_size=batch_size,
            stages=_and_reading(stages),
            quality=quality,
            **settings,
        )
    ar_stages = _exact_and_fastest(device, fast.AR_STAGES)
    ar_rows(
        suite,
        scorer,
        section="quality ar-small.pt (scored by itself: a sanity check)",
        n_tokens=(length or scorer.config.context_len) - 1,
        batch_size=batch_size,
        stages=ar_stages,
        quality=quality,
    )


# -- the suites ------------------------------------------------------------------------------


def _stages(device: torch.device, stages: list, compile: bool) -> list:
    """The stages that run on `device`, without torch.compile unless `compile`."""
    from course_lib import fast

    runnable = fast.stages_for(device, stages)
    return runnable if compile else _without_compile(runnable)


def _without_compile(stages: list) -> list:
    return [(name, options) for name, options in stages if not options.compile]


def _quick(suite: Suite, *, compile: bool, smoke: bool) -> None:
    """Tiny random models: every code path in seconds (the tests run it)."""
    from course_lib import fast

    device, tiny = suite.device, SHAPES["tiny"]
    stages = _stages(device, fast.DIFFUSION_STAGES, compile)
    block = _random_model(tiny, "block_causal", device, block_len=8)
    diffusion_rows(
        suite, block, section="block diffusion", length=32, steps_per_block=8, stages=stages
    )
    mdlm = _random_model(tiny, "bidirectional", device)
    diffusion_rows(
        suite,
        mdlm,
        section="MDLM ancestral",
        length=32,
        steps_per_block=64,
        strategy="ancestral",
        stages=[fast.final_stage(stages)],
    )
    ar = _random_model(tiny, "causal", device)
    ar_rows(suite, ar, section="AR", n_tokens=31, stages=_stages(device, fast.AR_STAGES, compile))
    suite.note("random-init models: these rows measure speed only")


def _cpu(suite: Suite, *, compile: bool, smoke: bool) -> None:
    """A few minutes on 2 CPU cores: every stage, the headline comparisons, batches, quality."""
    from course_lib import fast

    device = suite.device
    stages = _stages(device, fast.DIFFUSION_STAGES, compile)
    final = [fast.final_stage(stages)]
    block = _random_model(SHAPES["small"], "block_causal", device)
    diffusion_rows(
        suite,
        block,
        section="stages: block diffusion, bd3lm-small shape",
        length=128,
        steps_per_block=16,
        stages=stages,
    )
    # the headline: the last stage, and the one before it to show what the last one buys
    design = _random_model(SHAPES["design"], "block_causal", device)
    for strategy in ("confidence", "ancestral"):
        diffusion_rows(
            suite,
            design,
            section="headline: block diffusion, 10.8M shape (6x384, L=256)",
            length=256,
            steps_per_block=16,
            strategy=strategy,
            stages=_without_compile(stages)[-2:],
        )
    ar_rows(
        suite,
        _random_model(SHAPES["design"], "causal", device),
        section="headline: AR, 10.8M shape (6x384, L=256)",
        n_tokens=255,
        stages=_without_compile(_stages(device, fast.AR_STAGES, compile))[-2:],
    )
    mdlm = _random_model(SHAPES["small"], "bidirectional", device)
    diffusion_rows(
        suite,
        mdlm,
        section="MDLM ancestral, mdlm-small shape",
        length=128,
        steps_per_block=128,
        strategy="ancestral",
        stages=final,
    )
    ar = _random_model(SHAPES["small"], "causal", device)
    ar_rows(
        suite,
        ar,
        section="stages: AR, ar-small shape",
        n_tokens=127,
        stages=_stages(device, fast.AR_STAGES, compile),
    )
    batch_rows(suite, block, ar, batches=(4, 16))
    quality_rows(suite, batch_size=8)
    suite.note(
        "random-init rows measure speed only; compile rows are off on CPU unless --compile "
        "(it takes ~1 min per model here and buys ~10%)"
    )


def _gpu(suite: Suite, *, compile: bool, smoke: bool) -> None:
    """A few minutes on one GPU: ceilings, AR decode vs diffusion steps at several sizes,
    quality in fp32 and bf16, every stage (bf16, CUDA graphs), batch sweeps, compile last.

    `smoke` runs the same code on tiny shapes (any device; CUDA-only rows are skipped).
    """
    from course_lib import fast
    from course_lib.bench_sizes import size_rows
    from course_lib.ceilings import measure_ceilings

    device = suite.device
    ceilings = measure_ceilings(device, quick=smoke)
    suite.result["ceilings"] = ceilings.to_dict()
    suite.save()
    # first what a short lease must not miss: the sizes against the roofline, then the
    # shipped models' speed with quality; then the stage-by-stage walk, the batch sweeps and
    # (last) torch.compile, the slowest rows
    size_rows(
        suite,
        ceilings,
        batches=(1, 2) if smoke else (1, 16, 64),
        full_batches=(1,) if smoke else (1, 8),
    )
    # smoke: the code, not the numbers (two blocks of the shipped models)
    quality_rows(suite, batch_size=2 if smoke else 16, length=32 if smoke else None)
    shape = SHAPES["tiny" if smoke else "gpt2-small"]
    L = shape["context_len"]
    # the GPU's stages (no prepacked weights); with --smoke on a CPU, CUDA-only rows skip
    stages = fast.stages_for("cuda", fast.DIFFUSION_STAGES)
    ar_stages = fast.stages_for("cuda", fast.AR_STAGES)
    block = _random_model(shape, "block_causal", device, block_len=8 if smoke else 16)
    section = f"stages: block diffusion, {'tiny' if smoke else 'GPT-2-small'} shape"
    block_reference = diffusion_rows(
        suite,
        block,
        section=section,
        length=L,
        steps_per_block=block.config.block_len,
        stages=_without_compile(stages),
    )
    ar = _random_model(shape, "causal", device)
    ar_reference = ar_rows(
        suite, ar, section="stages: AR", n_tokens=L - 1, stages=_without_compile(ar_stages)
    )
    mdlm = _random_model(shape, "bidirectional", device)
    diffusion_rows(
        suite,
        mdlm,
        section="MDLM ancestral",
        length=L,
        steps_per_block=L,
        strategy="ancestral",
        stages=_exact_and_fastest(device, stages),
    )
    batch_rows(suite, block, ar, batches=(2,) if smoke else (1, 8, 32, 128))
    if compile:  # last: the slowest rows, and the ones most likely to need a retry
        diffusion_rows(
            suite,
            block,
            section=section,
            length=L,
            steps_per_block=block.config.block_len,
            stages=[fast.final_stage(stages, compile=True)],
            reference=block_reference,
        )
        ar_rows(
            suite,
            ar,
            section="stages: AR",
            n_tokens=L - 1,
            stages=[fast.final_stage(ar_stages, compile=True)],
            reference=ar_reference,
        )


_SUITE_BODIES = {"quick": _quick, "cpu": _cpu, "gpu": _gpu}


def run_suite(
    name: str,
    *,
    device: str | None = None,
    out: str | Path | None = None,
    threads: int | None = None,
    cpu_time: bool = False,
    compile: bool | None = None,
    smoke: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the benchmark suite `name` and write it as JSON; returns what was written.

    - "quick": tiny random models, every code path, seconds (the tests run it).
    - "cpu": a few minutes on 2 CPU cores: the fast samplers' stages one by one against
      the references (bd3lm-small and ar-small shapes), the headline comparisons (block
      diffusion and AR) at the course's 10.8M-parameter, 256-token baseline shape with the
      last two stages, MDLM ancestral, batch sizes, and
      speed with quality for the shipped checkpoints.
    - "gpu": a few minutes on one GPU: `ceilings.measure_ceilings`, the stages with bf16,
      CUDA graphs and torch.compile (compile time apart), batch sweeps, AR decode vs
      diffusion steps at 85M-680M parameters, quality in float32 and bf16.

    `out` defaults to data/results/bench-NAME-DEVICE.json; `threads` sets torch's CPU threads;
    `cpu_time` times with CPU seconds of this process (steadier on a shared machine);
    `compile` adds torch.compile rows (default: on for "gpu" only); `smoke` lets "gpu" run
    on tiny shapes on any device, to check its code.
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}: choose one of {SUITES}")
    device = env.get_device(device)
    if name == "gpu" and device.type != "cuda" and not smoke:
        raise ValueError(
            "the gpu suite needs a CUDA device; run the cpu suite here, or --smoke to check "
            "the gpu suite's code on tiny shapes"
        )
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    compile = (name == "gpu") if compile is None else compile
    clock = time.process_time if cpu_time else time.perf_counter
    plan = {"quick": Plan(1, 2, clock=clock), "cpu": Plan(1, 3, clock=clock), "gpu": Plan(1, 3)}
    out = Path(out) if out else env.DATA_DIR / "results" / f"bench-{name}-{device.type}.json"
    suite = Suite(name, device, plan[name], out, log)
    suite.result["protocol"]["compile_rows"] = compile
    log(f"bench suite {name!r} on {device}, writing {out}")
    start = time.perf_counter()
    _SUITE_BODIES[name](suite, compile=compile, smoke=smoke)
    suite.result["wall_s"] = time.perf_counter() - start
    suite.save()
    return suite.result
