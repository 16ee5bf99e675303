"""Checks of notebook 10: right answers pass, stubs are "not attempted", typical mistakes get their hint."""

import math

import pytest
from exercise_helpers import right

from course_lib import checks


def flops_and_bytes(n_params, n_tokens, bytes_per_weight):
    return 2 * n_params * n_tokens, n_params * bytes_per_weight


def attainable(intensity, peak_flops, bandwidth):
    return min(peak_flops, intensity * bandwidth)


def step_seconds(flops, n_bytes, flop_rate, bandwidth, overhead_s):
    return max(flops / flop_rate, n_bytes / bandwidth) + overhead_s


def stub(*args):
    raise NotImplementedError


def test_right_answers_pass_and_stubs_are_not_attempted(capsys):
    assert right(checks.check_weight_flops_and_bytes(flops_and_bytes))
    assert right(checks.check_attainable_flops(attainable))
    assert right(checks.check_predict_step_seconds(step_seconds))
    assert "correct" in capsys.readouterr().out
    assert not checks.check_weight_flops_and_bytes(stub)
    assert not checks.check_attainable_flops(stub)
    assert not checks.check_predict_step_seconds(stub)
    assert capsys.readouterr().out.count("not attempted") == 3


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda n, t, s: (n * t, n * s), "factor 2 FLOPs per multiply-add"),
        (lambda n, t, s: (2 * n, n * s), "grow with n_tokens"),
        (lambda n, t, s: (2 * n * t, 2 * n * s), "bytes read \\+ written"),
        (lambda n, t, s: (2 * n * t, n * s * t), "once per position"),
        (lambda n, t, s: (2 * n * t, 8 * n * s), "bits"),
        (lambda n, t, s: (2 * n * t, 4 * n), "assumed 4 bytes"),
        (lambda n, t, s: 2 * t / s, "return a pair"),
        (lambda n, t, s: (2 * n * t + 1e3, n * s), "expected"),
    ],
)
def test_typical_flops_and_bytes_mistakes_get_their_hint(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_weight_flops_and_bytes(wrong)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda i, p, b: max(p, i * b), "min"),
        (lambda i, p, b: i * b, "forgot the compute roof"),
        (lambda i, p, b: p, "forgot the memory roof"),
        (lambda i, p, b: min(p, i / b), "units"),
        (lambda i, p, b: min(p, b / i), "units"),
        (lambda i, p, b: min(p, i * b) * 1.1, "expected"),
    ],
)
def test_typical_roofline_mistakes_get_their_hint(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_attainable_flops(wrong)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda f, n, p, b, o: f / p + n / b + o, "added compute and memory"),
        (lambda f, n, p, b, o: max(f / p, n / b), "forgot the overhead"),
        (lambda f, n, p, b, o: max(f / p, n / b, o), "GPU model"),
        (lambda f, n, p, b, o: min(f / p, n / b) + o, "use max"),
        (lambda f, n, p, b, o: max(f * p, n * b) + o, "work / rate"),
        (lambda f, n, p, b, o: f / p + o, "only one of the two roofs"),
        (lambda f, n, p, b, o: max(f / p, n / b) + 2 * o, "expected"),
    ],
)
def test_typical_step_time_mistakes_get_their_hint(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_predict_step_seconds(wrong)


def test_the_checked_formulas_match_the_library():
    # the exercise's answers are the library's model in its simplest form
    from course_lib import roofline
    from course_lib.model import ModelConfig

    config = ModelConfig()
    cost = roofline.forward_cost(config, batch_size=1, new_tokens=64)
    flops, n_bytes = flops_and_bytes(cost.weight_bytes // 4, 64, 4)
    assert n_bytes == cost.weight_bytes
    assert 0.8 < flops / cost.flops <= 1.0  # the rest is attention


def test_the_checked_step_time_is_the_librarys_with_one_bandwidth():
    # with every bandwidth equal, predict_step_time is the exercise's formula at the matmul
    # rate of the step's rows: a few rows are charged their measured rate, not the peak
    from course_lib import roofline
    from course_lib.ceilings import Ceilings, Overhead
    from course_lib.model import ModelConfig

    bandwidth = 2e10
    ceilings = Ceilings(
        device="cpu",
        matmul_flops={"float32": 1e11},
        memory_bandwidth=bandwidth,
        cache_bandwidth=bandwidth,
        cache_bytes=0,  # nothing fits: the rates with the weights in main memory apply
        matvec_bandwidth={"float32": bandwidth},
        matvec_cache_bandwidth={"float32": bandwidth},
        overhead=Overhead(call_s=1e-4, per_layer_s=1e-5),
        cached_overhead=Overhead(call_s=2e-4, per_layer_s=2e-5),
        rows_flops={"float32": {1: 1e10, 16: 4e10, 256: 8e10}},
        protocol={"matmul_n": 2048},
    )
    config = ModelConfig()
    costs = [roofline.ar_decode_step_cost(config, batch_size=b, context=64) for b in (1, 8, 32)]
    costs += [
        roofline.block_diffusion_step_cost(config, batch_size=1, block_len=16, context=64),
        roofline.diffusion_step_cost(config, batch_size=1, length=256),
    ]
    for cost in costs:
        rows = cost.batch_size * cost.new_tokens
        rate = ceilings.matmul_rate(cost.dtype, rows)
        assert rate < ceilings.compute_peak(cost.dtype)
        overhead = ceilings.cached_overhead if cost.uses_cache else ceilings.overhead
        want = roofline.predict_step_time(cost, ceilings).total_s
        got = step_seconds(cost.flops, cost.bytes, rate, bandwidth, overhead.seconds(cost.n_layer))
        assert got == pytest.approx(want, rel=1e-12)


# -- exercise 4 (derive) and exercise 5 (debug) ----------------------------------------------


def compute_bound(peak_flops, bandwidth, bytes_per_weight):
    return peak_flops * bytes_per_weight / (2 * bandwidth)


def test_the_derived_compute_bound_tokens_pass_and_use_this_machines_ceilings(capsys):
    from types import SimpleNamespace

    machine = SimpleNamespace(matmul_flops={"float32": 100e9}, memory_bandwidth=25e9)
    assert right(checks.check_compute_bound_tokens(compute_bound, machine))
    out = capsys.readouterr().out
    assert "this machine, float32 weights from memory: 8 positions" in out
    assert "H100 SXM, bfloat16: 295 positions" in out
    assert not checks.check_compute_bound_tokens(stub)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda p, b, s: p / b, "ridge point in FLOP/byte"),
        (lambda p, b, s: p / (2 * b), "left out the bytes per weight"),
        (lambda p, b, s: p * s / b, "2 FLOPs"),
        (lambda p, b, s: 2 * b / (p * s), "upside down"),
        (lambda p, b, s: 8.0, "solve for T"),
    ],
)
def test_a_wrong_derivation_gets_its_hint(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_compute_bound_tokens(wrong)


def fixed_break_even(t_ar, t_pass, block_len):
    steps = t_ar / t_pass - 1
    return block_len / steps if steps >= 1 else math.inf


def test_the_fixed_break_even_passes_and_the_planted_bug_is_named(capsys):
    assert right(checks.check_break_even_fix(fixed_break_even))
    assert "k* = b" in capsys.readouterr().out
    assert not checks.check_break_even_fix(stub)

    def colleagues(t_ar, t_pass, block_len):  # the planted bug, unchanged
        steps = t_ar / t_pass
        return block_len / steps if steps >= 1 else math.inf

    with pytest.raises(checks.CheckFailed, match="still the colleague's version"):
        checks.check_break_even_fix(colleagues)

    def no_guard(t_ar, t_pass, block_len):
        return block_len / (t_ar / t_pass - 1)

    with pytest.raises(checks.CheckFailed, match="return math.inf"):
        checks.check_break_even_fix(no_guard)

    def off_by_a_block(t_ar, t_pass, block_len):
        steps = t_ar / t_pass - 2
        return block_len / steps if steps >= 1 else math.inf

    with pytest.raises(checks.CheckFailed, match="expected"):
        checks.check_break_even_fix(off_by_a_block)
