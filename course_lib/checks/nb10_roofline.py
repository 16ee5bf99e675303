"""Checks for notebook 10 (roofline): FLOPs and bytes of a forward, the roofline, a step time."""

from __future__ import annotations

from course_lib.checks._core import CheckFailed, as_number, close, run_check

SOLUTION = "see notebooks/solutions/10_roofline_solutions.ipynb"


def _close(actual, expected: float, rel: float = 1e-6) -> bool:
    return close(actual, expected, rtol=rel)


def _number(value, what: str) -> float:
    return as_number(value, what, finite=True)


def check_weight_flops_and_bytes(weight_flops_and_bytes) -> bool:
    """`weight_flops_and_bytes(n_params, n_tokens, bytes_per_weight)` -> (FLOPs, bytes) of the
    matmuls of one forward that scores `n_tokens` positions with `n_params` weights."""

    cases = [  # (n_params, n_tokens, bytes_per_weight)
        (1_000_000, 1, 4),
        (3_000_000, 256, 4),
        (25_000_000, 32, 2),
        (7_000, 5, 8),
    ]

    def test() -> str:
        for n_params, n_tokens, size in cases:
            answer = weight_flops_and_bytes(n_params, n_tokens, size)
            if not isinstance(answer, tuple | list) or len(answer) != 2:
                raise CheckFailed(
                    "return a pair (flops, bytes), e.g. `return flops, n_bytes`; got "
                    f"{type(answer).__name__}"
                )
            flops = _number(answer[0], "flops")
            n_bytes = _number(answer[1], "bytes")
            case = f"(n_params={n_params:,}, n_tokens={n_tokens}, bytes_per_weight={size})"
            want_flops, want_bytes = 2 * n_params * n_tokens, n_params * size
            if _close(flops, n_params * n_tokens) and n_params * n_tokens != want_flops:
                raise CheckFailed(
                    f"flops for {case} are half the answer: you forgot the factor 2 FLOPs per "
                    "multiply-add (each weight multiplies an input and adds it to a sum)"
                )
            if _close(flops, 2 * n_params) and n_tokens > 1:
                raise CheckFailed(
                    f"flops for {case} are those of one position: every one of the n_tokens "
                    "positions is multiplied by every weight, so FLOPs grow with n_tokens"
                )
            if not _close(flops, want_flops):
                raise CheckFailed(
                    f"flops for {case}: got {flops:,.0f}, expected {want_flops:,}. Each weight "
                    "does one multiply-add (2 FLOPs) per position scored"
                )
            if _close(n_bytes, n_params * 4) and size != 4:
                raise CheckFailed(
                    f"bytes for {case}: you assumed 4 bytes per weight; use bytes_per_weight "
                    "(bfloat16 weights are 2 bytes, float64 are 8)"
                )
            if _close(n_bytes, 2 * want_bytes):
                raise CheckFailed(
                    f"bytes for {case} are twice the answer: you used bytes read + written "
                    "for the weights, but a forward only reads each weight once (it writes "
                    "activations, which this count leaves out)"
                )
            if _close(n_bytes, want_bytes * n_tokens) and n_tokens > 1:
                raise CheckFailed(
                    f"bytes for {case} grow with n_tokens: you read the weights once per "
                    "position, but one forward reads each weight once and applies it to every "
                    "position (that is the whole point of scoring many positions per step)"
                )
            if _close(n_bytes, n_params * size * 8):
                raise CheckFailed(f"bytes for {case} are 8x too large: you counted bits, not bytes")
            if not _close(n_bytes, want_bytes):
                raise CheckFailed(
                    f"bytes for {case}: got {n_bytes:,.0f}, expected {want_bytes:,} "
                    "(every weight read once, bytes_per_weight bytes each)"
                )
        return (
            "An AR decode step (1 token) in float32 does 2 FLOPs per 4 bytes: 0.5 FLOP/byte; "
            "scoring 256 positions per weight read gives 128."
        )

    return run_check("weight_flops_and_bytes", SOLUTION, test)


def _all_close(got: list[float], want: list[float]) -> bool:
    return all(_close(g, w) for g, w in zip(got, want, strict=True))


def check_attainable_flops(attainable_flops) -> bool:
    """`attainable_flops(intensity, peak_flops, bandwidth)` -> the roofline: FLOP/s a kernel
    of `intensity` FLOP/byte can attain under a compute roof and a memory roof."""

    peak, bandwidth = 200e9, 40e9  # a CPU-like machine: ridge point at 5 FLOP/byte
    intensities = [0.25, 1.0, 5.0, 32.0, 1000.0]

    def test() -> str:
        got = [
            _number(attainable_flops(i, peak, bandwidth), "attainable_flops") for i in intensities
        ]
        if _all_close(got, [min(peak, i * bandwidth) for i in intensities]):
            return f"Ridge point of this example machine: {peak / bandwidth:g} FLOP/byte."
        setting = f"(peak {peak:.0e} FLOP/s, bandwidth {bandwidth:.0e} bytes/s)"
        if _all_close(got, [max(peak, i * bandwidth) for i in intensities]):
            raise CheckFailed(
                f"you returned more than the machine can do {setting}: use the smaller of the "
                "two roofs (min), not the larger; a kernel is held back by whichever resource "
                "runs out first"
            )
        if _all_close(got, [i * bandwidth for i in intensities]):
            raise CheckFailed(
                "above the ridge point you returned intensity * bandwidth: you forgot the "
                "compute roof (no kernel beats peak_flops)"
            )
        if _all_close(got, [peak] * len(intensities)):
            raise CheckFailed(
                "below the ridge point you returned the peak: you forgot the memory roof (at "
                "low intensity the bytes cannot arrive fast enough to keep the cores busy)"
            )
        if _all_close(got, [min(peak, i / bandwidth) for i in intensities]) or _all_close(
            got, [min(peak, bandwidth / i) for i in intensities]
        ):
            raise CheckFailed(
                "the memory roof is intensity * bandwidth (FLOP/byte x bytes/s = FLOP/s); "
                "check your units"
            )
        wrong = next(
            (i, g)
            for i, g in zip(intensities, got, strict=True)
            if not _close(g, min(peak, i * bandwidth))
        )
        raise CheckFailed(
            f"at intensity {wrong[0]} FLOP/byte {setting}: got {wrong[1]:.4g} FLOP/s, expected "
            f"{min(peak, wrong[0] * bandwidth):.4g}"
        )

    return run_check("attainable_flops", SOLUTION, test)


def check_predict_step_seconds(predict_step_seconds) -> bool:
    """`predict_step_seconds(flops, n_bytes, flop_rate, bandwidth, overhead_s)` -> seconds of
    one step on a CPU: max(compute, memory) + overhead, compute at the step's matmul rate."""

    rate, bandwidth, overhead = 100e9, 20e9, 1e-3
    cases = [  # (flops, bytes): memory-bound, compute-bound, balanced
        (2e6, 4e6),
        (2e10, 4e7),
        (2e9, 4e8),
    ]

    def test() -> str:
        got = [
            _number(predict_step_seconds(f, n, rate, bandwidth, overhead), "the step time")
            for f, n in cases
        ]
        compute = [f / rate for f, _ in cases]
        memory = [n / bandwidth for _, n in cases]
        pairs = list(zip(compute, memory, strict=True))
        want = [max(c, m) + overhead for c, m in pairs]
        if _all_close(got, want):
            return (
                "That is `roofline.predict_step_time` with one bandwidth and one matmul rate; "
                "the library picks a bandwidth per kind of traffic and the rate at the step's "
                "rows (`ceilings.matmul_rate`)."
            )
        if _all_close(got, [c + m + overhead for c, m in pairs]):
            raise CheckFailed(
                "you added compute and memory time: they overlap (the cores compute while the "
                "next bytes stream in), so the slower one sets the pace: max(compute, memory)"
            )
        if _all_close(got, [max(c, m) for c, m in pairs]):
            raise CheckFailed(
                "you forgot the overhead: Python dispatch and kernel launches cost overhead_s "
                "per step whatever its size; add it"
            )
        if _all_close(got, [max(c, m, overhead) for c, m in pairs]):
            raise CheckFailed(
                "you took the max with the overhead: that is the GPU model (the host queues "
                "kernels while the device runs). On a CPU the same threads dispatch and "
                "compute, so add it"
            )
        if _all_close(got, [min(c, m) + overhead for c, m in pairs]):
            raise CheckFailed(
                "you took the faster of compute and memory: a step waits for the slower one, "
                "use max"
            )
        if _all_close(got, [c + overhead for c in compute]) or _all_close(
            got, [m + overhead for m in memory]
        ):
            raise CheckFailed(
                "you used only one of the two roofs: a step is compute-bound or memory-bound "
                "depending on its shape, so take max(flops / flop_rate, n_bytes / bandwidth)"
            )
        if _all_close(
            got, [max(f * rate, n * bandwidth) + overhead for f, n in cases]
        ) or _all_close(got, [max(rate / f, bandwidth / n) + overhead for f, n in cases]):
            raise CheckFailed("time is work / rate: FLOPs / (FLOP/s) and bytes / (bytes/s)")
        index = next(k for k, (g, w) in enumerate(zip(got, want, strict=True)) if not _close(g, w))
        flops, n_bytes = cases[index]
        raise CheckFailed(
            f"for {flops:.0e} FLOPs and {n_bytes:.0e} bytes: got {got[index]:.4g} s, expected "
            f"{want[index]:.4g} s"
        )

    return run_check("predict_step_seconds", SOLUTION, test)


def check_compute_bound_tokens(compute_bound_tokens, ceilings=None) -> bool:
    """Exercise 4 (derive). `compute_bound_tokens(peak_flops, bandwidth, bytes_per_weight)`
    -> how many positions one forward must score before its weight matmuls reach the compute
    roof: the T at which 2T FLOPs per weight read of `bytes_per_weight` bytes meet the ridge
    point peak / bandwidth. Tried on hidden machines; with the measured `ceilings`, the
    success message gives this machine's number."""

    machines = [  # (peak FLOP/s, bandwidth bytes/s, bytes per weight): hidden from the notebook
        (184e9, 43e9, 4),  # a CPU core pair, float32
        (817e9, 43e9, 2),  # the same CPU in bfloat16
        (989.5e12, 3.35e12, 2),  # an H100 in bfloat16
        (65e12, 320e9, 2),  # a T4 in float16
        (1e12, 1e11, 1),  # 8-bit weights
    ]

    def truth(peak, bandwidth, size):
        return peak * size / (2 * bandwidth)

    def test() -> str:
        got = [
            _number(compute_bound_tokens(p, b, s), "compute_bound_tokens") for p, b, s in machines
        ]
        if _all_close(got, [truth(*m) for m in machines]):
            return _compute_bound_summary(compute_bound_tokens, ceilings)
        slips = [
            (
                lambda p, b, s: p / b,
                "that is the ridge point in FLOP/byte, not in positions: "
                "one position does 2 FLOPs per weight and reads each weight's bytes once",
            ),
            (
                lambda p, b, s: p / (2 * b),
                "you left out the bytes per weight: the intensity of "
                "T positions is 2T / bytes_per_weight FLOP/byte, so wider weights need more "
                "positions to reach the ridge",
            ),
            (
                lambda p, b, s: p * s / b,
                "a multiply-add is 2 FLOPs: T positions do 2T FLOPs "
                "per weight, which halves the positions needed",
            ),
            (
                lambda p, b, s: 2 * p / (s * b),
                "bytes per weight go upstairs: intensity = "
                "2T / bytes_per_weight, set it equal to peak / bandwidth and solve for T",
            ),
            (
                lambda p, b, s: 2 * b / (p * s),
                "upside down: a machine with more FLOP/s per "
                "byte/s needs MORE positions per weight read before the FLOPs become the limit",
            ),
        ]
        for slip, hint in slips:
            if _all_close(got, [slip(*m) for m in machines]):
                raise CheckFailed(hint + ".")
        (p, b, s), g = next(
            (m, g) for m, g in zip(machines, got, strict=True) if not _close(g, truth(*m))
        )
        raise CheckFailed(
            f"for peak {p:.3g} FLOP/s, bandwidth {b:.3g} bytes/s and {s}-byte weights you "
            f"returned {g:.4g} positions. Write the intensity of a forward over T positions, "
            "set it equal to the ridge point, and solve for T."
        )

    return run_check("compute_bound_tokens", SOLUTION, test)


def _compute_bound_summary(compute_bound_tokens, ceilings) -> str:
    """The learner's function on this machine's measured ceilings and on two catalog GPUs."""
    from course_lib import hardware

    lines = []
    if ceilings is not None:
        peak = ceilings.matmul_flops["float32"]
        t = compute_bound_tokens(peak, ceilings.memory_bandwidth, 4)
        where = "past" if t < 16 else "below"
        lines.append(
            f"this machine, float32 weights from memory: {t:.0f} positions (a block step of 16 "
            f"positions is {where} it)"
        )
    for name in ("H100 SXM", "T4"):
        gpu = hardware.CATALOG[name]
        dtype = "float16" if name == "T4" else "bfloat16"
        peak, bandwidth = gpu.flops[dtype].value, gpu.memory_bandwidth.value
        lines.append(f"{name}, {dtype}: {compute_bound_tokens(peak, bandwidth, 2):.0f} positions")
    return (
        "An AR step at batch 1 scores 1 position, far below on every machine; on a GPU even a "
        "block step of 64 positions stays under the memory roof, its extra positions free. "
        + "; ".join(lines)
        + "."
    )


def check_break_even_fix(break_even_tokens) -> bool:
    """Exercise 5 (debug). The fixed `break_even_tokens(t_ar, t_pass, block_len)`: tokens per
    step at which block diffusion matches AR, when one pass over the blocks takes `t_pass`,
    AR takes `t_ar` for the same tokens, and each block costs its denoising steps plus one
    forward that commits it to the cache; math.inf when diffusion cannot win."""
    import math

    cases = [(2.0, 1.0, 32), (5.0, 1.0, 16), (9.0, 2.0, 8), (1.5, 1.0, 32), (11.0, 1.0, 4)]

    def truth(t_ar, t_pass, block_len):
        steps = t_ar / t_pass - 1
        return block_len / steps if steps >= 1 else math.inf

    def buggy(t_ar, t_pass, block_len):
        steps = t_ar / t_pass
        return block_len / steps if steps >= 1 else math.inf

    def test() -> str:
        got = [_as_tokens(break_even_tokens(*case)) for case in cases]
        want = [truth(*case) for case in cases]
        if all(_same_tokens(g, w) for g, w in zip(got, want, strict=True)):
            return (
                "By hand: when AR takes two passes' time, one denoising pass and the commit "
                "use it all, so each step must commit the whole block (k* = b); the original "
                "said b / 2."
            )
        if all(_same_tokens(g, buggy(*c)) for g, c in zip(got, cases, strict=True)):
            raise CheckFailed(
                "that is still the colleague's version. Try t_ar = 2 * t_pass by hand: what "
                "does a block cost besides its s denoising forwards, and how many denoising "
                "forwards fit in AR's time then?"
            )
        case, g, w = next(
            (c, g, w) for c, g, w in zip(cases, got, want, strict=True) if not _same_tokens(g, w)
        )
        if math.isinf(w):
            raise CheckFailed(
                f"for t_ar={case[0]}, t_pass={case[1]}, block_len={case[2]} not even one "
                f"denoising pass fits besides the commit: return math.inf, not {g:.4g}"
            )
        raise CheckFailed(
            f"for t_ar={case[0]}, t_pass={case[1]}, block_len={case[2]} you returned {g:.4g} "
            f"tokens per step, expected {w:.4g}"
        )

    return run_check("break_even_fix", SOLUTION, test)


def _as_tokens(value) -> float:
    return as_number(value, "break_even_tokens", finite=False)


def _same_tokens(got: float, want: float) -> bool:
    import math

    if math.isinf(want) or math.isinf(got):
        return got == want
    return _close(got, want)
