"""Command line: `python -m course_lib COMMAND --help`.

train --preset NAME   train (or resume) a preset; checkpoints under data/runs/NAME/
ship --preset NAME    copy a finished run to data/checkpoints/NAME.pt (16-bit, in the manifest)
                      and its training curve to data/results/training-curves.json
doctor                check that this machine is ready for the course
bench --suite NAME    benchmark the samplers (quick, cpu, gpu); JSON in data/results/
evaluate              held-out bits per character of the shipped checkpoints; JSON in data/results/
frontier              diffusion against AR at matched quality (notebook 12); JSON in data/results/
roofline-check        the roofline's performance model against measured steps (notebook 10)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from course_lib import env, presets, train

    overrides = {
        k: v for k, v in (("steps", args.steps), ("precision", args.precision)) if v is not None
    }
    preset = presets.get_preset(args.preset, **overrides)
    out_dir = args.out or preset.out_dir
    env.seed_everything(preset.train.seed)
    model = presets.initial_model(preset)
    source = train.TextBatches(preset.corpus, preset.train.seq_len)
    print(f"preset {preset.name}: {preset.description}")
    print(
        f"{model.num_params():,} parameters; {source.corpus.describe()}; checkpoints in {out_dir}"
    )
    result = train.train(
        model,
        preset.train,
        source=source,
        out_dir=out_dir,
        resume=not args.restart,
        device=args.device,
    )
    if result.final_val_loss is not None:
        row = result.history[-1]
        print(f"step {row['step']}: validation {row['val_bits']:.3f} bits per token")
    return 130 if result.interrupted else 0


def _ship(args: argparse.Namespace) -> int:
    import datetime
    import json

    from course_lib import checkpoints, data, env, presets

    preset = presets.get_preset(args.preset)
    src = preset.out_dir / "last.pt"
    state = checkpoints.read_checkpoint(src)["train_state"] or {}
    steps = int(state.get("step", 0))
    if steps < preset.train.steps and not args.unfinished:
        raise ValueError(
            f"{src} has trained {steps} of {preset.train.steps} steps; finish it "
            f"(python -m course_lib train --preset {preset.name}) or pass --unfinished"
        )
    history = state.get("history") or []
    last = history[-1] if history else {}
    metadata = {
        "preset": preset.name,
        "objective": preset.train.objective,
        "steps": steps,
        "training_tokens": steps * preset.train.batch_size * preset.train.seq_len,
        "wall_time_s": round(state["wall_time_s"], 1) if "wall_time_s" in state else None,
        "hardware": state.get("hardware", "unknown"),
        "corpus": f"{preset.corpus} ({data.load_corpus(preset.corpus).fingerprint})",
        "val_bits_per_token_at_training": round(last["val_bits"], 4) if last else None,
        "shipped": datetime.date.today().isoformat(),
    }
    if preset.init_from is not None:  # training_tokens counts this run's only
        metadata["init_from"] = f"{preset.init_from}.pt"
    if not args.curve_only:
        dst = env.DATA_DIR / "checkpoints" / f"{preset.name}.pt"
        checkpoints.export_checkpoint(src, dst, metadata=metadata)
        print(f"shipped {dst} ({dst.stat().st_size / 1e6:.1f} MB): {metadata}")
    # the run's validation curve, which the shipped file does not keep (notebooks 05 and 12)
    curves_path = env.DATA_DIR / "results" / "training-curves.json"
    curves = json.loads(curves_path.read_text()) if curves_path.exists() else {}
    curves[preset.name] = {
        **{k: v for k, v in metadata.items() if k != "shipped"},
        "description": preset.description,
        "tokens_per_step": preset.train.batch_size * preset.train.seq_len,
        "history": [
            {k: row[k] for k in ("step", "train_loss", "val_bits") if k in row} for row in history
        ],
    }
    curves_path.parent.mkdir(parents=True, exist_ok=True)
    curves_path.write_text(json.dumps(dict(sorted(curves.items())), indent=1) + "\n")
    print(f"{len(history)} evaluations of {preset.name} written to {curves_path}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from course_lib import doctor

    return doctor.main()


def _bench(args: argparse.Namespace) -> int:
    from course_lib import bench_suites

    result = bench_suites.run_suite(
        args.suite,
        device=args.device,
        out=args.out,
        threads=args.threads,
        cpu_time=args.cpu_time,
        compile=args.compile,
        smoke=args.smoke,
    )
    errors = [row for row in result["rows"] if "error" in row]
    print(f"{len(result['rows'])} rows ({len(errors)} errors) in {result['wall_s']:.0f} s")
    return 1 if errors else 0


def _frontier(args: argparse.Namespace) -> int:
    import torch

    from course_lib import env, frontier

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    path = args.out or env.DATA_DIR / "results" / f"frontier-{env.get_device().type}.json"
    reference_samples = args.reference_samples or frontier.REFERENCE_SAMPLES
    if args.verdict_only:
        print(frontier.rewrite_verdict(path)["sentence"])
        return 0
    if args.reference_only:
        confirm = args.confirm_samples or frontier.CONFIRM_SAMPLES
        print(frontier.add_reference(path, reference_samples, confirm)["sentence"])
        return 0
    frontier.run_frontier(
        judge=args.judge,
        ar=args.ar,
        draft=args.draft,
        diffusion=args.diffusion or frontier.DEFAULT_DIFFUSION,
        n_samples=args.samples,
        reference_samples=reference_samples,
        confirm_samples=args.confirm_samples or frontier.CONFIRM_SAMPLES,
        out=args.out,
    )
    return 0


QUICK_WINDOWS = 16  # the slice every evaluation also records, which the tests reproduce


def _evaluate(args: argparse.Namespace) -> int:
    import datetime
    import json

    import torch

    from course_lib import checkpoints, data, env, metrics, self_speculative

    folder = env.DATA_DIR / "checkpoints"
    manifest = checkpoints.read_manifest(folder)
    names = args.checkpoint or sorted(name.removesuffix(".pt") for name in manifest)
    if not names:
        raise FileNotFoundError(f"no checkpoints listed in {folder / checkpoints.MANIFEST_NAME}")
    out = env.DATA_DIR / "results" / "checkpoint-metrics.json" if args.out is None else args.out
    out = Path(out)
    corpus = data.load_corpus("pystdlib")
    val_ids = data.encode_corpus(corpus)["val"]
    slices = [args.max_windows] if args.max_windows else [None, QUICK_WINDOWS]
    results = json.loads(out.read_text()) if out.exists() else {"rows": []}
    rows = results["rows"]
    device = env.get_device(args.device) if args.device else torch.device("cpu")
    for name in names:
        path = folder / f"{name}.pt"
        model = checkpoints.load_checkpoint(path, device=device)
        entry = manifest.get(path.name, {})
        readable = model.config.attention == "block_causal" and not model.config.next_token_shift
        for max_windows in slices:
            score = metrics.held_out_bits(model, val_ids, max_windows=max_windows)
            exact = {}
            if readable:  # a block-diffusion model's exact likelihood, read left to right
                l2r = self_speculative.left_to_right_bits(model, val_ids, max_windows=max_windows)
                exact = {
                    "left_to_right_bits": l2r.bits_per_char,
                    "left_to_right_standard_error": l2r.standard_error,
                    "left_to_right_method": l2r.method,
                }
            row = {
                "checkpoint": path.name,
                "sha256": entry.get("sha256"),
                "preset": entry.get("preset"),
                "training_tokens": entry.get("training_tokens"),
                "max_windows": max_windows,
                **score._asdict(),
                **exact,
                "corpus": f"pystdlib validation split ({corpus.fingerprint})",
                "device": str(device),
                "torch": torch.__version__,
                "evaluated": datetime.date.today().isoformat(),
            }
            rows[:] = [
                r for r in rows if (r["checkpoint"], r["max_windows"]) != (path.name, max_windows)
            ]
            rows.append(row)
            where = "all windows" if max_windows is None else f"first {max_windows} windows"
            print(
                f"{path.name:<21} {where:<18}{score.bits_per_char:.4f} +- "
                f"{score.standard_error:.4f} bits per char  ({score.method})"
            )
            if exact:
                print(
                    f"{'':<40}{l2r.bits_per_char:.4f} +- {l2r.standard_error:.4f} bits per "
                    f"char  ({l2r.method})"
                )
    rows.sort(key=lambda r: (r["checkpoint"], r["max_windows"] or 0))
    results["description"] = (
        "Held-out bits per character of the shipped checkpoints, written by `python -m "
        "course_lib evaluate` (course_lib.metrics.held_out_bits): AR models exact, diffusion "
        "models their ELBO (an upper bound), all on the same windows, float32; a block-"
        "diffusion model without the next-token shift also its exact likelihood read left to "
        "right within its blocks (course_lib.self_speculative.left_to_right_bits), each window "
        "from its start."
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _frontier_arguments(p: argparse.ArgumentParser) -> None:
    """The frontier command's options."""
    p.add_argument("--judge", default="judge-ar", help="the checkpoint that scores the samples")
    p.add_argument("--ar", default="ar-small", help="the AR model (and speculative target)")
    p.add_argument("--draft", default="ar-draft", help="speculative decoding's draft model")
    p.add_argument("--diffusion", action="append", help="a diffusion checkpoint (repeatable)")
    p.add_argument("--samples", type=int, default=32, help="samples per row (default 32)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", help="JSON file (default: data/results/frontier-DEVICE.json)")
    p.add_argument(
        "--reference-samples",
        type=int,
        help="AR's samples pooled for the quality reference (default: frontier.REFERENCE_SAMPLES)",
    )
    p.add_argument(
        "--confirm-samples",
        type=int,
        help="fresh samples for a row near the band (default: frontier.CONFIRM_SAMPLES)",
    )
    p.add_argument(
        "--verdict-only", action="store_true", help="recompute the verdict of an existing file"
    )
    p.add_argument(
        "--reference-only",
        action="store_true",
        help="measure the quality reference of an existing file, confirm its rows near the "
        "band, then recompute its verdict",
    )


def main(argv: list[str] | None = None) -> int:
    from course_lib import roofline_check  # its options are defined beside its code

    parser = argparse.ArgumentParser(
        prog="python -m course_lib",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", help="train or resume a preset")
    p.add_argument("--preset", required=True, help="a name from course_lib.presets.PRESETS")
    p.add_argument("--steps", type=int, help="override the preset's number of steps")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="override autocast")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: automatic)")
    p.add_argument("--out", help="checkpoint folder (default: data/runs/PRESET)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.set_defaults(run=_train)
    p = commands.add_parser("ship", help="copy a finished run to data/checkpoints/ (16-bit)")
    p.add_argument("--preset", required=True, help="a preset whose run is in data/runs/PRESET")
    p.add_argument("--unfinished", action="store_true", help="ship a run that has not finished")
    p.add_argument(
        "--curve-only", action="store_true", help="record the training curve, not the weights"
    )
    p.set_defaults(run=_ship)
    p = commands.add_parser("doctor", help="check that this machine is ready for the course")
    p.set_defaults(run=_doctor)
    p = commands.add_parser("bench", help="benchmark the samplers; JSON in data/results/")
    p.add_argument("--suite", default="quick", help="quick (seconds), cpu (minutes) or gpu")
    p.add_argument("--out", help="the JSON file (default: data/results/bench-SUITE-DEVICE.json)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: automatic)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--cpu-time", action="store_true", help="time in CPU seconds, not wall")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add torch.compile rows (default: only in the gpu suite)",
    )
    p.add_argument("--smoke", action="store_true", help="gpu suite on tiny shapes, any device")
    p.set_defaults(run=_bench)
    p = commands.add_parser("evaluate", help="held-out bits per character of the checkpoints")
    p.add_argument("--checkpoint", action="append", help="e.g. ar-small (default: all shipped)")
    p.add_argument("--max-windows", type=int, help="only the first N windows (default: all)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cpu)")
    p.add_argument("--out", help="JSON file (default: data/results/checkpoint-metrics.json)")
    p.set_defaults(run=_evaluate)
    p = commands.add_parser(
        "roofline-check", help="the roofline's predictions against measured steps and samplers"
    )
    roofline_check.add_arguments(p)
    p.set_defaults(run=roofline_check.run)
    p = commands.add_parser("frontier", help="diffusion against AR at matched quality")
    _frontier_arguments(p)
    p.set_defaults(run=_frontier)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
