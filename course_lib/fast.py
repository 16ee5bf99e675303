"""The optimized samplers (notebook 09): the reference's tokens, sooner.

Notebook 09 starts from the reference samplers of notebooks 03, 06 and 08
(`sampling.sample_block_diffusion(use_kv_cache=False)`, `sampling.sample_diffusion`,
`sampling.sample_ar(use_kv_cache=False)`), profiles them, and removes one cost at a time.
Each optimization is a switch of `DiffusionOptimizations` or `AROptimizations`;
`DIFFUSION_STAGES` and `AR_STAGES` turn them on one after another, so a notebook (or
`python -m course_lib bench`) can measure what each one buys.

The rule: an optimization may change how fast the tokens come, never which tokens. Every
stage draws the same random numbers as the reference, in the same order, and on a CPU in
float32 writes the same tokens for the same seed (tests/test_fast.py checks each stage).
bfloat16 changes the numerics, so on a GPU the bf16 stages are compared by the distribution
and quality of their text instead. torch.compile and prepacked_weights reorder float32 sums
(logits move in the last bits), so their tokens are checked, not assumed, and both switches
are off unless asked for. A last-bit change matters only at a near-tie between two tokens or
two positions' confidences, and confidence decoding meets ties by construction: in the first
block of an unprompted sample every position is masked, and a trained rotary model predicts
nearly the same distribution at each, so rounding noise picks the order.
`scripts/prepacked_agreement.py` counts how often that changes a sample's tokens
(data/results/prepacked-agreement.json; notebook 09, 4.8). The same ties make confidence
decoding's tokens depend on the machine's rounding.

The switches (`DiffusionOptimizations`, `AROptimizations`), what each one removes, the stages
that turn them on one at a time and which of them a device can run are in `fast_options`
(re-exported here).

A bidirectional model has no exact cache. `FastDiffusionSampler(..., block_len=b,
approximate_cache="dual")` decodes it in blocks with Fast-dLLM's dual cache: a block's first
step runs the whole sequence and keeps every position's keys and values, its other steps run
the block alone against them (stale for the prefix and the masked suffix). Its tokens are
those of the reference's own dual cache (`sampling.sample_block_diffusion`), not of the exact
sampler: `sampling.prefix_cache_error` measures the difference, and
scripts/bidirectional_speedup.py its speed against a plain loop.

The forwards those switches choose (prepacked weights, the static-cache forward, the CUDA
graph) are in `fast_forward`; this module holds the samplers.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable

import torch
import torch.nn as nn

from course_lib import diffusion, env, sampling
from course_lib.fast_forward import (  # noqa: F401 (re-exported: fast.static_forward, ...)
    GraphedStep,
    PackedLinear,
    _cache_of_length,
    packing_problem,
    prepack_weights,
    static_forward,
)
from course_lib.fast_options import (  # noqa: F401 (re-exported: fast.stages_for, ...)
    AR_STAGES,
    CPU_ONLY,
    CUDA_ONLY,
    DIFFUSION_STAGES,
    GPU_GAINS,
    AROptimizations,
    DiffusionOptimizations,
    _check_options,
    cpu_bf16_stage,
    final_stage,
    half_dtype,
    needs_cuda,
    stages_for,
)
from course_lib.model import Transformer, device_and_dtype, eval_mode

# the reference's own helpers: both samplers start from the same x_1 and draw the same numbers
from course_lib.sampling import (
    DiffusionSample,
    _initial_state,
    draw_uniforms,
    logits_to_probs,
    sample_categorical,
)
from course_lib.step_rules import categorical_from_uniforms


class _InFloat32(nn.Module):
    """A layer run in float32 whatever its input and any autocast (float16's logits)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.layer(x.float())


def _working_model(model: Transformer, options, rows: int) -> Transformer:
    """The model a sampler runs: with bf16, a 16-bit copy (`half_dtype`); with
    prepacked_weights, a copy whose weights are laid out for steps of `rows` rows (the
    caller's model stays as it is)."""
    if options.bf16:
        device, weights_dtype = device_and_dtype(model)
        dtype = half_dtype(device)
        if weights_dtype == dtype:
            return model
        working = copy.deepcopy(model).to(dtype)
        if dtype == torch.float16:  # float32 logits: the last norm and the head in float32
            working.ln_f, working.head = _InFloat32(working.ln_f), _InFloat32(working.head)
        return working
    if options.prepacked_weights:
        return prepack_weights(model, rows)
    return model


class Step:
    """The network call of one step, `(ids, positions) -> logits`, eager, compiled or graphed.

    `fn` runs under bf16 autocast if asked; with cuda_graphs one graph is captured per input
    shape (a denoising step and a prefill differ).
    """

    def __init__(self, fn: Callable, options, device: torch.device) -> None:
        self.options, self.device = options, device
        self.half = half_dtype(device) if options.bf16 else None
        self.fn = torch.compile(fn, fullgraph=True, dynamic=False) if options.compile else fn
        self.graphs: dict[tuple, GraphedStep] = {}

    def run(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The network, never graphed on its own (a whole step's graph captures it)."""
        # the autocast cache must be off while capturing a CUDA graph
        with env.autocast(self.device, self.half, cache_enabled=False):
            return self.fn(ids, positions)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if not self.options.cuda_graphs:
            return self.run(ids, positions)
        key = (tuple(ids.shape), tuple(positions.shape))
        if key not in self.graphs:
            self.graphs[key] = GraphedStep(self.run, ids, positions)
        return self.graphs[key](ids, positions)


def grad_mode(options):
    """The sampler's autograd mode: inference mode with the inference_mode switch."""
    return torch.inference_mode() if options.inference_mode else contextlib.nullcontext()


# -- the diffusion sampler ------------------------------------------------------------------


class FastDiffusionSampler:
    """The optimized (block) diffusion sampler for one model, batch size and length.

    A block-causal model is decoded block by block (`block_len` its own); a bidirectional
    one as one block of `length` (MDLM, notebook 06) unless `block_len` is given (semi-AR
    decoding, every step running the whole sequence). Keep the sampler to reuse its buffers
    (and its compiled step) across calls; `fast_sample_diffusion` makes one for a single call.
    Tokens equal the reference's (`reference_sample_diffusion`) for the same seed (with
    prepacked_weights or compile: checked, not assumed). With prepacked_weights it runs a
    packed copy of the weights: build a new sampler after the model's weights change.
    """

    def __init__(
        self,
        model: Transformer,
        *,
        length: int,
        block_len: int | None = None,
        batch_size: int = 1,
        options: DiffusionOptimizations | None = None,
        approximate_cache: str | None = None,
    ) -> None:
        self.options = options = options or DiffusionOptimizations()
        config = model.config
        if config.attention == "causal":
            raise ValueError("a causal model decodes one token at a time: use fast_sample_ar")
        if config.next_token_shift:
            raise ValueError(
                "the fast sampler does not yet decode a next-token-shift model: use "
                "sampling.sample_block_diffusion"
            )
        self.block_causal = config.attention == "block_causal"
        if block_len is None:
            block_len = config.block_len if self.block_causal else length
        sampling._check_block_inputs(model, length, block_len, 1, batch_size)
        # checks block_len, and that an approximate cache is for a bidirectional model
        mode = sampling._cache_mode(model, block_len, self.block_causal, approximate_cache)
        if mode == "approximate":
            raise ValueError("the fast sampler has the dual cache, approximate_cache='dual'")
        self.dual = mode == "dual"
        if self.dual and not (options.kv_cache and options.static_buffers):
            raise ValueError("the dual cache needs the options kv_cache and static_buffers")
        self.device, _ = device_and_dtype(model)
        _check_options(options, model)
        self.cached = self.block_causal and options.kv_cache
        rows = batch_size * (block_len if self.cached else length)  # per step, at most
        self.model = model = _working_model(model, options, rows)
        self.length, self.block_len, self.batch_size = length, block_len, batch_size
        self.cache = None
        if self.cached:
            self.cache = model.new_cache(batch_size)
        elif self.dual:  # every position of the sequence, and nothing beyond it
            self.cache = _cache_of_length(model.new_cache(batch_size), length)
        if (self.cached or self.dual) and options.static_buffers:
            self.step = Step(self._static_step, options, self.device)
        else:
            self.step = Step(self._plain_step, options, self.device)
        self.positions = torch.arange(length, device=self.device)
        self.whole_graphs: dict[tuple, GraphedStep] = {}  # whole_step's, kept across calls

    # the network: logits of the block [start, end) given the rest of x

    def _static_step(self, ids, positions):
        return static_forward(self.model, ids, positions, self.cache)

    def _plain_step(self, ids, positions):
        if self.cached:  # the model's own cached forward; the cache's length is the start
            return self.model(ids, cache=self.cache, update_cache=False)
        return self.model(ids)

    def scored(self, x, start, end, scored_from=None, refresh=False) -> tuple[torch.Tensor, int]:
        """Logits of every position the forward scored, and where the block starts in them."""
        ids, positions, offset = self.scored_inputs(x, start, end, scored_from, refresh)
        return self.step(ids, positions), offset

    def scored_inputs(self, x, start, end, scored_from=None, refresh=False):
        """(ids, positions, offset): what a step's forward runs, and where the block starts in it.

        With the cache, `scored_from` < `start` also scores the finished blocks from there on,
        which writes their keys and values: the commit, fused into this forward. With the
        dual cache, a block's first step (`refresh`) runs the whole sequence and caches every
        position; its other steps run the block alone against that cache.
        """
        if self.dual:
            if refresh:
                return x, self.positions, start
            return x[:, start:end], self.positions[start:end], 0
        if self.cached:
            lo = start if scored_from is None else scored_from
            return x[:, lo:end], self.positions[lo:end], start - lo
        if self.block_causal:  # the finished blocks again, then the block
            return x[:, :end], self.positions[:end], start
        return x, self.positions, start  # bidirectional: the whole sequence

    def commit_block(self, x, start, end) -> None:
        """Write the finished block's keys and values into the cache (one forward)."""
        if self.options.static_buffers:
            self.step(x[:, start:end], self.positions[start:end])
        else:
            self.model(x[:, start:end], cache=self.cache)

    def whole_step(
        self, x, start, end, update, numbers, temperature, scored_from=None, refresh=False
    ) -> torch.Tensor:
        """One step of the block [start, end) as one function of tensors (no_host_reads): the
        forward, the block's float64 probabilities and `update` (`confident_update` or
        `ancestral_update`, its settings bound by `functools.partial`), given the step's
        random `numbers` (tensors). Returns the block's new tokens (B, b); x is unchanged.

        It reads nothing back and allocates nothing the next step needs, so with cuda_graphs
        the whole step, network, sampling, step rule, cache write, is one CUDA graph per shape
        and setting, captured at its first use and replayed after: one launch a step.
        """
        ids, positions, offset = self.scored_inputs(x, start, end, scored_from, refresh)
        b = end - start
        fn = functools.partial(
            self._whole_step, offset=offset, b=b, temperature=temperature, update=update
        )
        inputs = (ids, positions, *numbers)
        if not self.options.cuda_graphs:
            return fn(*inputs)
        # what the graph freezes at capture: the shapes and every Python value fn reads
        shapes = tuple((tuple(t.shape), t.dtype) for t in inputs)
        settings = (offset, b, temperature, update.func, tuple(sorted(update.keywords.items())))
        key = (shapes, settings)
        if key not in self.whole_graphs:
            self.whole_graphs[key] = GraphedStep(fn, *inputs)
        return self.whole_graphs[key](*inputs)

    def _whole_step(self, ids, positions, *numbers, offset, b, temperature, update):
        logits = self.step.run(ids, positions)[:, offset : offset + b]
        return update(logits_to_probs(logits, temperature), ids[:, offset : offset + b], *numbers)

    def probs(self, x, start, end, temperature, scored_from=None, refresh=False) -> torch.Tensor:
        """float64 probabilities of the block's positions: (B, b, V)."""
        logits, offset = self.scored(x, start, end, scored_from, refresh)
        b = end - start
        if self.options.float64_only_where_needed:
            return logits_to_probs(logits[:, offset : offset + b], temperature)
        return logits_to_probs(logits, temperature)[:, offset : offset + b]

    # the sampler

    def __call__(
        self,
        *,
        steps_per_block: int,
        strategy: str = "confidence",
        threshold: float | None = None,
        prompt: torch.Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        schedule: str | diffusion.Schedule = "loglinear",
        confidence: str | None = None,
        fuse_commit: bool = False,
    ) -> DiffusionSample:
        """Sample (batch_size, length) tokens; the arguments as in `sample_block_diffusion`.

        `fuse_commit` (block-causal, with the cache and static buffers): instead of one forward
        that writes a finished block into the cache, score that block again in the next block's
        first forward, which writes it there. The block-causal mask gives its keys and values,
        and the next block's logits, exactly as the two forwards would: one forward fewer per
        block, for the same tokens (up to the order of float sums).
        """
        if fuse_commit and not (self.cached and self.options.static_buffers):
            raise ValueError(
                "fuse_commit needs a block-causal model decoded with the KV cache and static "
                "buffers (options kv_cache and static_buffers)"
            )
        sampling._check_positive_int("steps_per_block", steps_per_block)
        sampling.check_temperature(temperature)
        threshold = sampling._check_strategy(strategy, threshold, confidence)
        schedule = diffusion.get_schedule(schedule)
        alphas = schedule.alpha(schedule.time_grid(steps_per_block)).tolist()
        confidence = confidence or "low_confidence"
        run = DiffusionRun(self, strategy, threshold, confidence, temperature, alphas, fuse_commit)
        with grad_mode(self.options), eval_mode(self.model):
            return run(prompt, generator)


class DiffusionRun:
    """One call of a `FastDiffusionSampler`: the block loop and the two kinds of step."""

    def __init__(self, sampler, strategy, threshold, confidence, temperature, alphas, fuse_commit):
        self.sampler, self.options = sampler, sampler.options
        self.strategy, self.threshold, self.confidence = strategy, threshold, confidence
        self.temperature, self.alphas = temperature, alphas
        self.mask_id = sampler.model.mask_id
        self.nfe = self.steps_taken = 0
        self.fuse_commit = fuse_commit
        self.uncommitted = None  # with fuse_commit: where the blocks not yet cached start
        self.refresh = False  # with the dual cache: the block's first forward is still to run

    def block_probs(self, x, start, end) -> torch.Tensor:
        """The block's probabilities; the first forward of a block also commits the blocks
        before it that are not cached yet (fuse_commit), or refreshes the dual cache."""
        s = self.sampler
        probs = s.probs(x, start, end, self.temperature, self.uncommitted, self.refresh)
        self.uncommitted, self.refresh = None, False
        return probs

    def __call__(self, prompt, generator) -> DiffusionSample:
        s, mask_id = self.sampler, self.mask_id
        x = _initial_state(s.length, s.batch_size, prompt, mask_id, s.device)  # (B, L)
        b = s.block_len
        # masks per row and block, read once: (B, n_blocks)
        masks_left = (x == mask_id).view(s.batch_size, -1, b).sum(-1).tolist()
        n_generated = sum(map(sum, masks_left))
        self.plan(masks_left, x.device)
        if s.cache is not None:
            s.cache.reset()
        for k, start in enumerate(range(0, s.length, b)):
            end = start + b
            self.refresh = s.dual
            if self.strategy.startswith("ancestral"):
                self.ancestral_block(x, start, end, generator)
            else:
                self.confident_block(x, start, end, k, generator)
            if s.cached and end < s.length:
                if self.fuse_commit:  # the next block's first forward writes it
                    self.uncommitted = start if self.uncommitted is None else self.uncommitted
                else:
                    s.commit_block(x, start, end)
                    self.nfe += 1
        return DiffusionSample(x, self.nfe, self.steps_taken, n_generated)

    def plan(self, masks_left: list[list[int]], device: torch.device) -> None:
        """What the steps of every block need from the host, built once per call: the
        schedule's masks left after each step, per row and block (`sampling.masks_left_after`:
        `left_host` (B, n_blocks, steps) lists, `left_after` the same on the device), and each
        ancestral step's chance of revealing (`reveal`, a tensor on the device with
        no_host_reads). A copy to a GPU waits for the work queued before it: once a call, not
        once a block."""
        steps = len(self.alphas) - 1
        B, n_blocks = len(masks_left), len(masks_left[0])
        self.masks_left = masks_left
        if self.strategy.startswith("ancestral"):
            self.reveal = [sampling.reveal_probability(self.alphas, j) for j in range(steps)]
            if self.options.no_host_reads:  # a tensor, which a captured step reads
                self.reveal = torch.tensor(self.reveal, dtype=torch.float64, device=device)
            return
        left = sampling.masks_left_after(torch.tensor(masks_left).view(-1), self.alphas)
        left = left.view(B, n_blocks, steps)
        self.left_host, self.left_after = left.tolist(), left.to(device)

    def still_masked(self, block) -> bool:
        """Whether the block has a masked position left."""
        return bool((block == self.mask_id).any())  # a device-to-host read

    def whole_step(self, x, start, end, update, *numbers) -> torch.Tensor:
        """The block's new tokens from one whole step (`FastDiffusionSampler.whole_step`);
        like `block_probs`, its forward also commits or refreshes what is due."""
        s = self.sampler
        refresh, scored_from = self.refresh, self.uncommitted
        self.uncommitted, self.refresh = None, False
        return s.whole_step(x, start, end, update, numbers, self.temperature, scored_from, refresh)

    def ancestral_block(self, x, start, end, generator) -> None:
        """Ancestral steps on x[:, start:end], committing into x (`sampling.ancestral_steps`)."""
        steps, reveal = len(self.alphas) - 1, self.reveal  # each step's chance of revealing
        update = functools.partial(ancestral_update, mask_id=self.mask_id)
        noise = self.block_noise(x, start, end, 2, generator)  # None: each step draws its own
        probs, changed = None, True
        for j in range(steps):
            block = x[:, start:end]  # (B, b), a view: commits write into x
            if noise is not None:  # the same numbers in the same order, drawn before the loop
                block.copy_(
                    self.whole_step(x, start, end, update, noise[j, 0], noise[j, 1], reveal[j])
                )
                self.nfe += 1
                self.steps_taken += 1
                continue
            if not self.still_masked(block):
                break
            if probs is None or changed or not self.options.skip_unchanged:
                probs = self.block_probs(x, start, end)  # (B, b, V)
                self.nfe += 1
            u = draw_uniforms(block.shape, generator, x.device)  # (B, b): which to reveal
            u_token = draw_uniforms(block.shape, generator, x.device)  # (B, b): their tokens
            if self.options.vectorized_unmask:
                new = update(probs, block, u, u_token, reveal[j])
            else:
                new = block.clone()
                for r in range(block.shape[0]):
                    rows = slice(r, r + 1)
                    new[rows] = update(probs[rows], block[rows], u[rows], u_token[rows], reveal[j])
            if self.options.skip_unchanged:  # a proposal is never the mask: changed = revealed
                changed = bool((new != block).any())
            block.copy_(new)
            self.steps_taken += 1

    def block_noise(self, x, start, end, per_step, generator) -> torch.Tensor | None:
        """With no_host_reads: every float64 uniform the block's steps may use, (steps,
        per_step, B, b), drawn before its loop in the order the steps would draw them; else
        None, and each step draws its own."""
        if not self.options.no_host_reads:
            return None
        shape = (len(self.alphas) - 1, per_step, x.shape[0], end - start)
        return draw_uniforms(shape, generator, x.device)

    def confident_block(self, x, start, end, k, generator) -> None:
        """Confidence or threshold steps on x[:, start:end], block `k` of the call
        (`sampling.confident_steps`)."""
        steps = len(self.alphas) - 1
        # the schedule's masks left after each step, per row: (B, steps), the reference's rule
        left_host, left_after = [row[k] for row in self.left_host], self.left_after[:, k]
        # "confidence" commits exactly its quota, so the host can follow the mask counts
        # without reading them back; "threshold" commits more, so it must read them
        host_knows = self.options.no_sync and self.threshold is None
        rule = dict(confidence=self.confidence, threshold=self.threshold)  # the reference's
        update = functools.partial(confident_update, mask_id=self.mask_id, **rule)
        noise = self.block_noise(x, start, end, 1, generator)  # None: each step draws its own
        n_host = [row[k] for row in self.masks_left]  # each row's masks at the block's start
        for j in range(steps):
            block = x[:, start:end]  # (B, b), a view: commits write into x
            if host_knows and not any(n_host):
                break
            if noise is not None:  # no_host_reads: network, draw and commit, one function
                block.copy_(self.whole_step(x, start, end, update, noise[j, 0], left_after[:, j]))
            elif not host_knows and not self.still_masked(block):
                break
            else:
                probs = self.block_probs(x, start, end)  # (B, b, V)
                u = draw_uniforms(block.shape, generator, x.device)  # (B, b): the tokens' draws
                if self.options.vectorized_unmask:  # every row at once, on the device
                    new = update(probs, block, u, left_after[:, j])
                else:  # row by row, reading each row's count back to pass over a finished row
                    new = block.clone()
                    for r in range(x.shape[0]):
                        if int((block[r] == self.mask_id).sum()):
                            rows = slice(r, r + 1)
                            new[rows] = update(
                                probs[rows], block[rows], u[rows], left_after[rows, j]
                            )
                block.copy_(new)
            self.nfe += 1
            quota = sampling.commit_quota  # what the host knows each row committed
            n_host = [n - quota(n, left[j]) for n, left in zip(n_host, left_host, strict=True)]
            self.steps_taken += 1


def confident_update(probs, block, u, left_after, *, mask_id, confidence, threshold):
    """The new tokens (B, b) of a confidence or threshold step on `block` (B, b): a token
    drawn at every position from `probs` (B, b, V) with the float64 uniforms `u` (B, b), and
    the positions `sampling.confident_commit` picks (the schedule's count `left_after` (B,))
    committed: the reference's step rule."""
    masked = block == mask_id
    proposal = categorical_from_uniforms(probs, u)  # (B, b)
    commit = sampling.confident_commit(probs, proposal, masked, left_after, confidence, threshold)
    return torch.where(commit, proposal, block)


def ancestral_update(probs, block, u, u_token, p_unmask, *, mask_id):
    """The new tokens (B, b) of an ancestral step on `block` (B, b): each masked position is
    revealed where its uniform `u` < `p_unmask` (`sampling.reveal_probability`), with a token
    drawn from `probs` (B, b, V) by `u_token`: the reference's step rule."""
    unmask = (block == mask_id) & (u < p_unmask)
    return torch.where(unmask, categorical_from_uniforms(probs, u_token), block)


def fast_sample_diffusion(
    model: Transformer,
    *,
    length: int,
    block_len: int | None = None,
    batch_size: int = 1,
    options: DiffusionOptimizations | None = None,
    **sampling_kwargs,
) -> DiffusionSample:
    """One call of a fresh `FastDiffusionSampler`: same tokens as the reference, sooner.

    The first four arguments build the sampler; the rest (`steps_per_block`, `strategy`,
    `threshold`, `prompt`, `temperature`, `generator`, `schedule`, `confidence`) are its
    call's, as `FastDiffusionSampler.__call__` documents them.
    """
    sampler = FastDiffusionSampler(
        model, length=length, block_len=block_len, batch_size=batch_size, options=options
    )
    return sampler(**sampling_kwargs)


def reference_sample_diffusion(
    model: Transformer,
    *,
    length: int,
    steps_per_block: int,
    block_len: int | None = None,
    **kwargs,
) -> DiffusionSample:
    """The reference the fast sampler must match: notebook 08's block sampler without a
    cache (every step runs every finished block again), or for a bidirectional model
    decoded as one block, notebook 06's `sample_diffusion`."""
    if block_len is None:
        block_len = model.config.block_len or length
    if model.config.attention == "bidirectional" and block_len == length:
        return sampling.sample_diffusion(model, length=length, steps=steps_per_block, **kwargs)
    return sampling.sample_block_diffusion(
        model,
        length=length,
        block_len=block_len,
        steps_per_block=steps_per_block,
        use_kv_cache=False,
        **kwargs,
    )


# -- the AR decoder -------------------------------------------------------------------------


class FastARDecoder:
    """The optimized AR decoder for one causal model and batch size (gpt-fast's recipe).

    Same tokens as `sampling.sample_ar` for the same seed: one float64 categorical per
    sequence per step (`logits_to_probs`, `sample_categorical`). With prepacked_weights it
    runs a packed copy of the weights: build a new decoder after the model's weights change.
    """

    def __init__(
        self, model: Transformer, *, batch_size: int = 1, options: AROptimizations | None = None
    ) -> None:
        self.options = options = options or AROptimizations()
        if model.config.attention != "causal":
            raise ValueError(f"the AR decoder needs a causal model, not {model.config.attention!r}")
        self.device, _ = device_and_dtype(model)
        _check_options(options, model)
        self.model = model = _working_model(model, options, rows=batch_size)
        self.batch_size = batch_size
        self.cache = model.new_cache(batch_size) if options.kv_cache else None
        fn = self._static_step if options.kv_cache and options.static_buffers else self._step
        self.step = Step(fn, options, self.device)
        self.positions = torch.arange(model.config.context_len, device=self.device)

    def _static_step(self, ids, positions):
        return static_forward(self.model, ids, positions, self.cache)[:, -1]  # (B, V)

    def _step(self, ids, positions):
        return self.model(ids, cache=self.cache)[:, -1]  # (B, V); cache None: the whole prefix

    def __call__(
        self,
        *,
        prompt: torch.Tensor,
        n_tokens: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue `prompt` (P,) or (B, P) by `n_tokens`: ids (B, P + n_tokens)."""
        sampling._check_positive_int("n_tokens", n_tokens)
        sampling.check_temperature(temperature)
        prompt = sampling._as_batch(prompt).to(self.device)
        if prompt.shape[0] != self.batch_size:
            raise ValueError(f"prompt has batch {prompt.shape[0]}, the decoder {self.batch_size}")
        P, context = prompt.shape[1], self.model.config.context_len
        if P + n_tokens > context:
            raise ValueError(f"prompt ({P}) + n_tokens ({n_tokens}) exceeds the context {context}")
        if prompt.min() < 0 or prompt.max() >= self.model.config.vocab_size:
            raise ValueError(f"prompt ids must be in [0, {self.model.config.vocab_size})")
        with grad_mode(self.options), eval_mode(self.model):
            return self.decode(prompt, n_tokens, temperature, generator)

    def decode(self, prompt, n_tokens, temperature, generator) -> torch.Tensor:
        """The decode loop of `__call__` (its arguments checked): ids (B, P + n_tokens)."""
        o, B, P = self.options, self.batch_size, prompt.shape[1]
        if o.static_buffers:
            out = torch.empty(B, P + n_tokens, dtype=torch.long, device=self.device)
            out[:, :P] = prompt
        else:
            out = prompt
        if self.cache is not None:
            self.cache.reset()
        new = prompt  # what the next forward must run: the prompt, then one token
        for pos in range(P, P + n_tokens):
            ids = new if self.cache is not None else out[:, :pos]
            logits = self.step(ids, self.positions[pos - ids.shape[1] : pos])  # (B, V)
            token = sample_categorical(logits_to_probs(logits, temperature), generator)  # (B,)
            if not o.no_sync:  # the naive loop: tokens through Python lists, every step
                token = torch.tensor(token.tolist(), device=self.device)
            if o.static_buffers:
                out[:, pos] = token
            else:
                out = torch.cat([out, token[:, None]], dim=1)
            new = out[:, pos : pos + 1]
        return out


def fast_sample_ar(
    model: Transformer,
    *,
    prompt: torch.Tensor,
    n_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    options: AROptimizations | None = None,
) -> torch.Tensor:
    """One call of a fresh `FastARDecoder`: the tokens of `sampling.sample_ar`, sooner."""
    batch = sampling._as_batch(prompt).shape[0]
    decoder = FastARDecoder(model, batch_size=batch, options=options)
    return decoder(prompt=prompt, n_tokens=n_tokens, temperature=temperature, generator=generator)
