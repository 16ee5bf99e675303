"""course_lib.roofline: analytic costs by hand, the catalog's sources, honest timing, the
performance model's arithmetic, the plot, and a quick measurement of this machine."""

import io
import math
from dataclasses import replace

import pytest
import torch

from course_lib import env, hardware, roofline, roofline_check
from course_lib.ceilings import (
    QUICK_ROWS,
    Ceilings,
    Overhead,
    datasheet_ceilings,
    describe_ceilings,
    measure_ceilings,
)
from course_lib.model import ModelConfig, Transformer
from course_lib.roofline import (
    ARDecoding,
    BlockDiffusionSampling,
    DiffusionSampling,
    StepCost,
)

# A model small enough to count by hand: 1 block, d=8, f=32, vocab 10.
TINY = ModelConfig(vocab_size=10, context_len=16, n_layer=1, n_head=2, d_model=8)
# Non-embedding weights: qkv 8*24+24, proj 8*8+8, fc 8*32+32, proj 32*8+8, three
# layer norms 3*(8+8), head 8*10 (no bias).
TINY_WEIGHTS = (8 * 24 + 24) + (8 * 8 + 8) + (8 * 32 + 32) + (32 * 8 + 8) + 3 * 16 + 8 * 10
MATMUL_WEIGHTS = 8 * 24 + 8 * 8 + 8 * 32 + 32 * 8 + 8 * 10  # the 2N rule's N: 848
# Activation elements per token: one block 24*d + 4*f, plus 10*d + vocab outside it.
ACT_PER_TOKEN = (24 * 8 + 4 * 32) + 10 * 8 + 10


def test_weights_read_are_the_models_non_embedding_parameters():
    assert TINY_WEIGHTS == 968
    assert roofline.forward_cost(TINY, batch_size=1, new_tokens=1).weight_bytes == 4 * 968
    for config in (TINY, ModelConfig(), ModelConfig(n_layer=3, d_model=96, n_head=3, mlp_ratio=2)):
        cost = roofline.forward_cost(config, batch_size=1, new_tokens=1, dtype=torch.bfloat16)
        assert cost.weight_bytes == 2 * Transformer(config).num_params(non_embedding=True)


def test_ar_decode_step_cost_by_hand():
    cost = roofline.ar_decode_step_cost(TINY, batch_size=2, context=5)
    # 2 sequences x 1 token: 2 FLOPs per matmul weight, and attention to 5 cached + itself
    # (2 * 2 * d FLOPs per key: scores and weighted sum)
    assert cost.flops == 2 * 2 * MATMUL_WEIGHTS + 2 * (2 * 2 * 8 * 6)
    assert cost.weight_bytes == 4 * 968  # read once whatever the batch
    assert cost.kv_bytes == 4 * 2 * 1 * 2 * 8 * (5 + 1)  # B * layers * (K, V) * d * positions
    assert cost.activation_bytes == 4 * 2 * ACT_PER_TOKEN
    assert cost.layer_activation_bytes == 4 * 2 * (24 * 8 + 4 * 32)
    assert cost.bytes == 3872 + 768 + 3280
    assert cost.intensity == pytest.approx(cost.flops / 7920)
    half = roofline.ar_decode_step_cost(TINY, batch_size=2, context=5, dtype=torch.bfloat16)
    assert (half.flops, half.bytes) == (cost.flops, cost.bytes // 2)
    assert half.intensity == pytest.approx(2 * cost.intensity)


def test_diffusion_and_block_step_costs_by_hand():
    step = roofline.diffusion_step_cost(TINY, batch_size=3, length=4)
    assert step.flops == 3 * (2 * 4 * MATMUL_WEIGHTS + 2 * 2 * 4 * 4 * 8)  # 4 queries x 4 keys
    assert (step.weight_bytes, step.kv_bytes) == (4 * 968, 0)  # no cache
    assert step.activation_bytes == 4 * 3 * 4 * ACT_PER_TOKEN
    block = roofline.block_diffusion_step_cost(TINY, batch_size=1, block_len=2, context=4)
    assert block.flops == 2 * 2 * MATMUL_WEIGHTS + 2 * 2 * 2 * 6 * 8  # 2 queries x 6 keys
    assert block.kv_bytes == 4 * 1 * 2 * 8 * (4 + 2)
    assert block.activation_bytes == 4 * 2 * ACT_PER_TOKEN


def test_decode_reads_every_weight_per_token_and_diffusion_reuses_them():
    wide = ModelConfig(n_layer=12, n_head=12, d_model=768)
    ar = roofline.ar_decode_step_cost(wide, batch_size=1, context=128, dtype=torch.bfloat16)
    diffusion = roofline.diffusion_step_cost(wide, batch_size=1, length=256, dtype=torch.bfloat16)
    assert 0.5 < ar.intensity < 2  # ~2 FLOPs per 2-byte weight
    assert diffusion.intensity > 50 * ar.intensity
    batched = roofline.ar_decode_step_cost(wide, batch_size=32, context=128, dtype=torch.bfloat16)
    assert batched.weight_bytes == ar.weight_bytes  # batching shares the weight reads


def test_costs_reject_bad_input():
    with pytest.raises(ValueError, match="context length"):
        roofline.ar_decode_step_cost(TINY, batch_size=1, context=16)
    with pytest.raises(ValueError, match="batch_size"):
        roofline.diffusion_step_cost(TINY, batch_size=0, length=4)
    with pytest.raises(ValueError, match="uses_cache"):
        roofline.forward_cost(TINY, batch_size=1, new_tokens=1, context=2)
    with pytest.raises(ValueError, match="dtype"):
        roofline.forward_cost(TINY, batch_size=1, new_tokens=1, dtype=torch.int8)
    with pytest.raises(ValueError, match="divide"):
        BlockDiffusionSampling(1, length=10, block_len=4, steps_per_block=2)
    with pytest.raises(ValueError, match="steps"):
        DiffusionSampling(1, length=8, steps=0)
    with pytest.raises(ValueError, match="exceeds"):
        ARDecoding(1, n_tokens=16, prompt_len=1).step_costs(TINY, torch.float32)


# ---------------------------------------------------------------- catalog


def test_catalog_covers_the_gpus_with_a_source_for_every_figure():
    assert {"H200 SXM", "H100 SXM", "A100 80GB SXM", "L4", "T4", "RTX 4090"} <= set(
        hardware.CATALOG
    )
    for spec in hardware.CATALOG.values():
        figures = spec.figures()
        assert {"flops.float32", "memory_bandwidth", "cache_bytes"} <= set(figures)
        assert any(k in figures for k in ("flops.bfloat16", "flops.float16"))
        for name, figure in figures.items():
            assert figure.value > 0, (spec.name, name)
            assert figure.source and figure.url.startswith("https://"), (spec.name, name)
            assert figure.unit in {"FLOP/s", "bytes/s", "bytes"}, (spec.name, name)
            # vendor documents only: NVIDIA's datasheets and whitepapers, no third-party pages
            assert "nvidia.com/" in figure.url, (spec.name, name, figure.url)
            if figure.checked_against:
                assert figure.checked_against.startswith("NVIDIA"), (spec.name, name)
                assert "nvidia.com/" in figure.checked_against, (spec.name, name)
            if figure.sparse_quote is not None:  # quoted with sparsity: stored dense
                assert figure.value == figure.sparse_quote / 2
                assert "sparsity" in figure.note


def test_catalog_dense_figures():
    h100 = hardware.CATALOG["H100 SXM"]
    assert h100.flops["bfloat16"].value == pytest.approx(989.5e12)  # 1,979 with sparsity
    assert h100.memory_bandwidth.value == pytest.approx(3.35e12)
    assert hardware.CATALOG["A100 80GB SXM"].flops["bfloat16"].value == pytest.approx(312e12)
    assert "bfloat16" not in hardware.CATALOG["T4"].flops  # Turing has no bfloat16
    ridge = h100.flops["bfloat16"].value / h100.memory_bandwidth.value
    assert 250 < ridge < 350  # FLOP/byte a kernel needs to be compute-bound on an H100


# ---------------------------------------------------------------- performance model


def hand_ceilings(**overrides) -> Ceilings:
    values = dict(
        device="cpu",
        matmul_flops={"float32": 1e9},
        memory_bandwidth=1e8,
        cache_bandwidth=1e9,
        cache_bytes=0,  # nothing fits
        matvec_bandwidth={"float32": 5e7},
        matvec_cache_bandwidth={"float32": 5e8},
        overhead=Overhead(call_s=0.01, per_layer_s=0.001),
        cached_overhead=Overhead(call_s=0.02, per_layer_s=0.002),
    )
    return Ceilings(**(values | overrides))


def hand_cost(flops=0, weights=0, kv=0, acts=0, layer_acts=0, uses_cache=False) -> StepCost:
    return StepCost(
        kind="test",
        batch_size=1,
        new_tokens=1,
        context=0,
        n_layer=2,
        dtype="float32",
        uses_cache=uses_cache,
        flops=flops,
        weight_bytes=weights,
        kv_bytes=kv,
        activation_bytes=acts,
        layer_activation_bytes=layer_acts,
    )


def test_step_time_is_max_of_compute_and_memory_plus_overhead():
    ceilings = hand_ceilings()
    compute_bound = roofline.predict_step_time(hand_cost(flops=10**9, weights=10**6), ceilings)
    assert compute_bound.compute_s == pytest.approx(1.0)
    assert compute_bound.memory_s == pytest.approx(1e6 / 5e7)  # weights at matvec bandwidth
    assert compute_bound.overhead_s == pytest.approx(0.01 + 2 * 0.001)
    assert compute_bound.total_s == pytest.approx(1.0 + 0.012)
    assert compute_bound.bound == "compute"

    memory_bound = hand_cost(
        flops=10**6, weights=10**8, kv=10**7, acts=10**7, layer_acts=10**6, uses_cache=True
    )
    t = roofline.predict_step_time(memory_bound, ceilings)
    assert t.memory_s == pytest.approx(10**8 / 5e7 + 10**7 / 1e8 + 10**7 / 1e8)
    assert t.overhead_s == pytest.approx(0.02 + 2 * 0.002)  # the cached path's overhead
    assert t.total_s == pytest.approx(t.memory_s + t.overhead_s)
    assert t.bound == "memory"


def test_data_that_fits_in_cache_is_read_at_cache_rates():
    cost = hand_cost(weights=10**6, kv=10**6, acts=10**6, layer_acts=10**5, uses_cache=True)
    everything_fits = roofline.predict_step_time(cost, hand_ceilings(cache_bytes=2 * 10**6))
    assert everything_fits.memory_s == pytest.approx(1e6 / 5e8 + 1e6 / 1e9 + 1e6 / 1e9)
    weights_only = roofline.predict_step_time(cost, hand_ceilings(cache_bytes=10**6))
    assert weights_only.memory_s == pytest.approx(1e6 / 5e8 + 1e6 / 1e8 + 1e6 / 1e9)


def test_on_a_gpu_overhead_is_a_floor_not_an_addition():
    ceilings = hand_ceilings(overhead_overlaps=True)
    small = roofline.predict_step_time(hand_cost(flops=10**6), ceilings)
    assert small.total_s == pytest.approx(0.012) and small.bound == "overhead"
    big = roofline.predict_step_time(hand_cost(flops=10**9), ceilings)
    assert big.total_s == pytest.approx(1.0)


def test_prediction_needs_a_measured_dtype():
    cost = roofline.diffusion_step_cost(TINY, batch_size=1, length=4, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        roofline.predict_step_time(cost, hand_ceilings())


def test_tokens_per_second_of_each_sampler():
    ceilings = hand_ceilings()
    step = roofline.predict_step_time(
        roofline.diffusion_step_cost(TINY, batch_size=2, length=8), ceilings
    )
    diffusion = roofline.predict_sampling(TINY, DiffusionSampling(2, length=8, steps=4), ceilings)
    assert diffusion.n_calls == 4
    assert diffusion.tokens_per_s == pytest.approx(2 * 8 / (4 * step.total_s))

    ar = roofline.predict_sampling(TINY, ARDecoding(3, n_tokens=5, prompt_len=2), ceilings)
    prefill = roofline.forward_cost(TINY, batch_size=3, new_tokens=2, uses_cache=True)
    steps = [prefill] + [
        roofline.ar_decode_step_cost(TINY, batch_size=3, context=c) for c in (2, 3, 4, 5)
    ]
    expected = sum(roofline.predict_step_time(s, ceilings).total_s for s in steps)
    assert (ar.n_calls, ar.tokens) == (5, 15)
    assert ar.seconds == pytest.approx(expected)

    block = roofline.predict_sampling(TINY, BlockDiffusionSampling(1, 8, 4, 3), ceilings)
    assert block.n_calls == 2 * (3 + 1)  # 2 blocks, 3 denoising steps and a commit each


def test_compare_reports_relative_error():
    ceilings = hand_ceilings()
    sampler = DiffusionSampling(1, length=8, steps=2)
    predicted = roofline.predict_sampling(TINY, sampler, ceilings).tokens_per_s
    (row,) = roofline_check.compare_tokens_per_s(
        [("tiny", TINY, sampler, predicted / 1.25)], ceilings
    )
    assert row["relative_error"] == pytest.approx(0.25)
    assert row["predicted_tokens_per_s"] == pytest.approx(predicted)
    assert "tiny" in roofline_check.format_table([row])
    assert "GFLOP/s" in describe_ceilings(ceilings)


def test_datasheet_ceilings_put_decode_on_the_memory_roof():
    h100 = datasheet_ceilings(hardware.CATALOG["H100 SXM"])
    wide = ModelConfig(n_layer=12, n_head=12, d_model=768)
    ar = roofline.ar_decode_step_cost(wide, batch_size=1, context=128, dtype=torch.bfloat16)
    diffusion = roofline.diffusion_step_cost(wide, batch_size=1, length=256, dtype=torch.bfloat16)
    t_ar = roofline.predict_step_time(ar, h100)
    t_diffusion = roofline.predict_step_time(diffusion, h100)
    assert t_ar.bound == "memory"
    assert t_diffusion.total_s < 4 * t_ar.total_s  # 256 positions for the price of a few


# ---------------------------------------------------------------- measurement helpers


class FakeClock:
    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture
def events(monkeypatch):
    """Record forwards and device synchronisations, in order."""
    log: list[str] = []

    def fake_synchronize(device):
        assert torch.device(device).type == "cpu"
        log.append("sync")

    monkeypatch.setattr(env, "synchronize", fake_synchronize)
    return log


def counted(model: Transformer, log: list[str]) -> Transformer:
    model.register_forward_pre_hook(lambda module, args: log.append("fwd"))
    return model


def tiny_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(**(TINY.to_dict() | overrides)))


def test_ar_step_measurement_warms_up_then_synchronises_every_timed_run(events):
    model = counted(tiny_model(), events)
    model.train()
    m = roofline_check.measure_ar_decode_step(
        model, batch_size=2, context=3, warmup=2, repeats=3, clock=FakeClock(0.5)
    )
    # fill the cache, 2 warm-up calls, synchronise, then each timed call synchronised
    assert events == ["fwd"] * 3 + ["sync"] + ["fwd", "sync"] * 3
    assert m.timing.median_s == pytest.approx(0.5)
    assert m.achieved_flops == pytest.approx(m.cost.flops / 0.5)
    assert m.cost == roofline.ar_decode_step_cost(TINY, batch_size=2, context=3)
    assert m.point() == (m.label, m.cost.intensity, m.achieved_flops)
    assert model.training  # restored


def test_diffusion_step_measurement_warms_up_then_synchronises(events):
    model = counted(tiny_model(attention="bidirectional"), events)
    m = roofline_check.measure_diffusion_step(
        model, batch_size=2, length=8, warmup=1, repeats=2, clock=FakeClock(0.25)
    )
    assert events == ["fwd", "sync"] + ["fwd", "sync"] * 2
    assert m.achieved_flops == pytest.approx(m.cost.flops / 0.25)


def test_sampling_measurement_times_the_samplers_calls(events):
    model = counted(tiny_model(), events)
    m = roofline_check.measure_sampling(
        model, ARDecoding(2, n_tokens=3, prompt_len=2), warmup=1, repeats=2, clock=FakeClock(1.0)
    )
    run = ["fwd"] * 3  # the prompt, then 2 more tokens
    assert events == run + ["sync"] + (run + ["sync"]) * 2
    assert m.tokens_per_s == pytest.approx(2 * 3 / 1.0)

    events.clear()
    block_model = counted(tiny_model(attention="block_causal", block_len=4), events)
    sampler = BlockDiffusionSampling(1, length=8, block_len=4, steps_per_block=2)
    m = roofline_check.measure_sampling(
        block_model, sampler, warmup=0, repeats=1, clock=FakeClock(1)
    )
    assert events.count("fwd") == m.n_calls == 6


def test_fast_sampler_measurement_runs_notebook_09s_samplers(events):
    model = counted(tiny_model(), events)
    m = roofline_check.measure_fast_sampler(
        model, ARDecoding(2, n_tokens=3, prompt_len=2), warmup=1, repeats=2, clock=FakeClock(1.0)
    )
    # the real run and the run with a free network: each synchronised after its warm-up and
    # after each of its timed runs; the free run makes no forward at all
    assert events.count("sync") == 2 * 3
    assert m.tokens_per_s == pytest.approx(2 * 3 / 1.0)
    assert m.own_s == pytest.approx(1.0)

    events.clear()
    block_model = counted(tiny_model(attention="block_causal", block_len=4), events)
    sampler = BlockDiffusionSampling(1, length=8, block_len=4, steps_per_block=4)
    m = roofline_check.measure_fast_sampler(
        block_model, sampler, warmup=0, repeats=1, clock=FakeClock(1)
    )
    assert m.n_calls == 2 * (4 + 1)  # the modelled calls: 4 steps and a commit per block
    assert 2 * 4 <= events.count("fwd") <= m.n_calls  # (the sampler skips the last commit)
    assert events.count("sync") == 2 * 2  # the real run, then the free run: before and after
    with pytest.raises(ValueError, match="no fast sampler"):
        roofline_check.measure_fast_sampler(model, DiffusionSampling(1, length=8, steps=2))


def test_check_performance_model_of_the_fast_samplers():
    config = TINY.__class__(**(TINY.to_dict() | {"attention": "block_causal", "block_len": 4}))
    cases = [
        ("tiny", TINY, ARDecoding(2, n_tokens=4, prompt_len=2)),
        ("tiny", config, BlockDiffusionSampling(1, length=8, block_len=4, steps_per_block=4)),
    ]
    rows = roofline_check.check_performance_model(
        "cpu", ceilings=hand_ceilings(), cases=cases, fast_samplers=True
    )
    assert [r["sampler"] for r in rows] == [sampler.describe() for _, _, sampler in cases]
    assert all(r["measured_tokens_per_s"] > 0 and r["sampler_own_s"] > 0 for r in rows)


def test_the_samplers_own_time_adds_to_the_predicted_network_time():
    sampler = ARDecoding(1, n_tokens=4, prompt_len=2)
    p = roofline.predict_sampling(TINY, sampler, hand_ceilings())
    (plain,) = roofline_check.compare_tokens_per_s([("t", TINY, sampler, 1.0)], hand_ceilings())
    (own,) = roofline_check.compare_tokens_per_s([("t", TINY, sampler, 1.0, 0.5)], hand_ceilings())
    assert plain["predicted_tokens_per_s"] == pytest.approx(p.tokens / p.seconds)
    assert own["predicted_tokens_per_s"] == pytest.approx(p.tokens / (p.seconds + 0.5))
    assert own["sampler_own_s"] == 0.5 and plain["sampler_own_s"] == 0.0
    assert "own s" in roofline_check.format_table(
        [own]
    ) and "own s" not in roofline_check.format_table([plain])
    assert len(roofline_check.fast_sampler_cases(quick=False)) == 9


def test_measurement_rejects_a_model_without_cache():
    with pytest.raises(ValueError, match="KV cache"):
        roofline_check.measure_ar_decode_step(
            tiny_model(attention="bidirectional"), batch_size=1, context=2
        )


def test_check_performance_model_runs_its_cases():
    cases = [
        ("tiny", TINY, ARDecoding(2, n_tokens=4, prompt_len=2)),
        (
            "tiny",
            TINY.__class__(**(TINY.to_dict() | {"attention": "bidirectional"})),
            DiffusionSampling(2, length=8, steps=2),
        ),
    ]
    rows = roofline_check.check_performance_model("cpu", ceilings=hand_ceilings(), cases=cases)
    assert [r["label"] for r in rows] == ["tiny", "tiny"]
    assert all(r["measured_tokens_per_s"] > 0 and math.isfinite(r["relative_error"]) for r in rows)


# ---------------------------------------------------------------- plot and real measurement


def test_roofline_plot_renders_headless_with_labelled_axes():
    specs = [hardware.CATALOG["H100 SXM"], hardware.CATALOG["T4"]]
    points = [("AR decode", 1.0, 2e9), ("diffusion", 200.0, 5e10)]
    fig = roofline.plot_roofline(hand_ceilings(), specs=specs, points=points)
    ax = fig.axes[0]
    assert "FLOP/byte" in ax.get_xlabel() and "FLOP/s" in ax.get_ylabel()
    assert ax.get_xscale() == ax.get_yscale() == "log"
    styles = [line.get_linestyle() for line in ax.get_lines()]
    assert styles.count("--") == len(specs)  # datasheet roofs dashed
    assert styles.count("-") == 2  # measured float32 roof and the cache roof, solid
    assert [t.get_text() for t in ax.texts] == ["AR decode", "diffusion"]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # Agg, no display needed
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_matmul_rate_interpolates_the_measured_rows_up_to_the_peak():
    c = hand_ceilings(
        rows_flops={"float32": {1: 1e8, 4: 4e8, 16: 8e8}},
        rows_cache_flops={"float32": {"1": 5e8}},  # as read back from JSON: string keys
        protocol={"matmul_n": 256},
    )
    assert c.matmul_rate("float32", 1) == 1e8
    assert c.matmul_rate("float32", 4) == pytest.approx(4e8)
    assert c.matmul_rate("float32", 2) == pytest.approx(2e8)  # log-log: geometric mean
    assert c.matmul_rate("float32", 8) == pytest.approx(math.sqrt(4e8 * 8e8))
    assert c.matmul_rate("float32", 64) == pytest.approx(math.sqrt(8e8 * 1e9))  # to the peak
    assert c.matmul_rate("float32", 10_000) == 1e9
    assert c.rows_cache_flops == {"float32": {1: 5e8}}
    assert c.matmul_rate("float32", 1, weights_in_cache=True) == 5e8
    assert hand_ceilings().matmul_rate("float32", 3) == 1e9  # nothing measured: the peak
    with pytest.raises(ValueError, match="rows"):
        c.matmul_rate("float32", 0)


def test_the_compute_term_uses_the_rate_at_the_steps_rows():
    c = hand_ceilings(rows_flops={"float32": {1: 1e8, 16: 8e8}}, protocol={"matmul_n": 256})
    # weights=1 byte: more than the cache (0 bytes), so the in-memory rates apply
    one_row = roofline.predict_step_time(hand_cost(flops=10**8, weights=1), c)
    assert one_row.compute_s == pytest.approx(1.0)  # 1e8 FLOPs at 1e8 FLOP/s
    block = replace(hand_cost(flops=16 * 10**8, weights=1), new_tokens=16)
    assert roofline.predict_step_time(block, c).compute_s == pytest.approx(2.0)
    # slow for want of rows, but the verdict is the roofline's: FLOPs at the peak vs bytes
    slow = roofline.predict_step_time(hand_cost(flops=10**8, weights=10**7), c)
    assert slow.compute_s == pytest.approx(1.0) and slow.memory_s == pytest.approx(0.2)
    assert slow.peak_compute_s == pytest.approx(0.1) and slow.bound == "memory"
    assert slow.total_s == pytest.approx(1.0 + 0.012)


def test_quick_ceilings_are_positive_and_sane(monkeypatch):
    synchronized = []
    real_synchronize = env.synchronize
    monkeypatch.setattr(env, "synchronize", lambda d: synchronized.append(d) or real_synchronize(d))
    c = measure_ceilings("cpu", quick=True)
    # every timing (matmul, two weight stacks at each row count per dtype, two copies, four
    # tiny forwards) synchronises after its warm-up and after each of its repeats
    timings = (1 + 2 * len(QUICK_ROWS)) * len(c.matmul_flops) + 2 + 4
    assert len(synchronized) >= timings * (1 + c.protocol["repeats"])
    assert "float32" in c.matmul_flops
    assert ("bfloat16" in c.matmul_flops) == env.cpu_has_bf16_units()
    for flops in c.matmul_flops.values():
        assert 1e8 < flops < 1e15  # between 0.1 GFLOP/s and 1 PFLOP/s
    for bandwidth in (c.memory_bandwidth, c.cache_bandwidth, *c.matvec_bandwidth.values()):
        assert 1e8 < bandwidth < 1e13  # between 0.1 GB/s and 10 TB/s
    assert c.cache_bytes > 0
    for overhead in (c.overhead, c.cached_overhead):
        assert overhead.call_s >= 0 and overhead.per_layer_s >= 0
        assert 0 < overhead.seconds(4) < 1.0
    assert c.protocol["quick"] is True and not c.overhead_overlaps
    for table in (c.rows_flops, c.rows_cache_flops):
        assert set(table) == set(c.matmul_flops)
        for rates in table.values():
            assert sorted(rates) == list(QUICK_ROWS)
            assert rates[256] > rates[1]  # reusing each weight read for more rows pays
