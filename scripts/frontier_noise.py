"""How much do the frontier's quality columns move with the seeds alone? (for maintainers;
notebook 12, section 4)

The frontier judges each row on 32 samples and calls it matched when its judge perplexity is
at most 1.10x that of AR's samples at temperature 1 and its entropy within 0.15 bits of
theirs. Speculative AR writes exactly AR's distribution (tests/test_speculative.py), yet its
rows land off AR's: whatever separates them is the noise of 32 samples per row, if the
implementation is right. This script measures that noise instead of assuming it: it draws
AR's row and speculative AR (draft 4) with the frontier's own functions, once with the
frontier's seeds (0..n-1) and again with other seed sets (1000k..1000k+n-1), and scores every
set against AR's first, as a frontier that matched rows against AR's row of 32 samples would.
Sets of one distribution land as far apart as the noise says. (A gap of one sign in every
set is no proof of a difference: it is also what an outlying first set gives.) What it found
is why the frontier matches rows against a reference of many samples
(`measure_reference` in course_lib/frontier.py); notebook 12 scores these sets against it too.

    python scripts/frontier_noise.py                 # 6 seed sets of 32 samples: ~3 minutes
    python scripts/frontier_noise.py --sets 2 --samples 8 --out noise.json

One CPU thread. It writes what it prints, with the machine and the protocol, to
data/results/frontier-noise-<device>.json, which notebook 12 reads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import checkpoints, data, env, frontier  # noqa: E402
from course_lib.model import Transformer  # noqa: E402

SEED_STRIDE = 1000  # set k draws its samples with seeds k * SEED_STRIDE + i


def settings(ar: str, draft: str, draft_len: int = 4) -> list[frontier.Setting]:
    """AR's reference row and speculative AR: two samplers of one distribution."""
    sampler, knobs = frontier.REFERENCE
    return [
        frontier.Setting(ar, sampler, dict(knobs)),
        frontier.Setting(ar, "speculative", {"draft": draft, "draft_len": draft_len, **knobs}),
    ]


def seed_sets(
    models: dict[str, Transformer],
    judge: Transformer,
    setting_list: list[frontier.Setting],
    *,
    sets: int,
    n_samples: int,
    train_text: str,
    decode: Callable[[list[int]], str],
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Every setting at `sets` seed sets, each scored against the first setting's first set
    as the frontier scores a row against AR's: `ppl_ratio`, `entropy_diff`, `matched`."""
    rows = []
    for k in range(sets):
        for setting in setting_list:
            draws = frontier.draw_samples(setting, models, n_samples, seed=k * SEED_STRIDE)
            quality = frontier.judge_quality(
                draws.tokens,
                judge,
                prompt_len=draws.prompt_len,
                train_text=train_text,
                decode=decode,
            )
            rows.append({"sampler": setting.sampler, "seed_set": k, **quality})
            log(f"  set {k} {setting.sampler:<12} {_row_text(rows[-1])}")
    reference = rows[0]
    for row in rows:
        row["ppl_ratio"] = row["judge_ppl"] / reference["judge_ppl"]
        row["entropy_diff"] = row["entropy_bits"] - reference["entropy_bits"]
        row["matched"] = frontier.is_matched(row, reference)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per sampler, the range of its gaps from the reference set, the reference itself left
    out: how far apart sets of one distribution land."""
    out = {}
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        gaps = [r for r in rows[1:] if r["sampler"] == sampler]
        ratios, diffs = [r["ppl_ratio"] for r in gaps], [r["entropy_diff"] for r in gaps]
        out[sampler] = {
            "sets": len(gaps),
            "ppl_ratio_min": min(ratios),
            "ppl_ratio_max": max(ratios),
            "entropy_diff_min": min(diffs),
            "entropy_diff_max": max(diffs),
            "entropy_diff_mean": statistics.fmean(diffs),
            "matched": sum(r["matched"] for r in gaps),
        }
    return out


def _row_text(row: dict) -> str:
    return (
        f"judge perplexity {row['judge_ppl']:.2f} ± {row['judge_ppl_se']:.2f}, "
        f"entropy {row['entropy_bits']:.3f} bits"
    )


def report(result: dict) -> str:
    """The table notebook 12 prints."""
    lines = [f"{'set':>3} {'sampler':<12} {'judge ppl':>13} {'/set 0':>7} {'dH':>6} {'matched':>8}"]
    for r in result["rows"]:
        ppl = f"{r['judge_ppl']:.2f} ± {r['judge_ppl_se']:.2f}"
        lines.append(
            f"{r['seed_set']:>3} {r['sampler']:<12} {ppl:>13} {r['ppl_ratio']:>7.2f} "
            f"{r['entropy_diff']:>+6.2f} {'yes' if r['matched'] else 'no':>8}"
        )
    for sampler, s in result["summary"].items():
        lines.append(
            f"{sampler}, {s['sets']} sets against set 0 of ar: /set 0 {s['ppl_ratio_min']:.2f} to "
            f"{s['ppl_ratio_max']:.2f}, dH {s['entropy_diff_min']:+.2f} to "
            f"{s['entropy_diff_max']:+.2f} (mean {s['entropy_diff_mean']:+.2f}), matched "
            f"{s['matched']} of {s['sets']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=6, help="seed sets per sampler")
    parser.add_argument("--samples", type=int, default=32, help="samples per set (frontier: 32)")
    parser.add_argument("--ar", default="ar-small")
    parser.add_argument("--draft", default="ar-draft")
    parser.add_argument("--judge", default="judge-ar")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = env.get_device()
    folder = env.DATA_DIR / "checkpoints"
    names = (args.ar, args.draft, args.judge)
    models = {n: checkpoints.load_checkpoint(folder / f"{n}.pt", device=device) for n in names}
    start = time.perf_counter()
    rows = seed_sets(
        models,
        models[args.judge],
        settings(args.ar, args.draft),
        sets=args.sets,
        n_samples=args.samples,
        train_text=data.load_corpus("pystdlib").train,
        decode=data.CharTokenizer().decode,
    )
    result = {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": env.describe_environment(device),
        "protocol": {
            "what": "the frontier's AR row and speculative AR (draft 4) at several seed sets, "
            "each scored against AR's first set as a frontier matching rows against AR's row "
            f"would (scripts/frontier_noise.py); set k draws sample i with seed {SEED_STRIDE}k "
            "+ i, set 0 is the frontier's own seeds",
            "samples_per_set": args.samples,
            "judge": f"{args.judge}.pt",
            "quality": {k: frontier.PROTOCOL[k] for k in ("judge_ppl", "entropy_bits")},
        },
        "rows": rows,
        "summary": summary(rows),
        "wall_s": time.perf_counter() - start,
    }
    out = args.out or env.DATA_DIR / "results" / f"frontier-noise-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(report(result))
    print(f"wrote {out} in {result['wall_s'] / 60:.0f} minutes")
    return result


if __name__ == "__main__":
    main()
