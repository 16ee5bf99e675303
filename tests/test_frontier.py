"""frontier: quality by the judge, matched quality, the verdict, and one row end to end."""

import math
import random

import pytest
import torch

from course_lib import __main__ as cli
from course_lib import ceilings, data, frontier, frontier_sampling, hardware, metrics, roofline
from course_lib.model import ModelConfig, Transformer


def _brute_longest(sample: str, text: str) -> int:
    return max(
        (
            j - i
            for i in range(len(sample))
            for j in range(i + 1, len(sample) + 1)
            if sample[i:j] in text
        ),
        default=0,
    )


def test_longest_shared_substring_agrees_with_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
        sample = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 12)))
        assert frontier.longest_shared_substring(sample, text) == _brute_longest(sample, text)
    assert frontier.longest_shared_substring("def main():", "x = 1\ndef main():\n") == 11


def _tiny(attention="causal", block_len=None, seed=0, context_len=16, **config):
    torch.manual_seed(seed)
    config = ModelConfig(
        context_len=context_len,
        n_layer=1,
        n_head=2,
        d_model=32,
        attention=attention,
        block_len=block_len,
        **config,
    )
    return Transformer(config).eval()


def test_judge_perplexity_is_the_pooled_perplexity_and_its_error_shrinks_with_samples():
    judge = _tiny(seed=1)
    tokenizer = data.CharTokenizer()
    tokens = torch.randint(0, 98, (40, 16), generator=torch.Generator().manual_seed(0))
    q = frontier.judge_quality(
        tokens, judge, prompt_len=1, train_text="abc", decode=tokenizer.decode
    )
    # equal lengths: the mean of the samples' bits is the pooled bits
    pooled = metrics.generative_perplexity(tokens, judge, prompt_len=1)
    assert q["judge_ppl"] == pytest.approx(pooled, rel=1e-9)
    few = frontier.judge_quality(
        tokens[:4], judge, prompt_len=1, train_text="abc", decode=tokenizer.decode
    )
    assert 0 < q["judge_ppl_se"] < few["judge_ppl_se"] * 1.5
    assert q["entropy_bits"] == pytest.approx(metrics.unigram_entropy(tokens[:, 1:]))
    assert q["samples"] == 40 and q["longest_copy_max"] <= 3
    with pytest.raises(ValueError, match="standard error"):
        frontier.judge_quality(
            tokens[:1], judge, prompt_len=1, train_text="", decode=tokenizer.decode
        )


def _row(model, sampler, setting, ppl, entropy, speed, gpu_speed=None):
    gpus = {g: gpu_speed if gpu_speed is not None else speed for g in ("G1", "G2")}
    return {
        "model": model,
        "sampler": sampler,
        "setting": setting,
        "judge_ppl": ppl,
        "entropy_bits": entropy,
        "tokens_per_s": speed,
        "tokens_per_forward": 1.0,
        "predicted_tokens_per_s": gpus,
    }


def test_matched_quality_is_a_perplexity_ratio_and_an_entropy_band():
    ar = {"judge_ppl": 4.0, "entropy_bits": 4.5}
    assert frontier.is_matched({"judge_ppl": 4.39, "entropy_bits": 4.36}, ar)
    assert not frontier.is_matched({"judge_ppl": 4.41, "entropy_bits": 4.5}, ar)
    assert not frontier.is_matched({"judge_ppl": 3.0, "entropy_bits": 4.3}, ar)  # too repetitive


def test_the_verdict_picks_the_fastest_matched_diffusion_row_and_compares_it_with_both_ars():
    rows = [
        _row("ar", "ar", {"temperature": 1.0}, 4.0, 4.5, 100.0),
        _row("ar", "ar", {"temperature": 0.8}, 3.0, 4.2, 100.0),
        _row("ar", "speculative", {"draft_len": 2}, 4.1, 4.5, 150.0, gpu_speed=500.0),
        _row("d", "confidence", {"steps_per_block": 8}, 4.3, 4.4, 300.0),
        _row("d", "confidence", {"steps_per_block": 4}, 4.3, 4.4, 400.0, gpu_speed=400.0),
        _row("d", "confidence", {"steps_per_block": 2}, 9.0, 4.4, 900.0),  # fast, not matched
    ]
    v = frontier.verdict(rows, ["G1"])
    assert v["matched_diffusion_rows"] == 2 and v["diffusion_rows"] == 3
    assert "steps_per_block=4" in v["cpu"]["diffusion"]
    assert v["cpu"]["speedup_vs_ar"] == pytest.approx(4.0)
    assert v["cpu"]["speedup_vs_speculative"] == pytest.approx(400 / 150)
    assert v["cpu"]["diffusion_wins"]
    assert not v["gpus"]["G1"]["diffusion_wins"]  # speculative AR is faster there
    assert [r["matched_quality"] for r in rows] == [True, False, True, True, True, False]
    # speculative AR writes AR's distribution: it is the bar even when noise puts it off the band
    rows[2]["entropy_bits"] = 4.2
    assert frontier.verdict(rows, ["G1"])["cpu"]["speculative_tokens_per_s"] == 150.0
    assert "4.00x plain AR" in v["sentence"]


def test_with_no_matched_diffusion_row_the_verdict_says_so_and_names_the_closest():
    rows = [
        _row("ar", "ar", {"temperature": 1.0}, 4.0, 4.5, 100.0),
        _row("d", "threshold", {"threshold": 0.9}, 8.0, 4.4, 300.0),
        _row("d", "ancestral", {"steps_per_block": 4}, 12.0, 4.4, 400.0),
    ]
    rows.append(_row("d", "threshold", {"threshold": 0.99}, 3.0, 3.0, 300.0))  # repetitive
    v = frontier.verdict(rows, ["G1"])
    assert v["cpu"]["diffusion"] is None and not v["cpu"]["diffusion_wins"]
    # the closest by the larger of the two misses, not the lowest perplexity
    assert v["closest_ppl_ratio"] == pytest.approx(2.0)
    assert v["closest_entropy_difference"] == pytest.approx(-0.1)
    assert frontier.quality_gap(rows[-1], rows[0]) == pytest.approx(10.0)
    assert v["sentence"].startswith("No diffusion setting matches")
    fused = _row("d", "threshold", {"threshold": 0.9, "fuse_commit": True}, 8.0, 4.4, 350.0)
    fused["tokens_per_forward"] = 1.3
    v = frontier.verdict([*rows, fused], ["G1"])  # the same quality: the faster row is named
    assert "fuse_commit=True" in v["closest_diffusion"]
    with pytest.raises(ValueError, match="temperature 1.0"):
        frontier.verdict(rows[1:], ["G1"])


def test_a_pooled_reference_judges_quality_and_ar_s_row_still_sets_the_speed():
    rows = [
        _row("ar", "ar", {"temperature": 1.0}, 4.0, 4.8, 100.0),  # a noisy 32: entropy high
        _row("d", "confidence", {"steps_per_block": 4}, 4.3, 4.5, 300.0),
    ]
    assert not frontier.verdict(rows, ["G1"])["matched_diffusion_rows"]  # against the row
    pooled = {**rows[0], "entropy_bits": 4.55, "samples": 192}
    v = frontier.verdict(rows, ["G1"], pooled)
    assert v["matched_diffusion_rows"] == 1 and v["reference_samples"] == 192
    assert v["cpu"]["ar_tokens_per_s"] == 100.0 and v["cpu"]["speedup_vs_ar"] == 3.0
    assert not rows[0]["matched_quality"]  # AR's own row of 32, off its pooled reference


def test_rows_end_to_end_on_tiny_models():
    models = {
        "ar": _tiny(seed=1),
        "draft": _tiny(seed=2),
        "bd3": _tiny("block_causal", block_len=4, seed=3),
        "mdlm": _tiny("bidirectional", seed=4),
    }
    settings = frontier.default_settings(
        {"bd3": models["bd3"].config, "mdlm": models["mdlm"].config},
        ar="ar",
        draft="draft",
        tokens_per_step=(1, 2),
        thresholds=(0.5,),
        draft_lens=(2,),
        self_speculative_temperatures=(1.0,),
    )
    # bd3 (block-causal) twice, commit separate and fused; mdlm once
    assert [s.sampler for s in settings].count("confidence") == 6
    tokenizer = data.CharTokenizer()
    rows = [
        frontier.measure_row(
            s, models, models["ar"], n_samples=2, train_text="def f():\n", decode=tokenizer.decode
        )
        for s in settings
    ]
    by = {
        (r["model"], r["sampler"], r["setting"].get("steps_per_block")): r
        for r in rows
        if not r["setting"].get("fuse_commit")
    }
    assert by[("ar", "ar", None)]["tokens_per_forward"] == 1.0
    # 4 blocks of 4 at 2 steps each, plus a forward that commits each block but the last
    assert by[("bd3", "confidence", 2)]["tokens_per_forward"] == pytest.approx(16 / 11)
    fused = next(
        r
        for r in rows
        if r["setting"].get("fuse_commit")
        and r["sampler"] == "confidence"
        and r["setting"]["steps_per_block"] == 2
    )
    assert fused["tokens_per_forward"] == pytest.approx(16 / 8)
    assert by[("mdlm", "confidence", 8)]["tokens_per_forward"] == pytest.approx(2.0)
    # the block-causal model also read left to right, self-speculatively: one draft a round,
    # and drafts to the block's end
    own = [r for r in rows if r["sampler"] == "self_speculative"]
    assert [(r["model"], r["setting"]) for r in own] == [
        ("bd3", {"max_drafts": 1, "temperature": 1.0}),
        ("bd3", {"temperature": 1.0}),
    ]
    for r in own:
        assert 1.0 < r["tokens_per_forward"] <= 4.0 and r["positions_per_forward"] >= 4
    # and by trees of guesses: the same law, for more positions a forward (an untrained
    # model's guesses seldom hit: tests/test_draft_tree.py counts the tokens they save)
    tree = [r for r in rows if r["sampler"] == "draft_tree"]
    assert [(r["model"], r["setting"]) for r in tree] == [
        ("bd3", {"tree_size": 6, "depth": 2, "temperature": 1.0}),
        ("bd3", {"tree_size": 6, "depth": 3, "temperature": 1.0}),
    ]
    for r in tree:
        assert 1.0 <= r["tokens_per_forward"] <= 4.0 and r["positions_per_forward"] > 4
    assert tree[1]["positions_per_forward"] > tree[0]["positions_per_forward"]
    spec = next(r for r in rows if r["sampler"] == "speculative")
    assert 1.0 <= spec["tokens_per_forward"] <= 3.0 and spec["draft_forwards"] > 0
    for r in rows:
        assert set(r["predicted_tokens_per_s"]) == set(hardware.CATALOG)
        assert all(v > 0 and math.isfinite(v) for v in r["predicted_tokens_per_s"].values())
        assert r["tokens_per_s"] > 0 and r["samples"] == 2
    # AR's prediction is the roofline model's for the whole run, per sample
    h100 = ceilings.datasheet_ceilings(hardware.CATALOG["H100 SXM"])
    run = roofline.predict_sampling(
        models["ar"].config, roofline.ARDecoding(1, 15), h100, dtype="bfloat16"
    )
    ar_row = by[("ar", "ar", None)]
    assert ar_row["predicted_tokens_per_s"]["H100 SXM"] == pytest.approx(run.tokens_per_s)
    assert frontier.verdict(rows, list(hardware.CATALOG))["sentence"]


def test_the_verdict_can_be_recomputed_from_a_file(tmp_path, capsys):
    import json

    rows = [
        _row("ar", "ar", {"temperature": 1.0}, 4.0, 4.5, 100.0),
        _row("d", "threshold", {"threshold": 0.9}, 4.1, 4.5, 300.0),
    ]
    for r in rows:
        r["predicted_tokens_per_s"] = {g: r["tokens_per_s"] for g in hardware.CATALOG}
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps({"rows": rows, "verdict": "stale"}))
    assert cli.main(["frontier", "--verdict-only", "--out", str(path)]) == 0
    assert json.loads(path.read_text())["verdict"]["matched_diffusion_rows"] == 1
    assert "3.00x plain AR" in capsys.readouterr().out


def test_the_command_names_the_missing_checkpoints(capsys):
    assert cli.main(["frontier", "--judge", "no-such-judge"]) == 2
    assert "no-such-judge" in capsys.readouterr().err


def test_a_next_token_shift_model_gets_rows_from_the_reference_sampler():
    shift = _tiny("block_causal", 4, seed=5, position="rotary", next_token_shift=True)
    config = shift.config
    models = {"ar": _tiny(seed=1), "shift": shift}
    settings = frontier.default_settings(
        {"shift": config}, ar="ar", draft=None, tokens_per_step=(1, 4), thresholds=(0.5,)
    )
    shifted = [s for s in settings if s.model == "shift"]
    assert shifted and not any(s.setting.get("fuse_commit") for s in shifted)  # cannot fuse
    tokenizer = data.CharTokenizer()
    for setting in shifted:
        row = frontier.measure_row(
            setting, models, models["ar"], n_samples=2, train_text="x", decode=tokenizer.decode
        )
        assert "reference" in row["implementation"]
        # a newline prompt, then 15 tokens; the last block decodes 3 targets
        assert row["tokens"] == 2 * 15
        if (setting.sampler, setting.setting["steps_per_block"]) == ("confidence", 1):
            # one step per block and a commit per block but the last: 4 + 3 forwards per sample
            assert row["forwards"] == 2 * 7


def test_a_failing_setting_ends_no_other_and_is_named_after_the_rest_ran(tmp_path, monkeypatch):
    from course_lib import checkpoints, env

    folder = tmp_path / "checkpoints"
    for name, model in (
        ("judge", _tiny(seed=1)),
        ("ar", _tiny(seed=2)),
        ("bd3", _tiny("block_causal", 4, 3)),
    ):
        checkpoints.save_checkpoint(folder / f"{name}.pt", model)
    monkeypatch.setattr(env, "DATA_DIR", tmp_path)
    settings = [
        frontier.Setting("bd3", "confidence", {"steps_per_block": 2, "confidence": "margin"}),
        frontier.Setting("ar", "ar", {"temperature": 1.0}),
    ]
    measure_row = frontier.measure_row

    def broken_for_bd3(setting, *args, **kwargs):
        if setting.model == "bd3":
            raise RuntimeError("a planted failure")
        return measure_row(setting, *args, **kwargs)

    monkeypatch.setattr(frontier, "measure_row", broken_for_bd3)
    out = tmp_path / "frontier.json"
    with pytest.raises(RuntimeError, match="1 frontier setting"):
        frontier.run_frontier(
            judge="judge",
            ar="ar",
            draft=None,
            diffusion=["bd3"],
            n_samples=2,
            reference_samples=4,
            out=out,
            settings=settings,
            log=lambda _: None,
        )
    import json

    written = json.loads(out.read_text())
    assert [r["model"] for r in written["rows"]] == ["ar"] and written["verdict"]
    assert "a planted failure" in written["failed"][0]["error"]
    # the reference: 4 samples of AR's, drawn as its row draws its 2 (seeds 0, 1, then 2, 3);
    # perplexity over all 4, entropy the mean over sets of a row's size
    reference, row = written["reference"], written["rows"][0]
    assert reference["samples"] == 4 and written["verdict"]["reference_samples"] == 4
    models = {"ar": checkpoints.load_checkpoint(folder / "ar.pt")}
    judge = checkpoints.load_checkpoint(folder / "judge.pt")
    decode, train_text = data.CharTokenizer().decode, data.load_corpus("pystdlib").train
    later = frontier.measure_row(
        settings[1], models, judge, n_samples=2, train_text=train_text, decode=decode, seed=2
    )
    bits = (math.log2(row["judge_ppl"]) + math.log2(later["judge_ppl"])) / 2
    assert reference["judge_ppl"] == pytest.approx(2**bits)
    assert reference["entropy_bits"] == pytest.approx(
        (row["entropy_bits"] + later["entropy_bits"]) / 2
    )
    assert reference["entropy_sets"] == 2
    with pytest.raises(ValueError, match="multiple of 2"):
        frontier.measure_reference(
            models, judge, ar="ar", n_samples=3, row_samples=2, train_text="", decode=decode
        )
    # measured again for the written file (as for a file from before references): the same
    frontier.add_reference(out, 4)
    again = json.loads(out.read_text())
    assert again["reference"]["judge_ppl"] == reference["judge_ppl"]
    assert again["verdict"] == written["verdict"]


def test_on_a_gpu_threshold_and_ancestral_rows_keep_their_early_finish(monkeypatch):
    """The GPU's last stage has no_host_reads, which runs every step of a block; the
    frontier turns it off where finishing early saves forwards (its tokens per forward)."""
    import dataclasses

    from course_lib import fast

    gpu_like = dataclasses.replace(fast.final_stage(fast.stages_for("cpu"))[1], no_host_reads=True)
    monkeypatch.setattr(frontier_sampling, "_last_stage", lambda device, stages: gpu_like)
    used = {}
    real = fast.FastDiffusionSampler

    def spy(model, *, length, options):
        used[current] = options.no_host_reads
        return real(model, length=length, options=options)

    monkeypatch.setattr(fast, "FastDiffusionSampler", spy)
    models = {"bd3": _tiny("block_causal", block_len=4, seed=3)}
    for current, setting in [
        ("confidence", {"steps_per_block": 2}),
        ("threshold", {"steps_per_block": 4, "threshold": 0.5}),
        ("ancestral", {"steps_per_block": 4}),
    ]:
        frontier.draw_samples(frontier.Setting("bd3", current, setting), models, n_samples=1)
    assert used == {"confidence": True, "threshold": False, "ancestral": False}


def test_the_noise_script_scores_seed_sets_as_the_frontier_scores_rows():
    """scripts/frontier_noise.py: set 0 is the frontier's own row (same seeds, same quality),
    every set is scored against AR's set 0, and the summary leaves that reference out."""
    from script_helpers import load_script

    noise = load_script("frontier_noise")
    models = {"ar": _tiny(seed=1), "draft": _tiny(seed=2), "judge": _tiny(seed=3)}
    decode = data.CharTokenizer().decode
    settings = noise.settings("ar", "draft")
    rows = noise.seed_sets(
        models,
        models["judge"],
        settings,
        sets=2,
        n_samples=2,
        train_text="x",
        decode=decode,
        log=lambda line: None,
    )
    assert [(r["sampler"], r["seed_set"]) for r in rows] == [
        ("ar", 0),
        ("speculative", 0),
        ("ar", 1),
        ("speculative", 1),
    ]
    row = frontier.measure_row(
        settings[0], models, models["judge"], n_samples=2, train_text="x", decode=decode
    )
    assert rows[0]["judge_ppl"] == row["judge_ppl"] and rows[0]["matched"]
    assert rows[0]["ppl_ratio"] == 1.0 and rows[0]["entropy_diff"] == 0.0
    assert rows[2]["judge_ppl"] != rows[0]["judge_ppl"]  # other seeds, other samples
    summary = noise.summary(rows)
    assert summary["ar"]["sets"] == 1 and summary["speculative"]["sets"] == 2
    assert summary["ar"]["ppl_ratio_min"] == rows[2]["ppl_ratio"]
    assert "set" in noise.report({"rows": rows, "summary": summary})


def test_rows_near_the_band_are_measured_again_and_judged_by_that():
    reference = {"judge_ppl": 4.0, "entropy_bits": 4.5, "entropy_bits_sd": 0.1}
    reference |= {"model": "ar", "sampler": "ar", "setting": {"temperature": 1.0}}
    near = _row("d", "confidence", {"steps_per_block": 4}, 4.6, 4.5, 300.0)
    near["judge_ppl_se"] = 0.1  # 4.6 - 0.2 = 4.4: at the limit of 1.10 x 4.0
    far = {**near, "judge_ppl": 4.7}
    spec = {**near, "sampler": "speculative"}  # speculative AR is the bar, never confirmed
    assert frontier.needs_confirming(near, reference)
    assert not frontier.needs_confirming(far, reference)
    assert not frontier.needs_confirming({**near, "entropy_bits": 4.86}, reference)
    assert frontier.needs_confirming(
        {**near, "entropy_bits": 4.86}, {**reference, "entropy_bits_sd": 0.11}
    )
    assert not frontier.needs_confirming(spec, reference)
    ar = _row("ar", "ar", {"temperature": 1.0}, 4.0, 4.5, 100.0)
    lucky = _row("d", "confidence", {"steps_per_block": 2}, 4.3, 4.5, 400.0)
    lucky["confirmation"] = {"judge_ppl": 4.8, "entropy_bits": 4.5}  # its 32 flattered it
    v = frontier.verdict([ar, lucky], ["G1"], reference)
    assert not lucky["matched_quality"] and v["matched_diffusion_rows"] == 0
    assert v["closest_confirmed"] and v["closest_ppl_ratio"] == pytest.approx(1.2)
    assert "measured again on fresh samples" in v["sentence"]


def test_a_confirmation_draws_fresh_samples_once_per_setting():
    models = {"bd3": _tiny("block_causal", 4, 3), "judge": _tiny(seed=1)}
    decode = data.CharTokenizer().decode
    rows = [
        frontier.measure_row(
            frontier.Setting("bd3", "confidence", {"steps_per_block": 2, **fused}),
            models,
            models["judge"],
            n_samples=2,
            train_text="x",
            decode=decode,
        )
        for fused in ({}, {"fuse_commit": True})
    ]
    # a reference the rows sit on, so that both need confirming
    reference = {"judge_ppl": rows[0]["judge_ppl"], "entropy_bits": rows[0]["entropy_bits"]}
    measured = frontier.confirm_rows(
        rows,
        reference,
        models,
        models["judge"],
        row_samples=2,
        n_samples=4,
        train_text="x",
        decode=decode,
        log=lambda _: None,
    )
    assert measured == 1  # fused and unfused share their samples, so one measurement
    first, second = (r["confirmation"] for r in rows)
    assert first is second and first["samples"] == 4 and first["seed"] == frontier.CONFIRM_SEED
    assert first["judge_ppl"] != rows[0]["judge_ppl"]  # other samples than the row's own
