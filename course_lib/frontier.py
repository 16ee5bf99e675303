"""The speed-quality frontier: diffusion against AR at matched quality (notebook 12).

`python -m course_lib frontier` samples every shipped model under every sampler at several
tokens per forward, one sequence at a time (batch 1), and writes one row per
(model, sampler, setting) to data/results/frontier-cpu.json:

- speed: tokens committed per forward of the model (for speculative decoding: per forward of
  the target), and tokens/s on this CPU with the optimized samplers of notebook 09, timed on
  the very calls that wrote the samples; beside it, tokens/s predicted for each catalog GPU
  by notebook 10's roofline model for the same shapes and forward counts;
- quality, by an independent judge (the `judge-ar` checkpoint, a larger AR model trained on
  more text than the models it scores): generative perplexity with its standard error,
  unigram entropy, the share of generated Python statements that parse, and the longest
  run of characters a sample shares with the compared models' training text (memorisation).

A setting has *matched quality* when its judge perplexity is at most `PPL_RATIO` times that
of AR's own samples at temperature 1, and its entropy is within `ENTROPY_BITS` of theirs
(a sampler that repeats likely characters lowers perplexity and entropy together). The
verdict, computed from the rows by `verdict`, compares the fastest matched diffusion setting
with plain AR and with speculative AR, on this CPU and predicted for each catalog GPU.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from course_lib import env
from course_lib.frontier_sampling import (  # noqa: F401 (re-exported: frontier.Setting, ...)
    Draws,
    Setting,
    default_settings,
    draw_samples,
)
from course_lib.model import Transformer

PPL_RATIO = 1.10  # matched: judge perplexity at most this times AR's (temperature 1)
ENTROPY_BITS = 0.15  # matched: unigram entropy within this many bits of AR's
REFERENCE = ("ar", {"temperature": 1.0})  # the sampler whose samples define "matched"
# its samples pooled for the quality reference: at a row's 32, AR's own sample sets fail the
# entropy test against each other (scripts/frontier_noise.py, notebook 12)
REFERENCE_SAMPLES = 192
# a diffusion row the noise could have put on either side of the band is measured again on
# fresh seeds before it counts: the best of many noisy rows is likely one its noise flattered
CONFIRM_SAMPLES = 96
CONFIRM_SEED = 100_000  # clear of the rows' seeds (0..), the reference's and frontier_noise's
DIFFUSION_SAMPLERS = ("confidence", "threshold", "ancestral", "self_speculative", "draft_tree")
# the diffusion checkpoints compared
DEFAULT_DIFFUSION = (
    "bd3lm-small",
    "mdlm-small",
    "bd3lm-ar-b2",
    "bd3lm-ar-b2-more",
    "bd3lm-ar-b2-look",
    "bd3lm-ar-b2-look2",
    "bd3lm-ar-b4",
    "bd3lm-ar-b4-more",
    "bd3lm-ar-b4-more2",
    "bd3lm-ar-b16",
    "bd3lm-ar-shift-b4",
    "bd3lm-ar-shift-b8",
)

PROTOCOL = {
    "batch": "1: every sample is its own call, as one user's stream",
    "tokens_per_s": "tokens written / seconds of the calls that wrote the samples (process "
    "CPU seconds on a CPU, wall seconds with the GPU synchronised on a GPU; one untimed "
    "warm-up call first), with the optimized samplers of notebook 09 "
    "(fast.stages_for(device)'s last stage without compile; on a GPU, threshold and ancestral "
    "rows without no_host_reads, whose fixed step count would spend the forwards that "
    "finishing a block early saves), speculative.sample_speculative, and "
    "self_speculative.SelfSpeculativeSampler (prepacked weights on a CPU, no graphs) and "
    "draft_tree.DraftTreeSampler (bfloat16 where the device has it, fast.half_dtype: on this "
    "course's CPUs with bfloat16 units, in oneDNN's prepacked layout; float32 prepacked on "
    "other CPUs)",
    "tokens_per_forward": "tokens written / forwards of the model (speculative: of the target; "
    "block diffusion: denoising forwards plus the forward that commits each block, unless the "
    "setting has fuse_commit, where the next block's first forward commits it; "
    "self_speculative and draft_tree: their rounds, each one forward of all its rows)",
    "predicted_tokens_per_s": "roofline.predict_sampling-style sums of predicted step times, "
    "datasheet ceilings (hardware.CATALOG), bf16 (fp16 where a GPU has no bf16), no launch "
    "overhead: an upper bound, reached only when each step is captured whole; the forward "
    "counts are the measured ones, each block-diffusion forward charged the mean predicted "
    "cost of a forward of one block (a fused commit's forward scores two blocks: nearly free "
    "under the memory roof, so left out; a self-speculative forward charged as one of its "
    "mean positions per forward, against half the context cached)",
    "judge_ppl": "2 ** (mean over samples of the judge's bits per scored token); judge_ppl_se "
    "by the delta method from the samples' standard deviation",
    "entropy_bits": "metrics.unigram_entropy of all generated tokens pooled",
    "validity": "metrics.python_validity: the share of complete generated statements that parse",
    "longest_copy": "the longest run of characters a sample shares with the compared models' "
    "training text (pystdlib's train split): max and median over samples",
    "matched_quality": f"judge_ppl <= {PPL_RATIO} x the reference's, and |entropy_bits - the "
    f"reference's| <= {ENTROPY_BITS}",
    "reference": "the quality of AR's samples at temperature 1, more of them than a row has "
    "(seeds 0 to n-1: the AR row's own samples are the first), so that its noise does not "
    "decide rows: judge_ppl over all of them, entropy_bits the mean over consecutive sets of "
    "a row's size (a pooled entropy grows with the samples pooled); files without one "
    "measured it on the AR row",
    "verdict": "the fastest matched diffusion row against AR at temperature 1 and against the "
    "fastest speculative row (matched or not: it writes AR's own distribution), measured here "
    "and predicted per GPU",
}


# -- quality -------------------------------------------------------------------------------


def longest_shared_substring(sample: str, text: str) -> int:
    """Length of the longest run of characters of `sample` that also occurs in `text`.

    A sliding window over `sample`: extend it while its text occurs in `text`, drop its first
    character when it does not. Every substring of a substring that occurs also occurs, so the
    window never needs to shrink below the best length found: about 2 * len(sample) searches.
    """
    best, start = 0, 0
    for end in range(1, len(sample) + 1):
        while start < end and sample[start:end] not in text:
            start += 1
        best = max(best, end - start)
    return best


def judge_quality(
    tokens: torch.Tensor,
    judge: Transformer,
    *,
    prompt_len: int,
    train_text: str,
    decode: Callable[[list[int]], str],
) -> dict:
    """The quality fields of one sample set: `tokens` (n, L), the first `prompt_len` given."""
    from course_lib import metrics

    if tokens.dim() != 2 or tokens.shape[0] < 2:
        raise ValueError(
            f"tokens must be (n >= 2, L) to give a standard error, got {tuple(tokens.shape)}"
        )
    bits = torch.tensor(
        [
            math.log2(metrics.generative_perplexity(row, judge, prompt_len=prompt_len))
            for row in tokens.cpu()
        ],
        dtype=torch.float64,
    )
    ppl = 2.0 ** bits.mean().item()
    se = ppl * math.log(2) * bits.std().item() / math.sqrt(len(bits))
    generated = tokens[:, prompt_len:].cpu()
    texts = [decode(row) for row in generated.tolist()]
    copies = [longest_shared_substring(text, train_text) for text in texts]
    try:
        validity = metrics.python_validity(texts)
    except ValueError:  # not one complete statement to judge
        validity = None
    return {
        "judge_ppl": ppl,
        "judge_ppl_se": se,
        "entropy_bits": metrics.unigram_entropy(generated),
        "validity": validity,
        "longest_copy_max": max(copies),
        "longest_copy_median": statistics.median(copies),
        "samples": tokens.shape[0],
    }


def quality_gap(row: dict, reference: dict) -> float:
    """How far `row` is from matched, in units of the tolerances (matched: at most 1).

    The larger of the perplexity over PPL_RATIO times the reference's, and the entropy
    difference (either side) over ENTROPY_BITS.
    """
    return max(
        row["judge_ppl"] / (PPL_RATIO * reference["judge_ppl"]),
        abs(row["entropy_bits"] - reference["entropy_bits"]) / ENTROPY_BITS,
    )


def is_matched(row: dict, reference: dict) -> bool:
    """Matched quality: perplexity within PPL_RATIO of the reference's, entropy within ENTROPY_BITS."""
    return (
        row["judge_ppl"] <= PPL_RATIO * reference["judge_ppl"]
        and abs(row["entropy_bits"] - reference["entropy_bits"]) <= ENTROPY_BITS
    )


# -- what the roofline model predicts for the same shapes on each catalog GPU ---------------


def gpu_dtype(spec) -> str:
    return "bfloat16" if "bfloat16" in spec.flops else "float16"


def predicted_seconds(
    setting: Setting, models: dict[str, Transformer], draws: Draws, ceilings, dtype: str
) -> float:
    """Predicted seconds of the forwards that wrote `draws`, on `ceilings` (one GPU's)."""
    from course_lib import roofline

    config = models[setting.model].config
    L, n = config.context_len, draws.tokens.shape[0]

    def step_s(cost) -> float:
        return roofline.predict_step_time(cost, ceilings).total_s

    if setting.sampler == "ar":
        run = roofline.ARDecoding(1, L - 1)
        return n * roofline.predict_sampling(config, run, ceilings, dtype=dtype).seconds
    if setting.sampler == "speculative":
        draft = models[setting.setting["draft"]].config
        verify = roofline.forward_cost(
            config,
            batch_size=1,
            new_tokens=setting.setting["draft_len"] + 1,
            context=L // 2,
            uses_cache=True,
            dtype=dtype,
        )
        propose = roofline.ar_decode_step_cost(draft, batch_size=1, context=L // 2, dtype=dtype)
        return draws.forwards * step_s(verify) + draws.draft_forwards * step_s(propose)
    if setting.sampler in ("self_speculative", "draft_tree"):  # rows: mean positions a forward
        new_tokens = max(1, round(draws.positions / draws.forwards))
        # the rows are side by side, not one sequence: they may add up past the context
        block = config.block_len
        room = replace(config, context_len=max(L, math.ceil((L // 2 + new_tokens) / block) * block))
        rows = roofline.forward_cost(
            room, batch_size=1, new_tokens=new_tokens, context=L // 2, uses_cache=True, dtype=dtype
        )
        return draws.forwards * step_s(rows)
    if config.attention == "block_causal":  # the mean cost of one call over the blocks
        one_pass = roofline.BlockDiffusionSampling(1, L, config.block_len, 1, commit=True)
    else:
        one_pass = roofline.DiffusionSampling(1, L, 1)
    per_call = roofline.predict_sampling(config, one_pass, ceilings, dtype=dtype)
    return draws.forwards * per_call.seconds / per_call.n_calls


# -- rows, the verdict, the file -------------------------------------------------------------


def measure_row(
    setting: Setting,
    models: dict[str, Transformer],
    judge: Transformer,
    *,
    n_samples: int,
    train_text: str,
    decode: Callable[[list[int]], str],
    seed: int = 0,
) -> dict:
    """One frontier row: speed on this machine, predicted speed per GPU, quality by the judge."""
    from course_lib import hardware
    from course_lib.ceilings import datasheet_ceilings

    draws = draw_samples(setting, models, n_samples, seed)
    predicted = {}
    for name, spec in hardware.CATALOG.items():
        ceilings = datasheet_ceilings(spec)
        seconds = predicted_seconds(setting, models, draws, ceilings, gpu_dtype(spec))
        predicted[name] = draws.n_tokens / seconds
    row = {
        "model": setting.model,
        "sampler": setting.sampler,
        "setting": setting.setting,
        "tokens_per_forward": draws.n_tokens / draws.forwards,
        "tokens_per_s": draws.n_tokens / draws.seconds,
        "predicted_tokens_per_s": predicted,
        "tokens": draws.n_tokens,
        "forwards": draws.forwards,
    }
    if models[setting.model].config.next_token_shift:
        row["implementation"] = (
            "reference sampling.sample_block_diffusion with the exact KV cache (the fast "
            "sampler does not yet decode next-token-shift models): tokens/s understated"
        )
    if draws.draft_forwards:
        row["draft_forwards"] = draws.draft_forwards
    if draws.positions:
        row["positions_per_forward"] = draws.positions / draws.forwards
    row |= judge_quality(
        draws.tokens, judge, prompt_len=draws.prompt_len, train_text=train_text, decode=decode
    )
    row["sample_text"] = decode(draws.tokens[0, draws.prompt_len :].tolist())
    return row


def ar_row(rows: list[dict]) -> dict:
    """AR's row at temperature 1: the speed every row is compared with."""
    row = next((r for r in rows if (r["sampler"], r["setting"]) == REFERENCE), None)
    if row is None:
        raise ValueError("the rows need AR at temperature 1.0: it defines matched quality")
    return row


def measure_quality(
    setting: Setting,
    models: dict[str, Transformer],
    judge: Transformer,
    *,
    n_samples: int,
    row_samples: int,
    seed: int,
    train_text: str,
    decode: Callable[[list[int]], str],
) -> dict:
    """The quality of `n_samples` of a setting's samples (seeds seed to seed+n-1), measured
    so as to be compared with a row of `row_samples`.

    The judge's perplexity is a mean over samples, so it pools them all. The entropy of a
    set of samples pooled grows with the set (each sample's characters differ a little, and
    a mixture has more entropy than its parts), so it is the mean entropy of sets of a row's
    size: the samples cut into consecutive sets (`entropy_bits`, their spread in
    `entropy_bits_sd`).
    """
    if n_samples % row_samples or n_samples < 2 * row_samples:
        raise ValueError(
            f"{n_samples} samples must be two or more sets of a row's {row_samples}: a "
            f"multiple of {row_samples}"
        )
    from course_lib import metrics

    draws = draw_samples(setting, models, n_samples, seed)
    quality = judge_quality(
        draws.tokens, judge, prompt_len=draws.prompt_len, train_text=train_text, decode=decode
    )
    generated = draws.tokens[:, draws.prompt_len :]
    sets = [metrics.unigram_entropy(s) for s in generated.split(row_samples)]
    return quality | {
        "entropy_bits": statistics.fmean(sets),
        "entropy_bits_sd": statistics.stdev(sets),
        "entropy_sets": len(sets),
        "pooled_entropy_bits": quality["entropy_bits"],
        "seed": seed,
    }


def measure_reference(
    models: dict[str, Transformer],
    judge: Transformer,
    *,
    ar: str,
    n_samples: int = REFERENCE_SAMPLES,
    row_samples: int,
    train_text: str,
    decode: Callable[[list[int]], str],
) -> dict:
    """The quality rows are matched against: AR's samples at temperature 1 (`REFERENCE`),
    `n_samples` of them, drawn as the AR row draws its own (seeds 0 to n-1), measured by
    `measure_quality`."""
    sampler, knobs = REFERENCE
    setting = Setting(ar, sampler, dict(knobs))
    quality = measure_quality(
        setting,
        models,
        judge,
        n_samples=n_samples,
        row_samples=row_samples,
        seed=0,
        train_text=train_text,
        decode=decode,
    )
    return {"model": ar, "sampler": sampler, "setting": dict(knobs), **quality}


def needs_confirming(row: dict, reference: dict) -> bool:
    """Whether a diffusion row is near enough the band for its noise to decide: its
    perplexity within two standard errors of the limit or below it, and its entropy within
    the tolerance plus two of the reference's set-to-set deviations (or within the
    tolerance, for a reference without them)."""
    if row["sampler"] not in DIFFUSION_SAMPLERS:
        return False
    ppl_limit = PPL_RATIO * reference["judge_ppl"]
    entropy_limit = ENTROPY_BITS + 2 * reference.get("entropy_bits_sd", 0.0)
    return (
        row["judge_ppl"] - 2 * row["judge_ppl_se"] <= ppl_limit
        and abs(row["entropy_bits"] - reference["entropy_bits"]) <= entropy_limit
    )


def confirm_rows(
    rows: list[dict],
    reference: dict,
    models: dict[str, Transformer],
    judge: Transformer,
    *,
    row_samples: int,
    train_text: str,
    decode: Callable[[list[int]], str],
    n_samples: int | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Measure every row `needs_confirming` again on `n_samples` (CONFIRM_SAMPLES) fresh samples
    (`measure_quality`) into its "confirmation", which then decides whether it is matched.
    A setting's fused and unfused rows share their samples, so they share one. Returns how
    many settings were measured."""
    n_samples = n_samples or CONFIRM_SAMPLES
    done: dict[str, dict] = {}
    for row in rows:
        if not needs_confirming(row, reference):
            continue
        knobs = {k: v for k, v in row["setting"].items() if k != "fuse_commit"}
        setting = Setting(row["model"], row["sampler"], knobs)
        if setting.label() not in done:
            log(f"  confirming {setting.label()} on {n_samples} fresh samples")
            done[setting.label()] = measure_quality(
                setting,
                models,
                judge,
                n_samples=n_samples,
                row_samples=row_samples,
                seed=CONFIRM_SEED,
                train_text=train_text,
                decode=decode,
            )
        row["confirmation"] = done[setting.label()]
    return len(done)


def mark_matched(rows: list[dict], reference: dict | None = None) -> dict:
    """Set every row's `matched_quality` against `reference` (a file's reference,
    `measure_reference`), or, for a file without one, AR's row; return the reference used.
    A row with a "confirmation" (`confirm_rows`) is judged by it."""
    reference = reference or ar_row(rows)
    for row in rows:
        row["matched_quality"] = is_matched(judged(row), reference)
    return reference


def _fastest(rows: list[dict], speed: Callable[[dict], float]) -> dict | None:
    return max(rows, key=speed, default=None)


def verdict(rows: list[dict], gpus: Sequence[str], reference: dict | None = None) -> dict:
    """The fastest matched diffusion setting against plain AR and speculative AR, on this
    machine ("cpu") and predicted for each GPU in `gpus`; quality against `reference` (see
    `mark_matched`), speed against AR's row."""
    ar = ar_row(rows)
    reference = mark_matched(rows, reference)
    diffusion = [r for r in rows if r["sampler"] in DIFFUSION_SAMPLERS]
    matched = [r for r in diffusion if r["matched_quality"]]
    # speculative decoding writes exactly AR's distribution (tests/test_speculative.py): its
    # rows count whatever their measured quality, which differs from AR's only by noise
    speculative = [r for r in rows if r["sampler"] == "speculative"]
    # fused and unfused rows write the same samples: a tie goes to more tokens per forward
    closest = min(
        diffusion,
        key=lambda r: (quality_gap(judged(r), reference), -r["tokens_per_forward"]),
        default=None,
    )
    judged_closest = judged(closest) if closest else None

    def compare(speed: Callable[[dict], float]) -> dict:
        best = _fastest(matched, speed)
        best_spec = _fastest(speculative, speed)
        out = {
            "ar_tokens_per_s": speed(ar),
            "speculative_tokens_per_s": speed(best_spec) if best_spec else None,
            "speculative": row_label(best_spec),
            "diffusion": row_label(best),
            "diffusion_tokens_per_s": speed(best) if best else None,
        }
        if best:
            out["speedup_vs_ar"] = speed(best) / speed(ar)
            if best_spec:
                out["speedup_vs_speculative"] = speed(best) / speed(best_spec)
        out["diffusion_wins"] = bool(
            best and out["speedup_vs_ar"] > 1 and out.get("speedup_vs_speculative", 2) > 1
        )
        return out

    result = {
        "reference": row_label(reference),
        "reference_samples": reference.get("samples"),
        "reference_judge_ppl": reference["judge_ppl"],
        "reference_entropy_bits": reference["entropy_bits"],
        "matched_diffusion_rows": len(matched),
        "diffusion_rows": len(diffusion),
        "closest_diffusion": row_label(closest),
        "closest_confirmed": bool(closest and "confirmation" in closest),
        "closest_ppl_ratio": (
            judged_closest["judge_ppl"] / reference["judge_ppl"] if closest else None
        ),
        "closest_entropy_difference": (
            judged_closest["entropy_bits"] - reference["entropy_bits"] if closest else None
        ),
        "cpu": compare(lambda r: r["tokens_per_s"]),
        "gpus": {g: compare(lambda r, g=g: r["predicted_tokens_per_s"][g]) for g in gpus},
    }
    result["sentence"] = _sentence(result)
    return result


def judged(row: dict) -> dict:
    """The quality a row is judged by: its confirmation (`confirm_rows`) if it has one."""
    return row.get("confirmation", row)


def row_label(row: dict | None) -> str | None:
    """A frontier row's setting in words (None for no row)."""
    if row is None:
        return None
    return Setting(row["model"], row["sampler"], row["setting"]).label()


def _sentence(v: dict) -> str:
    cpu = v["cpu"]
    if not v["diffusion_rows"]:
        return "No diffusion setting was measured: AR has nothing to be compared with."
    if not v["matched_diffusion_rows"]:
        return (
            f"No diffusion setting matches AR's quality: of {v['diffusion_rows']} diffusion rows, "
            f"the closest ({v['closest_diffusion']}) has {v['closest_ppl_ratio']:.2f}x the judge "
            "perplexity of the quality reference (AR's samples) and an entropy "
            f"{v['closest_entropy_difference']:+.2f} bits from its"
            + (", measured again on fresh samples" if v.get("closest_confirmed") else "")
            + f" (matched: at most {PPL_RATIO:.2f}x and within {ENTROPY_BITS} bits). AR stays "
            "the fastest way to write text of its quality here."
        )
    won = [g for g, c in v["gpus"].items() if c["diffusion_wins"]]
    return (
        f"The fastest matched diffusion setting ({cpu['diffusion']}) writes "
        f"{cpu['diffusion_tokens_per_s']:.0f} tokens/s on this machine, "
        f"{cpu['speedup_vs_ar']:.2f}x plain AR"
        + (
            f" and {cpu['speedup_vs_speculative']:.2f}x speculative AR"
            if "speedup_vs_speculative" in cpu
            else ""
        )
        + f"; predicted to beat both on {len(won)} of {len(v['gpus'])} catalog GPUs."
    )


def _new_result(device: torch.device, judge: str, n_samples: int) -> dict:
    """A frontier file before its rows: when, where, and by what protocol."""
    from course_lib import checkpoints

    manifest = checkpoints.read_manifest(env.DATA_DIR / "checkpoints")
    return {
        "created": _now(),
        "environment": env.describe_environment(device),
        "protocol": {
            **PROTOCOL,
            "samples_per_row": n_samples,
            "threads": torch.get_num_threads(),
            "judge": {"checkpoint": f"{judge}.pt", **manifest.get(f"{judge}.pt", {})},
        },
        "rows": [],
    }


def _load_checkpoints(names: set[str], device: torch.device) -> dict[str, Transformer]:
    """The shipped checkpoints `names` from data/checkpoints/, or an error naming the missing."""
    from course_lib import checkpoints

    folder = env.DATA_DIR / "checkpoints"
    missing = sorted(n for n in names if not (folder / f"{n}.pt").exists())
    if missing:
        raise FileNotFoundError(
            f"the frontier needs {missing} in {folder}: train them "
            "(python -m course_lib train --preset NAME) and ship them (python -m course_lib ship)"
        )
    return {n: checkpoints.load_checkpoint(folder / f"{n}.pt", device=device) for n in names}


def add_reference(
    path: str | Path, n_samples: int = REFERENCE_SAMPLES, confirm_samples: int = CONFIRM_SAMPLES
) -> dict:
    """Measure the quality reference (`measure_reference`) of an existing frontier file, with
    its AR model and judge, confirm the rows near the band (`confirm_rows`) and recompute its
    verdict: samples are drawn by seed, so these are what the file's own run would have
    measured."""
    from course_lib import data

    path = Path(path)
    result = json.loads(path.read_text())
    ar, judge = ar_row(result["rows"])["model"], result["protocol"]["judge"]["checkpoint"]
    judge = judge.removesuffix(".pt")
    models = _load_checkpoints({ar, judge}, env.get_device())
    text = dict(train_text=data.load_corpus("pystdlib").train, decode=data.CharTokenizer().decode)
    row_samples = result["protocol"]["samples_per_row"]
    reference = measure_reference(
        models, models[judge], ar=ar, n_samples=n_samples, row_samples=row_samples, **text
    )
    result["reference"] = reference | {"added": _now()}
    near = {r["model"] for r in result["rows"] if needs_confirming(r, reference)}
    models |= _load_checkpoints(near - models.keys(), env.get_device())
    for row in result["rows"]:
        row.pop("confirmation", None)
    confirm_rows(
        result["rows"],
        reference,
        models,
        models[judge],
        row_samples=row_samples,
        n_samples=confirm_samples,
        **text,
    )
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return rewrite_verdict(path)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def rewrite_verdict(path: str | Path) -> dict:
    """Recompute the verdict of a frontier file from its rows (after a change of the rule)."""
    from course_lib import hardware

    path = Path(path)
    result = json.loads(path.read_text())
    result["verdict"] = verdict(result["rows"], list(hardware.CATALOG), result.get("reference"))
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result["verdict"]


def run_frontier(
    *,
    judge: str = "judge-ar",
    ar: str = "ar-small",
    draft: str | None = "ar-draft",
    diffusion: Sequence[str] = DEFAULT_DIFFUSION,
    n_samples: int = 32,
    reference_samples: int = REFERENCE_SAMPLES,
    confirm_samples: int = CONFIRM_SAMPLES,
    out: str | Path | None = None,
    settings: Sequence[Setting] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure every setting with the checkpoints in data/checkpoints/ and write the frontier.

    Missing checkpoints are named in the error. Batch 1 on this machine's device; the
    optimized samplers' last stage; quality by `judge`, against `reference_samples` of AR's
    samples (`measure_reference`); the rows near the band measured again (`confirm_rows`).
    `settings` defaults to `default_settings` for the models given.
    """
    from course_lib import data, hardware

    device = env.get_device()
    names = {judge, ar, *diffusion} | ({draft} if draft else set())
    models = _load_checkpoints(names, device)
    if settings is None:
        settings = default_settings({n: models[n].config for n in diffusion}, ar=ar, draft=draft)
    text = dict(train_text=data.load_corpus("pystdlib").train, decode=data.CharTokenizer().decode)
    out = Path(out) if out else env.DATA_DIR / "results" / f"frontier-{device.type}.json"
    result = _new_result(device, judge, n_samples)
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"  the quality reference: {reference_samples} samples of {ar} at temperature 1")
    result["reference"] = reference = measure_reference(
        models, models[judge], ar=ar, n_samples=reference_samples, row_samples=n_samples, **text
    )
    failed = result["failed"] = []  # a setting that breaks (a GPU path, say) ends no others
    for setting in settings:
        log(f"  {setting.label()}")
        try:
            row = measure_row(setting, models, models[judge], n_samples=n_samples, **text)
        except Exception as err:  # named after the others ran, then raised
            failed.append({"setting": setting.label(), "error": f"{type(err).__name__}: {err}"})
            log(f"    failed: {failed[-1]['error']}")
            continue
        result["rows"].append(row)
        log(
            f"    {row['tokens_per_forward']:.2f} tokens/forward, {row['tokens_per_s']:.0f} "
            f"tokens/s, judge perplexity {row['judge_ppl']:.2f} ± {row['judge_ppl_se']:.2f}, "
            f"entropy {row['entropy_bits']:.2f} bits"
        )
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")  # a cut-off run
        # keeps its rows; the verdict comes with the last
    confirm_rows(
        result["rows"],
        reference,
        models,
        models[judge],
        row_samples=n_samples,
        n_samples=confirm_samples,
        log=log,
        **text,
    )
    result["verdict"] = verdict(result["rows"], list(hardware.CATALOG), reference)
    result["wall_s"] = time.perf_counter() - start
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(result["verdict"]["sentence"])
    if failed:
        raise RuntimeError(f"{len(failed)} frontier setting(s) failed (in {out}): {failed[0]}")
    return result
