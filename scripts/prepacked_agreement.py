"""How often does `prepacked_weights` change the tokens? (for maintainers; notebook 09, 4.8)

`prepacked_weights` reorders float32 sums, so its tokens are checked, not assumed. For the
shipped bd3lm-small, and for a random-init model of its shape with learned positions (the kind
the benchmarks time), this script counts how many sampler calls write exactly the reference's
tokens with that stage, and with the stage before it (`skip_unchanged`, the reference's
arithmetic) for comparison. It also prints how close the confidences of an unprompted first
block are: the ties behind most of the changes. It writes everything it prints, with the
machine and the protocol, to data/results/prepacked-agreement.json, which notebook 09 reads.

    python scripts/prepacked_agreement.py                    # 50 calls of batch 4 per setting
    python scripts/prepacked_agreement.py --calls 10 --settings margin-16 margin-4 --out agreement.json

About 15 minutes in all at 12 calls (the committed results), on one CPU thread; 50 calls take
four times as long.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import checkpoints, env, fast, sampling  # noqa: E402
from course_lib.model import ModelConfig, Transformer  # noqa: E402

LENGTH, BATCH = 128, 4
SETTINGS = {  # name -> the sampler's arguments
    "margin-16": dict(steps_per_block=16, confidence="margin"),
    "low_confidence-16": dict(steps_per_block=16),
    "margin-4": dict(steps_per_block=4, confidence="margin"),
    "threshold-16": dict(steps_per_block=16, strategy="threshold", threshold=0.9),
    "ancestral-16": dict(steps_per_block=16, strategy="ancestral"),
}


def first_block_spread(model: Transformer) -> float:
    """Largest minus smallest margin confidence over an all-masked first block."""
    ids = torch.full((1, model.config.block_len), model.mask_id)
    with torch.inference_mode():
        probs = sampling.logits_to_probs(model(ids), 1.0)
    margin = sampling.position_confidence(probs, probs.argmax(-1), "margin")
    return (margin.max() - margin.min()).item()


def agreement(model: Transformer, settings: dict, calls: int, stages: tuple) -> dict:
    """stage -> (calls with exactly the reference's tokens, share of tokens equal)."""
    samplers = {
        stage: fast.FastDiffusionSampler(
            model, length=LENGTH, batch_size=BATCH, options=dict(fast.stages_for("cpu"))[stage]
        )
        for stage in stages
    }
    counts = {stage: [0, 0] for stage in stages}
    for seed in range(calls):
        ref = fast.reference_sample_diffusion(
            model,
            length=LENGTH,
            batch_size=BATCH,
            generator=torch.Generator().manual_seed(seed),
            **settings,
        )
        for stage, sampler in samplers.items():
            out = sampler(generator=torch.Generator().manual_seed(seed), **settings)
            counts[stage][0] += torch.equal(out.tokens, ref.tokens)
            counts[stage][1] += (out.tokens == ref.tokens).sum().item()
    return {
        stage: (same, equal / (calls * ref.tokens.numel()))
        for stage, (same, equal) in counts.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="seeds per setting (batch 4 each)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "data" / "results" / "prepacked-agreement.json",
        help="where the JSON goes",
    )
    args = parser.parse_args()
    if fast.packing_problem():
        sys.exit(f"prepacked_weights cannot run here: {fast.packing_problem()}")
    torch.set_num_threads(1)
    trained = checkpoints.load_checkpoint(ROOT / "data" / "checkpoints" / "bd3lm-small.pt")
    torch.manual_seed(0)
    # the benchmark's kind of model: random weights and learned positions
    learned = ModelConfig(**{**trained.config.to_dict(), "position": "learned"})
    models = {"bd3lm-small.pt": trained.eval(), "random, learned pos.": Transformer(learned).eval()}
    spreads = {name: first_block_spread(model) for name, model in models.items()}
    for name, spread in spreads.items():
        print(f"{name}: margins of an unprompted first block span {spread:.1e}")
    rows = []
    print(f"{args.calls} calls of batch {BATCH}, {LENGTH} tokens each; one torch thread")
    print(
        f"{'model':<24} {'setting':<18} {'stage':<18} {'identical calls':>15} {'tokens equal':>13}"
    )
    for name, model in models.items():
        for setting in args.settings:
            stages = ("skip_unchanged", "prepacked_weights")
            for stage, (same, share) in agreement(
                model, SETTINGS[setting], args.calls, stages
            ).items():
                print(
                    f"{name:<24} {setting:<18} {stage:<18} {f'{same}/{args.calls}':>15} "
                    f"{share:>13.2%}",
                    flush=True,
                )
                rows.append(
                    dict(
                        model=name,
                        setting=setting,
                        sampler_arguments=SETTINGS[setting],
                        stage=stage,
                        identical_calls=same,
                        calls=args.calls,
                        share_of_tokens_equal=share,
                    )
                )
    protocol = (
        f"{args.calls} seeds per setting, each one call of batch {BATCH} and {LENGTH} tokens, "
        "unprompted; a call counts as identical when every token equals the reference sampler's "
        "(fast.reference_sample_diffusion, same seed); one torch thread"
    )
    result = dict(
        protocol=protocol,
        environment=env.describe_environment("cpu"),
        first_block_margin_spread=spreads,
        rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
