"""Everything the course measures on a GPU, in one command, for a machine lent for minutes.

    python3 scripts/gpu_session.py               # on a CUDA machine: about 6-8 minutes
    python3 scripts/gpu_session.py --dry-run     # anywhere: the same steps on tiny shapes

Steps, in order, each timed and allowed to fail without stopping the others:

1. tests: the GPU tests (tests/test_gpu.py, and the CUDA tests of test_checkpoints and
   test_env); on a CPU they skip.
2. bench: `python -m course_lib bench --suite gpu` (ceilings, every sampler stage with bf16,
   CUDA graphs and torch.compile, batch sweeps, AR against diffusion at 85M-680M parameters,
   quality in float32 and bf16) -> bench-gpu-cuda.json.
3. train: a short run of the ar-small preset on the GPU, with its tokens/s.
4. roofline: `python -m course_lib roofline-check`: the measured ceilings and the performance
   model's predictions against measured steps and samplers.

It writes OUT/gpu-session-cuda.json (the machine, the protocol, each step's command, seconds,
exit status and output) beside the benchmark's JSON; OUT is data/results/ unless --out says
otherwise (a dry run writes to a temporary folder, and its files say "dry-run"). Commit the
files, then regenerate notebooks 09 and 10, whose GPU sections read them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_TESTS = ["tests/test_gpu.py", "tests/test_checkpoints.py", "tests/test_env.py"]


def steps(python: str, out: Path, run_dir: Path, dry_run: bool) -> list[tuple[str, list[str]]]:
    """(name, command) of each step; a dry run uses the CPU and tiny shapes."""
    device = "cpu" if dry_run else "cuda"
    bench = [python, "-m", "course_lib", "bench", "--suite", "gpu", "--device", device]
    bench += ["--out", str(out / f"bench-gpu-{'dry-run' if dry_run else 'cuda'}.json")]
    if dry_run:
        bench += ["--smoke", "--no-compile"]
    preset, train_steps = ("ar-tiny", "3") if dry_run else ("ar-small", "300")
    train = [python, "-m", "course_lib", "train", "--preset", preset, "--steps", train_steps]
    train += ["--device", device, "--restart", "--out", str(run_dir)]
    roofline = [python, "-m", "course_lib", "roofline-check", "--device", device]
    # addopts cleared: the notebooks' nbval plugin need not be installed on a GPU machine
    tests = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *GPU_TESTS]
    return [("tests", tests), ("bench", bench), ("train", train), ("roofline", roofline)]


def run_step(name: str, command: list[str], env: dict) -> dict:
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    print(output[-3000:], flush=True)
    print(f"   {name}: exit {done.returncode} in {seconds:.0f} s", flush=True)
    return dict(
        step=name,
        command=" ".join(command),
        seconds=round(seconds, 1),
        returncode=done.returncode,
        output_tail=output[-6000:],
    )


def training_speed(run_dir: Path) -> dict | None:
    """The short training run's tokens/s and validation bits, from its checkpoint."""
    sys.path.insert(0, str(ROOT))
    from course_lib import checkpoints

    path = run_dir / "last.pt"
    if not path.exists():
        return None
    state = checkpoints.read_checkpoint(path)["train_state"] or {}
    history = state.get("history") or []
    return dict(
        steps=state.get("step"),
        hardware=state.get("hardware"),
        wall_time_s=state.get("wall_time_s"),
        history=[
            {k: row[k] for k in ("step", "val_bits", "tokens_per_s") if k in row} for row in history
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, temp folder")
    parser.add_argument("--out", type=Path, help="where the JSON goes (default data/results)")
    parser.add_argument(
        "--only", nargs="+", help="run only these steps (tests bench train roofline)"
    )
    args = parser.parse_args(argv)
    if args.out is not None:
        out = args.out
    elif args.dry_run:
        out = Path(tempfile.mkdtemp(prefix="gpu-session-"))
    else:
        out = ROOT / "data" / "results"
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    import torch

    from course_lib import env as course_env

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device here: run with --dry-run to check the steps on a CPU")
        return 2
    child_env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if args.dry_run:  # the code of every step, as quickly as it runs: fast mode, the CPU
        child_env.update(COURSE_FAST="1", COURSE_DEVICE="cpu", OMP_NUM_THREADS="1")
    else:  # the real shapes
        child_env.pop("COURSE_FAST", None)
    device = "cpu" if args.dry_run else "cuda"
    session = dict(
        kind="dry-run" if args.dry_run else "cuda",
        date=datetime.date.today().isoformat(),
        environment=course_env.describe_environment(device),
        protocol=(
            "scripts/gpu_session.py: each step a separate process, timed by wall clock; the "
            "benchmark's own protocol is in its JSON (warm-up, repeats, CUDA-synchronised "
            "timers, compile time apart); the training run is ar-small's preset cut to 300 "
            "steps, tokens/s from its history"
            + (
                " (dry run: CPU, smoke shapes, ar-tiny for 3 steps, no compile)"
                if args.dry_run
                else ""
            )
        ),
        steps=[],
    )
    path = out / f"gpu-session-{session['kind']}.json"
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-session-train-"))  # the checkpoint stays out
    for name, command in steps(sys.executable, out, run_dir, args.dry_run):
        if args.only and name not in args.only:
            continue
        row = run_step(name, command, child_env)
        if name == "train":
            row["training"] = training_speed(run_dir)
        session["steps"].append(row)
        path.write_text(json.dumps(session, indent=1) + "\n")  # after every step: a cut-off
        # session still leaves what it measured
    failed = [row["step"] for row in session["steps"] if row["returncode"] != 0]
    print(f"wrote {path}; steps failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
