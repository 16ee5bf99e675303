"""The frontier's settings and how each is sampled (notebook 12): a `Setting` names a
checkpoint, a sampler and its knobs; `default_settings` lists the frontier's; `draw_samples`
draws a setting's samples at batch 1 with the optimized samplers and times them.
`frontier` re-exports these names (`frontier.Setting` is this module's `Setting`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from course_lib import env
from course_lib.model import ModelConfig, Transformer, device_and_dtype


@dataclass(frozen=True)
class Setting:
    """One frontier row's recipe: a checkpoint, a sampler and its knobs."""

    model: str
    sampler: str  # "ar", "speculative", or one of frontier.DIFFUSION_SAMPLERS
    setting: dict = field(default_factory=dict)

    def label(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in self.setting.items())
        return f"{self.model} {self.sampler} ({knobs})"


def default_settings(
    diffusion_models: dict[str, ModelConfig],
    *,
    ar: str = "ar-small",
    draft: str | None = "ar-draft",
    tokens_per_step: Sequence[int] = (1, 2, 4, 8),
    thresholds: Sequence[float] = (0.9, 0.7, 0.5),
    draft_lens: Sequence[int] = (2, 4),
    self_speculative_temperatures: Sequence[float] = (1.0, 0.95, 0.9),
    draft_trees: Sequence[tuple[int, int]] = ((6, 2), (6, 3)),
) -> list[Setting]:
    """AR at temperatures 1.0 and 0.8, speculative AR, and every diffusion model under
    confidence, threshold and ancestral decoding at several tokens per forward; a block-causal
    model without the next-token shift also read left to right and sampled self-speculatively
    (`self_speculative`), drafting to its block's end and, in longer blocks, 1 or 3 at a time,
    at `self_speculative_temperatures`: its law is exact, so only a temperature can move
    its quality, and a model a little flatter than AR needs one a little below 1. The same
    law is sampled by trees of guesses too (`draft_tree`, each of `draft_trees` a (tree size,
    depth): the shallower one the fastest on this course's CPU, the deeper one more tokens per
    forward), at the same temperatures."""
    settings = [Setting(ar, "ar", {"temperature": t}) for t in (1.0, 0.8)]
    if draft is not None:
        settings += [
            Setting(ar, "speculative", {"draft": draft, "draft_len": n, "temperature": 1.0})
            for n in draft_lens
        ]
    for name, config in diffusion_models.items():
        block = config.block_len or config.context_len
        steps = [block // k for k in tokens_per_step if block % k == 0 and k <= block]
        # block-causal models: each setting also with the commit fused into the next forward
        # (the fast sampler, which fuses, does not yet decode a next-token-shift model)
        fusable = config.attention == "block_causal" and not config.next_token_shift
        commits = [{}, {"fuse_commit": True}] if fusable else [{}]
        for commit in commits:
            settings += [
                Setting(
                    name, "confidence", {"steps_per_block": s, "confidence": "margin", **commit}
                )
                for s in steps
            ]
            settings += [
                Setting(
                    name,
                    "threshold",
                    {"steps_per_block": block, "threshold": t, "confidence": "margin", **commit},
                )
                for t in thresholds
            ]
            settings += [
                Setting(name, "ancestral", {"steps_per_block": s, **commit}) for s in steps[:3]
            ]
        if fusable:  # its exact left-to-right law, a little cooler too: (1.0, 0.95, 0.9)
            caps = [{"max_drafts": n} for n in (1, 3) if n < block - 1] + [{}]
            settings += [
                Setting(name, "self_speculative", {**cap, "temperature": t})
                for t in self_speculative_temperatures
                for cap in caps
            ]
            settings += [
                Setting(name, "draft_tree", {"tree_size": size, "depth": depth, "temperature": t})
                for t in self_speculative_temperatures
                for size, depth in draft_trees
            ]
    return settings


@dataclass
class Draws:
    """What the batch-1 calls of one setting wrote and cost."""

    tokens: torch.Tensor  # (n, L)
    prompt_len: int
    n_tokens: int = 0  # written, all calls
    forwards: int = 0  # of the model (target)
    draft_forwards: int = 0
    positions: int = 0  # the model read, all forwards (self-speculative and draft-tree rows)
    seconds: float = 0.0  # all timed calls: CPU seconds on a CPU, wall seconds on a GPU


def draw_samples(
    setting: Setting, models: dict[str, Transformer], n_samples: int, seed: int = 0
) -> Draws:
    """Sample `n_samples` sequences, one call each, after one untimed warm-up call."""
    device, _ = device_and_dtype(models[setting.model])
    call, prompt_len = _sampler_call(setting, models)
    rows, written, forwards, draft_forwards, positions, seconds = [], 0, 0, 0, 0, 0.0
    # on a CPU, process time is steadier than wall time beside other jobs (not immune: a
    # job on the other core moved it by a quarter once); a GPU works while the host waits
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    call(torch.Generator(device=device).manual_seed(seed - 1))  # warm-up, untimed
    for i in range(n_samples):
        generator = torch.Generator(device=device).manual_seed(seed + i)
        env.synchronize(device)
        start = clock()
        tokens, n, f, d, p = call(generator)
        env.synchronize(device)
        seconds += clock() - start
        rows.append(tokens.cpu())
        written, forwards, draft_forwards = written + n, forwards + f, draft_forwards + d
        positions += p
    return Draws(
        torch.stack(rows), prompt_len, written, forwards, draft_forwards, positions, seconds
    )


def _sampler_call(setting: Setting, models: dict[str, Transformer]) -> tuple[Callable, int]:
    """(call, prompt length) for `draw_samples`: call(generator) writes one sample and returns
    (tokens, tokens written, forwards, draft forwards, positions read)."""
    from course_lib import fast, sampling, speculative

    model = models[setting.model]
    device, _ = device_and_dtype(model)
    L = model.config.context_len
    knobs = dict(setting.setting)
    if setting.sampler == "ar":
        stage = _last_stage(device, fast.AR_STAGES)
        decoder = fast.FastARDecoder(model, options=stage)
        prompt = torch.ones(1, 1, dtype=torch.long, device=device)  # a newline

        def call(generator):
            out = decoder(prompt=prompt, n_tokens=L - 1, generator=generator, **knobs)
            return out[0], L - 1, L - 1, 0, 0

        prompt_len = 1
    elif setting.sampler == "speculative":
        draft = models[knobs.pop("draft")]
        prompt = torch.ones(1, dtype=torch.long, device=device)

        def call(generator):
            out = speculative.sample_speculative(
                model, draft, prompt=prompt, n_tokens=L - 1, generator=generator, **knobs
            )
            return out.tokens[0], out.n_tokens, out.target_forwards, out.draft_forwards, 0

        prompt_len = 1
    elif setting.sampler == "self_speculative":
        return _self_speculative_call(model, knobs), 0
    elif setting.sampler == "draft_tree":
        return _draft_tree_call(model, knobs), 0
    elif model.config.next_token_shift:  # the reference block sampler, from a newline
        prompt = torch.ones(1, dtype=torch.long, device=device)
        block_len = model.config.block_len

        def call(generator):
            out = sampling.sample_block_diffusion(
                model,
                length=L,
                block_len=block_len,
                strategy=setting.sampler,
                prompt=prompt,
                generator=generator,
                **knobs,
            )
            return out.tokens[0], out.n_generated, out.nfe, 0, 0

        prompt_len = 1
    else:
        stage = _last_stage(device, fast.DIFFUSION_STAGES)
        if setting.sampler != "confidence":  # a fixed step count would cost the forwards
            stage = replace(stage, no_host_reads=False)  # that finishing early saves
        sampler = fast.FastDiffusionSampler(model, length=L, options=stage)
        strategy = "confidence" if setting.sampler == "confidence" else setting.sampler

        def call(generator):
            out = sampler(strategy=strategy, generator=generator, **knobs)
            return out.tokens[0], out.n_generated, out.nfe, 0, 0

        prompt_len = 0
    return call, prompt_len


def self_speculative_model(model: Transformer) -> Transformer:
    """The copy of `model` the frontier's self-speculative rows run on: prepacked weights on a
    CPU, as the other optimized samplers have there (scripts/self_speculative_speed.py too)."""
    from course_lib import fast, fast_forward

    device, _ = device_and_dtype(model)
    if device.type == "cpu" and _last_stage(device, fast.DIFFUSION_STAGES).prepacked_weights:
        return fast_forward.prepack_weights(model, rows=4 * model.config.block_len)
    return model


def draft_tree_model(model: Transformer) -> Transformer:
    """The copy of `model` the frontier's draft-tree rows run on. Their price is positions,
    which a matmul in bfloat16 makes cheap: where the device has bfloat16 (`fast.half_dtype`:
    a CPU with bfloat16 units, most GPUs) the rows run in it; on a CPU, prepacked as the
    self-speculative rows. bfloat16 moves the logits in their third digit: the row's own
    samples are judged, as every row's."""
    from course_lib import fast, fast_forward

    device, _ = device_and_dtype(model)
    if fast.half_dtype(device) == torch.bfloat16:
        model = copy.deepcopy(model).to(torch.bfloat16)
    if device.type == "cpu" and _last_stage(device, fast.DIFFUSION_STAGES).prepacked_weights:
        model = fast_forward.prepack_weights(model, rows=8 * model.config.block_len)
    return model


def _self_speculative_call(model: Transformer, knobs: dict) -> Callable:
    """`self_speculative`'s sampler for `_sampler_call`."""
    from course_lib import self_speculative

    drafts = knobs.pop("max_drafts", None)
    sampler = self_speculative.SelfSpeculativeSampler(
        self_speculative_model(model), length=model.config.context_len, max_drafts=drafts
    )
    return _rounds_call(sampler, knobs)


def _draft_tree_call(model: Transformer, knobs: dict) -> Callable:
    """`draft_tree`'s sampler for `_sampler_call`."""
    from course_lib import draft_tree

    size, depth = knobs.pop("tree_size"), knobs.pop("depth")
    sampler = draft_tree.DraftTreeSampler(
        draft_tree_model(model), length=model.config.context_len, tree_size=size, depth=depth
    )
    return _rounds_call(sampler, knobs)


def _rounds_call(sampler, knobs: dict) -> Callable:
    """A `_sampler_call` call of a sampler that reads rows in rounds (self_speculative,
    draft_tree): its forwards are its rounds, and it counts the positions they read."""

    def call(generator):
        out = sampler(generator=generator, **knobs)
        return out.tokens[0], out.n_generated, out.nfe, 0, out.positions

    return call


def _last_stage(device: torch.device, stages: list):
    """The optimized sampler's last stage that runs here, compile left out (it has its own rows)."""
    from course_lib import fast

    return fast.final_stage(fast.stages_for(device, stages))[1]
