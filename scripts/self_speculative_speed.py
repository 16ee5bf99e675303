"""Self-speculative and draft-tree block diffusion against the optimized AR decoder, timed in
turns.

The frontier times each row once, one row after another, and the same row timed in two runs can
differ by several percent (the frontier file's AR row against its `merged` line's). A verdict
that rests on a ratio of speeds deserves a steadier measurement: here AR (`fast.FastARDecoder`
at its last CPU stage, the frontier's; and, on a CPU with fast bfloat16, the same decoder in
bfloat16, so that AR is offered what the draft tree uses), speculative AR (the frontier's,
drafts of 2 and 4 from ar-draft) and each block-diffusion model's samplers
(`self_speculative.SelfSpeculativeSampler` on prepacked weights and
`draft_tree.DraftTreeSampler` in bfloat16 where the CPU has it, the frontier's) write whole
sequences of the context's length, batch 1, **in turns** (AR, model 1, model 2, ..., AR, ...),
so that a slow minute of the machine slows them all. Each call is timed in process CPU seconds
on one thread; a row's speed is its tokens over the median call time of `--rounds` turns (after
one warm-up call each), and its ratio to AR is taken turn by turn (the median over turns).
Seeds are the same for every row in a turn.

    python scripts/self_speculative_speed.py [--rounds 16] [--temperature 0.9] [--out FILE]

AR runs at `--ar-temperature` (default 1.0, the quality reference's), each block-diffusion
model at the temperature `--models` gives it (NAME:T; default: where notebook 12's frontier
matched its rows), else at `--temperature`; the trees are the frontier's (`--trees 6,2 6,3`).

It prints the machine and, per row, tokens per forward, positions per forward, tokens/s and the
ratio to AR (the frontier's, float32), to the faster AR and to the faster speculative AR, and
writes them to data/results/self-speculative-speed-cpu.json.
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

from course_lib import (  # noqa: E402
    checkpoints,
    draft_tree,
    env,
    fast,
    frontier_sampling,
    self_speculative,
    speculative,
)

# each at the temperature of its matched rows in notebook 12's frontier
MODELS = (
    "bd3lm-ar-b2:0.9",
    "bd3lm-ar-b2-more:0.95",
    "bd3lm-ar-b2-look:0.95",
    "bd3lm-ar-b2-look2:0.95",
    "bd3lm-ar-b4-more:0.9",
    "bd3lm-ar-b4-more2:0.9",
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument(
        "--temperature", type=float, default=0.9, help="a diffusion model's, unless NAME:T says"
    )
    parser.add_argument("--ar-temperature", type=float, default=1.0, help="AR's (the reference's)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="NAME or NAME:T")
    parser.add_argument(
        "--trees", nargs="+", default=["6,2", "6,3"], help="draft trees, SIZE,DEPTH each"
    )
    parser.add_argument(
        "--out", default=str(env.DATA_DIR / "results" / "self-speculative-speed-cpu.json")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    folder = env.DATA_DIR / "checkpoints"
    ar = checkpoints.load_checkpoint(folder / "ar-small.pt")
    length = ar.config.context_len
    calls = _ar_calls(ar, args.ar_temperature)
    trees = [tuple(int(v) for v in tree.split(",")) for tree in args.trees]
    for entry in args.models:
        name, _, temperature = entry.partition(":")
        model = checkpoints.load_checkpoint(folder / f"{name}.pt")
        temperature = float(temperature) if temperature else args.temperature
        calls |= _diffusion_calls(name, model, temperature, trees, length)
    for call in calls.values():
        call(-1)  # warm-up
    seconds = {key: [] for key in calls}
    counts = {key: [0, 0, 0] for key in calls}  # tokens, forwards, positions
    for turn in range(args.rounds):
        for key, call in calls.items():
            start = time.process_time()
            done = call(turn)
            seconds[key].append(time.process_time() - start)
            counts[key] = [a + b for a, b in zip(counts[key], done, strict=True)]
    machine = env.describe_environment(torch.device("cpu"))
    print(
        f"{machine['processor']}, bf16 units: {machine['cpu_bf16_units']}, torch "
        f"{machine['torch']}, one thread, {args.rounds} turns"
    )
    rows = _rows(calls, seconds, counts, args.rounds)
    print(
        f"{'row':<62}{'tok/fwd':>8}{'pos/fwd':>8}{'tok/s':>7}{'x AR':>7}{'x faster AR':>12}"
        f"{'x spec. AR':>11}"
    )
    for row in rows:
        label = f"{row['model']} {row['sampler']} {row['setting']} ({row['precision']})"
        print(
            f"{label:<62}{row['tokens_per_forward']:>8.2f}{row['positions_per_forward']:>8.1f}"
            f"{row['tokens_per_s']:>7.0f}{row['speedup_vs_ar']:>7.2f}"
            f"{row['speedup_vs_fastest_ar']:>12.2f}{row['speedup_vs_speculative']:>11.2f}"
        )
    result = {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": machine,
        "protocol": " ".join(__doc__.split("\n\n")[1].split())
        + f" Models: {' '.join(args.models)} (NAME:temperature; AR: {args.ar_temperature}), "
        f"{args.rounds} turns, {length} tokens per call, draft trees (size, depth): "
        f"{' '.join(args.trees)}.",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {env.shown_path(Path(args.out))}")
    return 0


def _ar_calls(ar, temperature) -> dict:
    """AR's decoder at the frontier's stage (float32), in bfloat16 where that is fast, and
    speculative AR as the frontier runs it (`speculative.sample_speculative`, ar-draft)."""
    length = ar.config.context_len
    stages = {"float32": fast.final_stage(fast.stages_for("cpu", fast.AR_STAGES))[1]}
    if fast.cpu_bf16_stage(fast.AR_STAGES) is not None:
        stages["bfloat16"] = fast.cpu_bf16_stage(fast.AR_STAGES)[1]
    newline = torch.ones(1, 1, dtype=torch.long)
    calls = {}
    for precision, stage in stages.items():
        decoder = fast.FastARDecoder(ar, options=stage)

        def call(seed, decoder=decoder):
            generator = torch.Generator().manual_seed(seed)
            decoder(
                prompt=newline, n_tokens=length - 1, temperature=temperature, generator=generator
            )
            return length - 1, length - 1, 0

        calls[("ar-small", "ar", precision, f"T={temperature}")] = call
    draft = checkpoints.load_checkpoint(env.DATA_DIR / "checkpoints" / "ar-draft.pt")
    prompt = torch.ones(1, dtype=torch.long)
    for draft_len in (2, 4):  # the frontier's speculative rows

        def call(seed, draft_len=draft_len):
            out = speculative.sample_speculative(
                ar,
                draft,
                prompt=prompt,
                n_tokens=length - 1,
                draft_len=draft_len,
                temperature=temperature,
                generator=torch.Generator().manual_seed(seed),
            )
            return out.n_tokens, out.target_forwards, 0

        calls[("ar-small", "speculative", "float32", f"draft={draft_len} T={temperature}")] = call
    return calls


def _diffusion_calls(name, model, temperature, trees, length) -> dict:
    """The model's self-speculative sampler and its draft trees, on the copies the frontier
    runs them on (`frontier_sampling.self_speculative_model`, `draft_tree_model`)."""
    packed = frontier_sampling.self_speculative_model(model)
    tree_model = frontier_sampling.draft_tree_model(model)
    precision = str(tree_model.token_emb.weight.dtype).removeprefix("torch.")
    samplers = {
        (name, "self_speculative", "float32", f"T={temperature}"): (
            self_speculative.SelfSpeculativeSampler(packed, length=length)
        )
    }
    for size, depth in trees:
        key = (name, "draft_tree", precision, f"tree={size} depth={depth} T={temperature}")
        samplers[key] = draft_tree.DraftTreeSampler(
            tree_model, length=length, tree_size=size, depth=depth
        )
    calls = {}
    for key, sampler in samplers.items():

        def call(seed, sampler=sampler):
            generator = torch.Generator().manual_seed(seed)
            out = sampler(temperature=temperature, generator=generator)
            return out.n_generated, out.nfe, out.positions

        calls[key] = call
    return calls


def _rows(calls, seconds, counts, rounds) -> list[dict]:
    ar_key = next(iter(calls))  # the frontier's AR: float32, the first call
    ar_tokens = counts[ar_key][0] / rounds  # AR writes length - 1 tokens a call, the others

    def fastest(sampler):  # length: ratios are per token, not per call
        own = [k for k in calls if k[1] == sampler]
        return min(own, key=lambda k: statistics.median(seconds[k]) / counts[k][0])

    def ratio(key, baseline):
        turns = zip(seconds[baseline], seconds[key], strict=True)
        per_call = statistics.median(a / s for a, s in turns)
        return per_call * (counts[key][0] / rounds) / ar_tokens

    rows = []
    for key in calls:
        tokens, forwards, positions = counts[key]
        rows.append(
            {
                "model": key[0],
                "sampler": key[1],
                "precision": key[2],
                "setting": key[3],
                "tokens_per_forward": tokens / forwards,
                "positions_per_forward": positions / forwards if positions else 1.0,
                "tokens_per_s": tokens / rounds / statistics.median(seconds[key]),
                "speedup_vs_ar": ratio(key, ar_key),
                "speedup_vs_fastest_ar": ratio(key, fastest("ar")),
                "speedup_vs_speculative": ratio(key, fastest("speculative")),
                "call_seconds": seconds[key],
            }
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
