"""`python -m course_lib bench`: the suites write JSON with the environment and the protocol."""

import dataclasses
import json

import pytest
import torch

from course_lib import bench, bench_suites, checkpoints, env, fast
from course_lib.__main__ import main
from course_lib.model import ModelConfig, Transformer

TIMED = ("tokens_per_s", "median_s", "min_s", "max_s", "warmup", "repeats", "first_call_s")
SETTINGS = ("sampler", "stage", "batch", "length", "dtype", "device", "nfe", "tokens_per_step")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "quick.json"
    result = bench_suites.run_suite("quick", out=out, log=lambda line: None)
    return result, out


def test_the_quick_suite_writes_what_it_returns(quick):
    result, out = quick
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    assert result["suite"] == "quick" and result["wall_s"] > 0
    assert result["environment"]["torch"] == torch.__version__
    protocol = result["protocol"]
    for key in ("tokens", "timing", "first_call", "same_output", "warmup", "repeats", "clock"):
        assert key in protocol, key
    assert protocol["threads"] == torch.get_num_threads() and protocol["compile_rows"] is False


def test_every_quick_row_has_its_settings_numbers_and_verdict(quick):
    rows = quick[0]["rows"]
    assert rows and not [row for row in rows if "error" in row or "skipped" in row]
    for row in rows:
        for key in (*SETTINGS, *TIMED):
            assert key in row, (key, row["stage"])
        assert row["min_s"] <= row["median_s"] <= row["max_s"] and row["tokens_per_s"] > 0
        assert row["compile_s"] >= 0 and row["model"]["params"] > 0
        if row["stage"] != "reference":
            assert row["same_tokens_as_reference"] is True and row["token_agreement"] == 1.0
            assert row["speedup_vs_reference"] > 0
    block = [r for r in rows if r["section"] == "block diffusion"]
    assert [r["stage"] for r in block] == ["reference"] + [
        name for name, options in fast.stages_for("cpu") if not options.compile
    ]
    assert {r["steps_per_block"] for r in block} == {8} and {r["block_len"] for r in block} == {8}
    # the exact KV cache adds one commit per finished block but the last
    assert block[-1]["nfe"] == block[0]["nfe"] + 32 // 8 - 1
    ar = [r for r in rows if r["sampler"] == "ar"]
    assert [r["stage"] for r in ar][:2] == ["reference", "sample_ar_kv_cache"]
    assert all(r["tokens_per_step"] == 1.0 and r["prompt_len"] == 1 for r in ar)


def test_the_command_line_runs_a_suite(tmp_path, capsys):
    out = tmp_path / "cli.json"
    assert main(["bench", "--suite", "quick", "--out", str(out), "--cpu-time"]) == 0
    assert "rows (0 errors)" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["protocol"]["clock"].startswith("process_time")
    assert main(["bench", "--suite", "fastest"]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_the_gpu_suite_needs_cuda_or_smoke():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the gpu suite would run for minutes")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        bench_suites.run_suite("gpu", device="cpu", log=lambda line: None)


def test_the_gpu_suite_on_tiny_shapes_skips_cuda_rows_with_a_reason(tmp_path):
    """The code of the gpu suite, run here: nothing broken, CUDA-only rows skipped, said why."""
    result = bench_suites.run_suite(
        "gpu", device="cpu", smoke=True, out=tmp_path / "gpu.json", log=lambda line: None
    )
    rows = result["rows"]
    assert not [row for row in rows if "error" in row]
    skipped = [row for row in rows if "skipped" in row]
    assert skipped and all(row["skipped"].startswith("needs CUDA") for row in skipped)
    assert {row["stage"] for row in skipped} >= {"bf16", "cuda_graphs", "compile"}
    assert result["ceilings"]["matmul_flops"]["float32"] > 0
    sizes = [row for row in rows if row["section"] == "model sizes"]
    assert {row["sampler"] for row in sizes} == {"ar_decode", "block_diffusion", "diffusion"}
    assert all(row["step_s"] > 0 and row["predicted_step_s"] > 0 for row in sizes)
    assert all(
        "break_even_tokens_per_step" in r for r in sizes if r["sampler"] == "block_diffusion"
    )
    assert {row["batch"] for row in rows if row["section"] == "batch sweep"} == {2}
    scored = [row for row in rows if row["section"].startswith("quality") and "quality" in row]
    for name in ("bd3lm-small.pt", "mdlm-small.pt", "ar-small.pt"):  # the shipped models
        assert any(name in row["section"] for row in scored), name
    assert all(row["quality"]["generative_perplexity"] > 1 for row in scored)
    assert all(row["tokens_per_s"] > 0 for row in scored)


def test_a_failing_row_is_reported_and_the_suite_goes_on(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(fast, "FastARDecoder", broken)
    out = tmp_path / "broken.json"
    assert main(["bench", "--suite", "quick", "--out", str(out)]) == 1
    rows = json.loads(out.read_text())["rows"]
    errors = [row for row in rows if "error" in row]
    assert errors and all(row["sampler"] == "ar" for row in errors)
    assert "RuntimeError: out of memory (simulated)" in errors[0]["error"]
    assert any(row["sampler"] == "block_diffusion" and "tokens_per_s" in row for row in rows)


def test_quality_rows_score_the_shipped_checkpoints(tmp_path, monkeypatch):
    """With checkpoints in data/checkpoints/ (tiny stand-ins here), rows carry quality."""
    monkeypatch.setattr(env, "DATA_DIR", tmp_path)
    shape = dict(context_len=32, n_layer=1, n_head=2, d_model=16)
    for name, extra in [
        ("ar-small", {}),
        ("bd3lm-small", dict(attention="block_causal", block_len=16)),
        ("mdlm-small", dict(attention="bidirectional")),
    ]:
        torch.manual_seed(0)
        checkpoints.save_checkpoint(
            tmp_path / "checkpoints" / f"{name}.pt", Transformer(ModelConfig(**shape, **extra))
        )
    suite = bench_suites.Suite(
        "test", torch.device("cpu"), bench_suites.Plan(0, 1), tmp_path / "q.json", print
    )
    bench_suites.quality_rows(suite, batch_size=2)
    rows = suite.result["rows"]
    # bd3lm (confidence, threshold) and mdlm: reference and fast; ar: two references and fast
    assert len(rows) == 3 * 2 + 3 and not [row for row in rows if "error" in row]
    for row in rows:
        quality = row["quality"]
        assert quality["generative_perplexity"] > 1 and 0 < quality["unigram_entropy_bits"] < 7
        validity = quality["statement_validity"]  # None: no complete statement to judge
        assert validity is None or 0 <= validity <= 1
    assert {row["strategy"] for row in rows if "strategy" in row} >= {"confidence", "threshold"}


def test_profile_names_the_operators_that_take_the_time(capfd):
    model = Transformer(ModelConfig(context_len=16, n_layer=1, n_head=2, d_model=16)).eval()
    table = bench.profile(lambda: model(torch.zeros(1, 16, dtype=torch.long)), row_limit=5)
    lines = table.splitlines()
    assert "self cpu time" in lines[0] and "aten::" in lines[1]
    assert len(lines) == 1 + 5 + 1 and lines[-1].startswith("all operators")
    shares = [float(line.split()[-4].rstrip("%")) for line in lines[1:-1]]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.05
    assert max(map(len, lines)) <= 80  # reads without wrapping in a notebook
    assert "USDT" not in capfd.readouterr().err  # the profiler's own log stays out


def test_the_gpu_quality_rows_time_the_whole_step_graph_and_the_network_graph():
    """On a GPU the last stage reads nothing per step and graphs the whole step; the quality
    rows also time it without no_host_reads: the network graphed alone, and a read per step
    for the strategies that can use one (to finish early, to skip a call)."""
    stages = bench_suites._and_reading(
        bench_suites._exact_and_fastest("cuda", fast.DIFFUSION_STAGES)
    )
    (_, exact), (reading_name, reading), (name, last) = stages
    assert last.no_host_reads and not reading.no_host_reads and not exact.bf16
    assert reading == dataclasses.replace(last, no_host_reads=False)
    assert reading_name == f"{name}, network graphed alone"
    cpu = bench_suites._exact_and_fastest("cpu", fast.DIFFUSION_STAGES)
    assert bench_suites._and_reading(cpu) == cpu  # a CPU's stages read (it costs nothing)
