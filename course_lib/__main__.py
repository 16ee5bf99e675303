"""Command line: `python -m course_lib COMMAND --help`.

train --preset NAME   train (or resume) a preset; checkpoints under data/runs/NAME/
ship --preset NAME    copy a finished run to data/checkpoints/NAME.pt (16-bit, in the manifest)
doctor                check that this machine is ready for the course
bench --suite NAME    benchmark the samplers (quick, cpu, gpu); JSON in data/results/
"""

from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> int:
    from course_lib import env, presets, train
    from course_lib.model import Transformer

    overrides = {
        k: v for k, v in (("steps", args.steps), ("precision", args.precision)) if v is not None
    }
    preset = presets.get_preset(args.preset, **overrides)
    out_dir = args.out or preset.out_dir
    env.seed_everything(preset.train.seed)
    model = Transformer(preset.model)
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
    last = state["history"][-1] if state.get("history") else {}
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
    dst = env.DATA_DIR / "checkpoints" / f"{preset.name}.pt"
    checkpoints.export_checkpoint(src, dst, metadata=metadata)
    print(f"shipped {dst} ({dst.stat().st_size / 1e6:.1f} MB): {metadata}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from course_lib import doctor

    return doctor.main()


def _bench(args: argparse.Namespace) -> int:
    from course_lib import benchmarks

    result = benchmarks.run_suite(
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


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
