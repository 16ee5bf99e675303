"""Everything the course measures on a GPU, in one command, for a machine lent for minutes.

    python3 scripts/gpu_session.py               # on a CUDA machine: at most --budget seconds
    python3 scripts/gpu_session.py --dry-run     # anywhere: the same steps on tiny shapes

Steps, in order, each timed and allowed to fail without stopping the others:

1. tests: the GPU tests (tests/test_gpu.py, and the CUDA tests of test_checkpoints and
   test_env); on a CPU they skip.
2. bench: `python -m course_lib bench --suite gpu` (ceilings, AR against diffusion at
   85M-680M parameters, quality in float32 and bf16, every sampler stage with bf16 and CUDA
   graphs, batch sweeps, torch.compile last) -> bench-gpu-cuda.json.
3. frontier: the strongest shipped diffusion models against AR and speculative AR at batch 1,
   quality by the judge -> frontier-cuda.json (the matched-quality comparison on a GPU).
4. train: a short run of the ar-small preset on the GPU, with its tokens/s.
5. roofline: `python -m course_lib roofline-check`: the measured ceilings and the performance
   model's predictions against measured steps and samplers.
6. suite: the unit tests (tests/, pinned to the CPU by conftest.py as on any machine, in
   parallel where pytest-xdist is installed) on the GPU machine; a dry run only collects them.

On a machine whose Python is another version than the course's, set COURSE_PYSTDLIB to a
folder made here by `data.export_pystdlib` (the course's corpus files): the training run and
the frontier then read the course's corpus; the session's JSON records which it read.

A lease is short, so the session has a time budget (--budget, default 520 s): each step may
run for its share (SHARES) plus what the steps before it left unused, and is stopped when its
time is up; the bench and the frontier write their JSON after every row, so a stopped step
still leaves what it measured.

It writes OUT/gpu-session-cuda.json (the machine, the protocol, each step's command, seconds,
exit status and output) beside the benchmark's JSON; OUT is data/results/ unless --out says
otherwise (a dry run writes to a temporary folder, and its files say "dry-run"). Commit the
files, then regenerate notebooks 09 and 10, whose GPU sections read them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_TESTS = ["tests/test_gpu.py", "tests/test_checkpoints.py", "tests/test_env.py"]
# the frontier's diffusion models on a GPU: the best by ELBO with blocks of 2 and of 4 (README)
FRONTIER_MODELS = ("bd3lm-ar-b2-look2", "bd3lm-ar-b4-more2")
# each step's share of the budget (fractions; unused time passes to the next step)
SHARES = dict(tests=0.2, bench=0.35, frontier=0.15, train=0.06, roofline=0.1, suite=0.14)


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
    frontier = [python, "-m", "course_lib", "frontier", "--samples", "2" if dry_run else "32"]
    # quality is the CPU frontier's business; here a smaller reference leaves time for speed
    frontier += ["--reference-samples", "4" if dry_run else "64"]
    frontier += ["--confirm-samples", "4" if dry_run else "64"]
    for name in FRONTIER_MODELS[:1] if dry_run else FRONTIER_MODELS:
        frontier += ["--diffusion", name]
    frontier += ["--out", str(out / f"frontier-{'dry-run' if dry_run else 'cuda'}.json")]
    # addopts cleared: the notebooks' nbval plugin need not be installed on a GPU machine
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    tests = [*pytest, "-v", *GPU_TESTS]
    if dry_run:  # the unit tests include this script's own test: collect, do not run
        suite = [*pytest, "--collect-only", "tests"]
    else:
        workers = ["-n", "8"] if importlib.util.find_spec("xdist") else []
        # not the GPU tests (the first step ran them) nor this script's own dry run (a minute
        # and a half of the budget for a CPU check)
        own = "tests/test_gpu_session.py::test_the_dry_run_runs_every_step_and_writes_what_it_measured"
        ignored = [f"--ignore={path}" for path in GPU_TESTS]
        suite = [*pytest, *workers, *ignored, "--deselect", own, "tests"]
    return [
        ("tests", tests),
        ("bench", bench),
        ("frontier", frontier),
        ("train", train),
        ("roofline", roofline),
        ("suite", suite),
    ]


def run_step(name: str, command: list[str], env: dict, timeout_s: float | None = None) -> dict:
    """Run one step in its own process group; past `timeout_s` the group is killed."""
    print(f"== {name} (at most {timeout_s or 0:.0f} s): {' '.join(command)}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its children (compile workers, pytest's) die with it
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        timed_out = True
    seconds = time.perf_counter() - start
    print(output[-3000:], flush=True)
    ending = "stopped: out of time" if timed_out else f"exit {process.returncode}"
    print(f"   {name}: {ending} in {seconds:.0f} s", flush=True)
    return dict(
        step=name,
        command=" ".join(command),
        seconds=round(seconds, 1),
        returncode=process.returncode,
        timed_out=timed_out,
        output_tail=output[-6000:],
    )


def step_timeout(name: str, names: list[str], left_s: float, budget_s: float) -> float:
    """`name`'s time: what is left of the budget less the shares kept for the steps after it."""
    later = names[names.index(name) + 1 :]
    kept = budget_s * sum(SHARES[n] for n in later) / sum(SHARES[n] for n in names)
    return max(left_s - kept, 1.0)


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
        "--only", nargs="+", help="run only these steps (tests bench frontier train roofline suite)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds for all the steps (default 520; a dry run's 1800, for a busy CPU)",
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

    from course_lib import data
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
        corpus=data.load_corpus("pystdlib").describe(),
        protocol=(
            "scripts/gpu_session.py: each step a separate process, timed by wall clock; the "
            "benchmark's own protocol is in its JSON (warm-up, repeats, CUDA-synchronised "
            "timers, compile time apart), as is the frontier's; the training run is ar-small's "
            "preset cut to 300 steps, tokens/s from its history; each step stopped when its "
            "share of the budget (plus what earlier steps left) is spent"
            + (
                " (dry run: CPU, smoke shapes, two frontier samples per row, ar-tiny for 3 "
                "steps, no compile, the unit tests only collected)"
                if args.dry_run
                else ""
            )
        ),
        steps=[],
    )
    path = out / f"gpu-session-{session['kind']}.json"
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-session-train-"))  # the checkpoint stays out
    chosen = [
        (name, command)
        for name, command in steps(sys.executable, out, run_dir, args.dry_run)
        if not args.only or name in args.only
    ]
    names = [name for name, _ in chosen]
    budget = args.budget or (1800.0 if args.dry_run else 520.0)
    deadline = time.perf_counter() + budget
    session["budget_s"] = budget
    for name, command in chosen:
        timeout_s = step_timeout(name, names, deadline - time.perf_counter(), budget)
        row = run_step(name, command, child_env, timeout_s)
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
