"""Self-speculative block diffusion against the optimized AR decoder, timed in turns.

The frontier times each row once, one row after another, and on this CPU two rows of the same
sampler can differ by 10-20% (AR at temperatures 1.0 and 0.8, say). A verdict that rests on a
ratio of speeds deserves a steadier measurement: here AR (`fast.FastARDecoder` at its last
CPU stage, the frontier's) and each block-diffusion model's self-speculative sampler
(`self_speculative.SelfSpeculativeSampler` on prepacked weights, the frontier's) write whole
sequences of the context's length, batch 1, **in turns** (AR, model 1, model 2, ..., AR, ...),
so that a slow minute of the machine slows them all. Each call is timed in process CPU seconds
on one thread; a row's speed is its tokens over the median call time of `--rounds` turns
(after one warm-up call each), and its ratio to AR is taken turn by turn (the median over
turns). Seeds are the same for every model in a turn.

    python scripts/self_speculative_speed.py [--rounds 16] [--temperature 0.9] [--out FILE]

AR runs at `--ar-temperature` (default 1.0, the quality reference's), the block-diffusion models
at `--temperature` (default 0.9, where notebook 12's frontier finds them matched).

It prints the machine and, per model, tokens per forward, positions per forward, tokens/s and
the ratio to AR, and writes them to data/results/self-speculative-speed-cpu.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import checkpoints, env, fast, fast_forward, self_speculative  # noqa: E402

MODELS = ("bd3lm-ar-b2", "bd3lm-ar-b2-more", "bd3lm-ar-b4-more", "bd3lm-ar-b4-more2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.9, help="the diffusion models'")
    parser.add_argument("--ar-temperature", type=float, default=1.0, help="AR's (the reference's)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument(
        "--out", default=str(env.DATA_DIR / "results" / "self-speculative-speed-cpu.json")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    folder = env.DATA_DIR / "checkpoints"
    ar = checkpoints.load_checkpoint(folder / "ar-small.pt")
    length = ar.config.context_len
    stage = fast.final_stage(fast.stages_for(device, fast.AR_STAGES))[1]
    decoder = fast.FastARDecoder(ar, options=stage)
    newline = torch.ones(1, 1, dtype=torch.long)

    def ar_call(seed):
        decoder(
            prompt=newline,
            n_tokens=length - 1,
            temperature=args.ar_temperature,
            generator=torch.Generator().manual_seed(seed),
        )
        return length - 1, length - 1, 0

    calls = {"ar-small": ar_call}
    for name in args.models:
        model = checkpoints.load_checkpoint(folder / f"{name}.pt")
        if fast_forward.packing_problem() is None:
            model = fast_forward.prepack_weights(model, rows=4 * model.config.block_len)
        sampler = self_speculative.SelfSpeculativeSampler(model, length=length)

        def call(seed, sampler=sampler):
            out = sampler(
                temperature=args.temperature, generator=torch.Generator().manual_seed(seed)
            )
            return out.n_generated, out.nfe, out.positions

        calls[name] = call
    for call in calls.values():
        call(-1)  # warm-up
    seconds = {name: [] for name in calls}
    counts = {name: [0, 0, 0] for name in calls}  # tokens, forwards, positions
    for turn in range(args.rounds):
        for name, call in calls.items():
            start = time.process_time()
            done = call(turn)
            seconds[name].append(time.process_time() - start)
            counts[name] = [a + b for a, b in zip(counts[name], done, strict=True)]
    rows = []
    ar_s = seconds["ar-small"]
    machine = env.describe_environment(device)
    print(
        f"{machine['processor']}, bf16 units: {machine['cpu_bf16_units']}, torch "
        f"{machine['torch']}, one thread, temperature {args.temperature} (AR: "
        f"{args.ar_temperature}), {args.rounds} turns"
    )
    print(f"{'model':<20}{'tok/fwd':>8}{'pos/fwd':>8}{'tok/s':>7}{'x AR (median of turns)':>24}")
    for name in calls:
        tokens, forwards, positions = counts[name]
        per_call = tokens / args.rounds
        ratio = statistics.median(a / s for a, s in zip(ar_s, seconds[name], strict=True))
        if name == "ar-small":
            ratio = 1.0
        row = {
            "model": name,
            "sampler": "ar" if name == "ar-small" else "self_speculative",
            "tokens_per_forward": tokens / forwards,
            "positions_per_forward": positions / forwards if positions else 1.0,
            "tokens_per_s": per_call / statistics.median(seconds[name]),
            # AR writes length - 1 tokens a call, the others length: per token, not per call
            "speedup_vs_ar": ratio * per_call / (counts["ar-small"][0] / args.rounds),
            "call_seconds": seconds[name],
        }
        rows.append(row)
        print(
            f"{name:<20}{row['tokens_per_forward']:>8.2f}{row['positions_per_forward']:>8.1f}"
            f"{row['tokens_per_s']:>7.0f}{row['speedup_vs_ar']:>24.2f}"
        )
    result = {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": machine,
        "protocol": __doc__.split("\n\n")[1].replace("\n", " ")
        + f" Temperature {args.temperature} (AR: {args.ar_temperature}), {args.rounds} turns, "
        f"{length} tokens per call.",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {env.shown_path(Path(args.out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
