"""How much faster is the optimized sampler than a plain loop, for a bidirectional model?

Side by side in one process, on the course's 10.8M shape (6 layers, d=384, context 256) as a
bidirectional (MDLM) model with random weights, 256 tokens, batch 1, confidence decoding at
32 and 16 steps (8 and 16 tokens per step):

- plain loop: what a learner writes first. Every step runs one full float32 forward over all
  256 positions, turns the logits into probabilities, draws a token everywhere, and commits
  the most confident masked positions, as many as the step's share.
- plain loop, bfloat16: the same loop on a bfloat16 copy of the model (only where this CPU
  has bfloat16 units; elsewhere bfloat16 is emulated and many times slower).
- optimized: `fast.FastDiffusionSampler` at its last float32 CPU stage (the reference's
  tokens), the sampler notebook 09 builds.
- optimized, bfloat16: the same with `fast.cpu_bf16_stage()` (where this CPU's bfloat16 is
  measured fast): other tokens than float32's, so judge its text by quality.
- dual cache: Fast-dLLM's semi-autoregressive decoding in blocks of 4 steps each (the same
  steps in all: blocks of 32 at 32 steps, of 64 at 16), each block's first step running the
  whole sequence and
  the others the block alone against the cached keys and values of the prefix and the
  still-masked suffix. Approximate: the script then measures its error on the shipped
  mdlm-small (`sampling.prefix_cache_error`, against no cache) and the quality of its text
  (ar-small's perplexity of 16 samples, against the same decoding without a cache).

Times are process CPU seconds on one thread (steady on a shared machine), the median of
`--repeats` calls after a warm-up. It prints the machine, each row's tokens/s and its speed-up
over the plain loop.

    python scripts/bidirectional_speedup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import bench, checkpoints, env, fast, metrics, sampling  # noqa: E402
from course_lib.model import ModelConfig, Transformer  # noqa: E402

SHAPE = dict(context_len=256, n_layer=6, n_head=6, d_model=384)  # the 10.8M shape
STEPS_PER_BLOCK = 4  # the dual cache's blocks: one whole-sequence forward, three of the block


@torch.inference_mode()
def plain_loop(model: Transformer, length: int, steps: int, seed: int = 0) -> torch.Tensor:
    """Full forward per step, commit the top-k confident masked positions: (1, length) ids."""
    generator = torch.Generator().manual_seed(seed)
    mask_id = model.mask_id
    x = torch.full((1, length), mask_id)
    per_step = length // steps
    for _ in range(steps):
        logits = model(x).float()  # (1, L, V)
        probs = torch.softmax(logits, dim=-1)
        proposal = torch.multinomial(probs[0], 1, generator=generator).T  # (1, L)
        conf = probs.gather(-1, proposal.unsqueeze(-1)).squeeze(-1)  # (1, L)
        conf = conf.masked_fill(x != mask_id, -1.0)
        top = conf.topk(per_step, dim=-1).indices  # (1, k)
        x.scatter_(1, top, proposal.gather(1, top))
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**SHAPE, attention="bidirectional")).eval()
    length = SHAPE["context_len"]
    info = env.describe_environment("cpu")
    print(
        f"{info['processor']}; bfloat16 units: {info['cpu_bf16_units']}; torch {info['torch']}; "
        f"one thread; process CPU time, median of {args.repeats} calls after a warm-up"
    )
    print(
        f"bidirectional {model.num_params() / 1e6:.1f}M parameters (6 x 384), {length} tokens, "
        "batch 1, confidence decoding"
    )
    half = None
    if env.cpu_has_bf16_units():
        half = Transformer(model.config).eval()
        half.load_state_dict(model.state_dict())
        half = half.to(torch.bfloat16)
    stage_name, options = fast.final_stage(fast.stages_for("cpu"))
    samplers = {
        f"optimized ({stage_name})": fast.FastDiffusionSampler(
            model, length=length, options=options
        )
    }
    if fast.cpu_bf16_stage() is not None:
        samplers["optimized, bfloat16"] = fast.FastDiffusionSampler(
            model, length=length, options=fast.cpu_bf16_stage()[1]
        )
    dual_options = {"dual cache": options}
    if fast.cpu_bf16_stage() is not None:
        dual_options["dual cache, bfloat16"] = fast.cpu_bf16_stage()[1]

    def timed(fn) -> float:
        return bench.time_fn(fn, warmup=1, repeats=args.repeats, clock=time.process_time).median_s

    for steps in (32, 16):
        rows = [("plain loop, float32", lambda s=steps: plain_loop(model, length, s))]
        if half is not None:
            rows.append(("plain loop, bfloat16", lambda s=steps: plain_loop(half, length, s)))
        block = length * STEPS_PER_BLOCK // steps
        dual = {
            f"{name} (blocks of {block})": fast.FastDiffusionSampler(
                model, length=length, options=opts, block_len=block, approximate_cache="dual"
            )
            for name, opts in dual_options.items()
        }
        for name, sampler in {**samplers, **dual}.items():
            per_block = steps * sampler.block_len // length  # the same steps in all
            rows.append(
                (
                    name,
                    lambda s=per_block, f=sampler: f(
                        steps_per_block=s, generator=torch.Generator().manual_seed(0)
                    ),
                )
            )
        print(f"-- {steps} steps ({length // steps} tokens per step)")
        base = None
        for name, fn in rows:
            seconds = timed(fn)
            base = base or seconds
            print(f"{name:<36} {length / seconds:8.0f} tokens/s   x{base / seconds:.2f}")
    dual_cache_quality()


def dual_cache_quality(samples: int = 16) -> None:
    """The dual cache's error and its text's quality, on the shipped mdlm-small."""
    ckpt = ROOT / "data" / "checkpoints"
    mdlm = checkpoints.load_checkpoint(ckpt / "mdlm-small.pt")
    judge = checkpoints.load_checkpoint(ckpt / "ar-small.pt")
    length, block = mdlm.config.context_len, 32
    settings = dict(
        length=length, block_len=block, steps_per_block=STEPS_PER_BLOCK, confidence="margin"
    )
    print(
        f"-- mdlm-small, {length} tokens in blocks of {block}, {STEPS_PER_BLOCK} steps per "
        f"block (8 tokens per step), margin confidence; {samples} samples scored by ar-small"
    )
    for cache in (None, *sampling.APPROXIMATE_CACHES):
        out = sampling.sample_block_diffusion(
            mdlm,
            batch_size=samples,
            use_kv_cache=False,
            approximate_cache=cache,
            generator=torch.Generator().manual_seed(0),
            **settings,
        )
        line = f"{cache or 'no cache':<10} judged perplexity {metrics.generative_perplexity(out.tokens, judge):.2f}"
        if cache is not None:
            error = sampling.prefix_cache_error(
                mdlm, batch_size=4, approximate_cache=cache, **settings
            )
            line += (
                f"; KL to the exact logits {error.mean_kl:.4f} nats (reusing a block's first "
                f"logits: {error.stale_mean_kl:.4f}); same tokens as no cache "
                f"{error.token_agreement:.0%}"
            )
        print(line)


if __name__ == "__main__":
    main()
