"""Drawing text from a model: autoregressive decoding (notebook 03) and the reverse process
of masked diffusion (notebook 06).

Categoricals are drawn in float64 by inverting the CDF with one uniform number per draw, so
that (a) low-probability tokens are not lost to float32 rounding and (b) every sampler consumes
the random stream in the same, documented way: the same seed gives the same tokens whether or
not a KV cache is used. The pieces of one step (probabilities, draws, confidence, what a step
commits) live in `step_rules`, shared with `fast`, and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from course_lib import diffusion, env
from course_lib.model import KVCache, Transformer, device_and_dtype, eval_mode
from course_lib.step_rules import (  # noqa: F401 (re-exported: sampling.confident_commit, ...)
    CONFIDENCES,
    DEFAULT_THRESHOLD,
    STRATEGIES,
    _check_strategy,
    check_temperature,
    commit_quota,
    confident_commit,
    gumbel_max_sample,
    logits_to_probs,
    masks_left_after,
    position_confidence,
    reveal_probability,
    sample_categorical,
)


def _as_batch(prompt: torch.Tensor) -> torch.Tensor:
    if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.long:
        raise ValueError("prompt must be a LongTensor of token ids, (L,) or (B, L)")
    if prompt.dim() == 1:
        prompt = prompt.unsqueeze(0)
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(
            f"prompt must be (L,) or (B, L) with L >= 1, got shape {tuple(prompt.shape)}; "
            "to start from nothing, prompt with a newline"
        )
    return prompt


@torch.inference_mode()
def sample_ar(
    model: Transformer,
    *,
    prompt: torch.Tensor,
    n_tokens: int,
    temperature: float = 1.0,
    use_kv_cache: bool = True,
    generator: torch.Generator | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Continue `prompt` (L,) or (B, L) by `n_tokens` tokens: ids (B, L + n_tokens).

    Without the cache every step runs the model over the whole sequence so far (cost grows
    with its length); with it, the prompt is run once and each step runs one new token
    against the cached keys and values.
    """
    if model.config.attention != "causal":
        raise ValueError(f"sample_ar needs a causal model, this one is {model.config.attention!r}")
    if not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive int, got {n_tokens!r}")
    check_temperature(temperature)
    device, _ = device_and_dtype(model)
    seq = _as_batch(prompt).to(device)
    if seq.max() >= model.config.vocab_size or seq.min() < 0:
        raise ValueError(f"prompt ids must be in [0, {model.config.vocab_size})")
    total = seq.shape[1] + n_tokens
    if total > model.config.context_len:
        raise ValueError(
            f"prompt ({seq.shape[1]}) + n_tokens ({n_tokens}) = {total} exceeds the model's "
            f"context of {model.config.context_len}; shorten one of them"
        )
    with eval_mode(model):
        out = torch.empty(seq.shape[0], total, dtype=torch.long, device=device)
        out[:, : seq.shape[1]] = seq
        cache = model.new_cache(seq.shape[0]) if use_kv_cache else None
        pos = seq.shape[1]
        step_input = seq
        for _ in range(n_tokens):
            if cache is not None:
                logits = model(step_input, cache=cache)[:, -1]  # (B, V): only new tokens are run
            else:
                logits = model(out[:, :pos])[:, -1]  # (B, V): the whole prefix, every step
            probs = logits_to_probs(logits, temperature, top_k=top_k, top_p=top_p)
            out[:, pos] = sample_categorical(probs, generator)
            step_input = out[:, pos : pos + 1]
            pos += 1
    return out


# -- masked diffusion: the reverse process (notebook 06) -----------------------------------


@dataclass
class DiffusionSample:
    """What `sample_diffusion` returns.

    tokens: (B, L) ids, no mask left. nfe: network calls (denoiser forwards). steps_taken:
    denoising steps run (a sampler stops early once nothing is masked; a cached step counts
    as a step but not as a call). n_generated: tokens generated, summed over the batch (the
    prompt's tokens excluded). trajectory: with `record=True`, the (B, L) state before the
    first step and after every step, on the CPU.
    """

    tokens: torch.Tensor
    nfe: int
    steps_taken: int
    n_generated: int
    trajectory: list[torch.Tensor] | None = None

    @property
    def tokens_per_step(self) -> float:
        """Tokens generated per sequence per denoising step (0.0 if no step ran)."""
        if self.steps_taken == 0:
            return 0.0
        return self.n_generated / self.tokens.shape[0] / self.steps_taken


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _initial_state(
    length: int,
    batch_size: int,
    prompt: torch.Tensor | None,
    mask_id: int,
    device: torch.device,
) -> torch.Tensor:
    """The sampler's x_1: all masks, with the prompt's tokens written over its first positions.

    A prompt (P,) or (B, P) with P <= length fixes positions 0..P-1, except where it holds
    `mask_id` (those are generated): a plain prefix, or a template for infilling.
    """
    x = torch.full((batch_size, length), mask_id, dtype=torch.long, device=device)  # (B, L)
    if prompt is None:
        return x
    if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.long:
        raise ValueError("prompt must be a LongTensor of token ids, (P,) or (B, P)")
    if prompt.dim() == 1:
        prompt = prompt.unsqueeze(0)
    if prompt.dim() != 2 or prompt.shape[0] not in (1, batch_size):
        raise ValueError(
            f"prompt of shape {tuple(prompt.shape)} does not fit batch_size={batch_size}: give "
            f"(P,) or ({batch_size}, P), or set batch_size to the prompt's batch"
        )
    if prompt.shape[1] > length:
        raise ValueError(
            f"the prompt has {prompt.shape[1]} positions but length={length}: the prompt must "
            "fit in the sequence (length counts the prompt and the generated tokens)"
        )
    if prompt.numel() and (prompt.min() < 0 or prompt.max() > mask_id):
        raise ValueError(f"prompt ids must be tokens in [0, {mask_id}) or the mask id {mask_id}")
    x[:, : prompt.shape[1]] = prompt.to(device)
    return x


def _device_of(denoiser: diffusion.Denoiser, prompt: torch.Tensor | None) -> torch.device:
    """Where a sampler runs: the denoiser's weights, else a plain function's prompt, else CPU."""
    default = prompt.device if isinstance(prompt, torch.Tensor) else "cpu"
    return device_and_dtype(denoiser, default)[0]


def draw_uniforms(shape: tuple[int, ...], generator, device: torch.device) -> torch.Tensor:
    """float64 uniforms of `shape` on `device`, drawn where the generator lives."""
    gen_device = env.generator_device(generator, device)
    return torch.rand(shape, dtype=torch.float64, generator=generator, device=gen_device).to(device)


@torch.inference_mode()
def sample_diffusion(
    denoiser: diffusion.Denoiser,
    *,
    length: int,
    steps: int,
    batch_size: int = 1,
    strategy: str = "ancestral",
    prompt: torch.Tensor | None = None,
    temperature: float = 1.0,
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
    schedule: str | diffusion.Schedule = "loglinear",
    confidence: str | None = None,
    threshold: float | None = None,
    record: bool = False,
) -> DiffusionSample:
    """Generate (batch_size, length) ids with a masked-diffusion denoiser in at most `steps`.

    The denoiser is any callable ids (B, L) -> logits (B, L, V) (a bidirectional model, or an
    exact oracle from `synthetic`). Strategies (notebook 06):

    - "ancestral": the reverse process of the absorbing chain on the schedule's time grid.
      From t to s < t each masked token is unmasked with probability
      (alpha(s) - alpha(t)) / (1 - alpha(t)) and, if so, drawn from the denoiser's
      categorical; unmasked tokens are kept; the last step unmasks everything left.
    - "ancestral_cached": the same, but when a step changed no token the next step reuses the
      denoiser's output instead of calling it. Same tokens as "ancestral" for the same seed,
      fewer calls (NFE) when steps exceed the length.
    - "confidence" (LLaDA): each step proposes a token for every masked position and commits
      the most confident ones: as many as keep the masked count on the schedule
      (round(N (1 - alpha(s))) left after reaching time s), and at least one. `confidence` is
      "low_confidence" (default), "margin" or "entropy" (`position_confidence`).
    - "threshold" (Fast-dLLM): commits every masked position whose confidence exceeds
      `threshold` (default 0.9), and never fewer than "confidence" would, so it always ends
      within `steps` steps; threshold=1.0 is exactly "confidence". With steps >= length that
      floor is one token per step, Fast-dLLM's rule.

    Random numbers per step, always the full (B, L) whatever is masked: ancestral strategies
    draw the unmasking uniforms and then the tokens; the others draw only the tokens. All
    categoricals are drawn in float64 at `temperature` (`logits_to_probs`,
    `sample_categorical`). A sampler stops early once nothing is masked.

    `prompt` (P,) or (B, P), P <= length, fixes the first P positions, except where it holds
    `mask_id`: a prefix prompt, or an infilling template. `mask_id=None` means the denoiser's
    `config.vocab_size`. Returns a `DiffusionSample` (tokens, nfe, tokens_per_step, ...).
    """
    _check_positive_int("length", length)
    _check_positive_int("steps", steps)
    _check_positive_int("batch_size", batch_size)
    check_temperature(temperature)
    threshold = _check_strategy(strategy, threshold, confidence)
    schedule = diffusion.get_schedule(schedule)
    mask_id = diffusion.resolve_mask_id(denoiser, mask_id)
    device = _device_of(denoiser, prompt)
    x = _initial_state(length, batch_size, prompt, mask_id, device)  # (B, L)
    trajectory = [x.cpu().clone()] if record else None
    n_generated = int((x == mask_id).sum())
    alphas = schedule.alpha(schedule.time_grid(steps)).tolist()  # steps + 1 values, 0 -> 1
    with eval_mode(denoiser):
        x, nfe, steps_taken = reverse_steps(
            denoiser,
            x,
            alphas,
            mask_id,
            temperature,
            generator,
            strategy=strategy,
            confidence=confidence or "low_confidence",
            threshold=threshold,
            trajectory=trajectory,
        )
    return DiffusionSample(x, nfe, steps_taken, n_generated, trajectory)


def reverse_steps(
    denoiser,
    x,
    alphas,
    mask_id,
    temperature,
    generator,
    *,
    strategy,
    confidence,
    threshold,
    trajectory,
):
    """Unmask x (B, L) with `strategy` over the schedule's `alphas`: (x, nfe, steps taken)."""
    if strategy.startswith("ancestral"):
        cached = strategy == "ancestral_cached"
        return ancestral_steps(
            denoiser,
            x,
            alphas,
            mask_id,
            temperature,
            generator,
            cached=cached,
            trajectory=trajectory,
        )
    return confident_steps(
        denoiser,
        x,
        alphas,
        mask_id,
        temperature,
        generator,
        kind=confidence,
        threshold=threshold,
        trajectory=trajectory,
    )


def ancestral_steps(denoiser, x, alphas, mask_id, temperature, generator, *, cached, trajectory):
    """The ancestral reverse process on x (B, L) over the schedule's `alphas`: each step
    reveals every masked position with `reveal_probability` and draws its token; `cached`
    skips the call when the last step revealed nothing. Returns (x, nfe, steps taken)."""
    steps = len(alphas) - 1
    nfe, steps_taken = 0, 0
    probs = None
    changed = True
    for j in range(steps):
        masked = x == mask_id  # (B, L)
        if not masked.any():
            break
        if probs is None or changed or not cached:
            logits = diffusion.denoise(denoiser, x, mask_id)  # (B, L, V)
            probs = logits_to_probs(logits, temperature)  # (B, L, V) float64
            nfe += 1
        p_unmask = reveal_probability(alphas, j)
        u = draw_uniforms(x.shape, generator, x.device)  # (B, L)
        proposal = sample_categorical(probs, generator)  # (B, L): never the mask id
        unmask = masked & (u < p_unmask)
        x = torch.where(unmask, proposal, x)
        changed = bool(unmask.any())
        steps_taken += 1
        if trajectory is not None:
            trajectory.append(x.cpu().clone())
    return x, nfe, steps_taken


def confident_steps(
    denoiser, x, alphas, mask_id, temperature, generator, *, kind, threshold, trajectory
):
    """Confidence (or threshold) decoding of x (B, L): each step draws a token at every
    masked position and commits those `confident_commit` picks, the schedule's quota at least.
    Returns (x, nfe, steps taken)."""
    steps = len(alphas) - 1
    left_after = masks_left_after((x == mask_id).sum(1), alphas)  # (B, steps)
    nfe, steps_taken = 0, 0
    for j in range(steps):
        masked = x == mask_id  # (B, L)
        if not masked.any():
            break
        logits = diffusion.denoise(denoiser, x, mask_id)  # (B, L, V)
        nfe += 1
        probs = logits_to_probs(logits, temperature)  # (B, L, V) float64
        proposal = sample_categorical(probs, generator)  # (B, L)
        commit = confident_commit(probs, proposal, masked, left_after[:, j], kind, threshold)
        x = torch.where(commit, proposal, x)
        steps_taken += 1
        if trajectory is not None:
            trajectory.append(x.cpu().clone())
    return x, nfe, steps_taken


# -- block diffusion: semi-autoregressive decoding and caches (notebook 08) ------------------

APPROXIMATE_CACHES = ("prefix", "dual")


def _check_block_inputs(model, length, block_len, steps_per_block, batch_size) -> None:
    for name, value in (
        ("length", length),
        ("block_len", block_len),
        ("steps_per_block", steps_per_block),
        ("batch_size", batch_size),
    ):
        _check_positive_int(name, value)
    if length % block_len:
        raise ValueError(
            f"block_len={block_len} must divide length={length}: the sequence is decoded in "
            f"whole blocks (try length={length // block_len * block_len or block_len})"
        )
    if isinstance(model, Transformer) and length > model.config.context_len:
        raise ValueError(
            f"length={length} is longer than the model's context {model.config.context_len}"
        )


def _cache_mode(model, block_len: int, use_kv_cache: bool, approximate_cache: str | None) -> str:
    """How each step sees the rest of the sequence: "exact", "prefix", "approximate", "dual",
    "full".

    - "exact": a block-causal model with a KV cache of the finished blocks.
    - "prefix": a block-causal model without a cache: the finished blocks are run again.
    - "approximate": a bidirectional model with Fast-dLLM's prefix cache.
    - "dual": a bidirectional model with Fast-dLLM's dual cache (prefix and suffix).
    - "full": a bidirectional model (or any denoiser) run on the whole sequence every step.
    """
    attention = getattr(getattr(model, "config", None), "attention", None)
    if approximate_cache is not None and approximate_cache not in APPROXIMATE_CACHES:
        raise ValueError(
            f"unknown approximate_cache {approximate_cache!r}: choose one of {APPROXIMATE_CACHES}"
        )
    if attention == "causal":
        raise ValueError("a causal model decodes one token at a time: use sample_ar")
    if attention == "block_causal":
        if block_len != model.config.block_len:
            raise ValueError(
                f"this model was trained with blocks of {model.config.block_len} tokens; "
                f"decode with block_len={model.config.block_len}, not {block_len}"
            )
        if approximate_cache is not None:
            raise ValueError(
                "a block-causal model has an exact KV cache: use_kv_cache=True, not "
                "approximate_cache"
            )
        return "exact" if use_kv_cache else "prefix"
    if approximate_cache is not None:
        if attention != "bidirectional" or not isinstance(model, Transformer):
            raise ValueError("approximate_cache needs a bidirectional course Transformer")
        return "dual" if approximate_cache == "dual" else "approximate"
    if use_kv_cache:
        raise ValueError(
            "a bidirectional model (or a plain denoiser) has no exact KV cache: pass "
            "use_kv_cache=False to run the whole sequence every step, or "
            "approximate_cache='prefix' for Fast-dLLM's approximate prefix cache"
        )
    return "full"


def forward_with_kv(
    model: Transformer, idx: torch.Tensor, cache: KVCache, start: int
) -> torch.Tensor:
    """A bidirectional model's forward for positions start.. of `idx`, with a KV cache.

    The L new positions write their keys and values into `cache` at [start, start + L) and
    attend, without a mask, to those and to whatever `cache` holds before `start` (and after
    them, up to `cache.length`). With start=0 this is `model(idx)` (and fills the cache).
    With start > 0 it is Fast-dLLM's approximate prefix cache, and with a cache that also
    holds the positions after the new ones, its dual cache: the cached keys and values were
    computed when the rest of the sequence looked different, so they are stale, and the
    logits are not quite those of `model` on the current sequence. `Transformer.forward` refuses a cache for a
    bidirectional model for that reason; this function is the explicit way around it.
    """
    L = idx.shape[1]
    positions = torch.arange(start, start + L, device=idx.device)
    x = model.drop(model.embed(idx, positions))  # (B, L, d_model)
    rotary = model.rotary(positions)
    for layer, block in enumerate(model.blocks):
        x = block(x, None, cache, layer, start, rotary)  # mask None: bidirectional
    return model.head(model.ln_f(x))  # (B, L, vocab_size)


class BlockView:
    """The denoiser a block's steps call: ids of the block (B, b) -> its logits (B, b, V).

    It runs the model on the context the cache mode needs (see `_cache_mode`), with the rest
    of `x` as it is now. `calls` counts the network calls. With a list `errors`, the
    approximate mode also runs the exact forward and records how far it is off.
    """

    def __init__(self, model, x, start, end, mode, cache, mask_id, errors=None):
        self.model, self.x, self.start, self.end = model, x, start, end
        self.mode, self.cache, self.mask_id, self.errors = mode, cache, mask_id, errors
        self.config = getattr(model, "config", None)
        self.calls = 0
        self.first_logits = None

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if diffusion.next_token_shift(self.model):
            return self._shifted(block)
        s, e, x, model = self.start, self.end, self.x, self.model
        if self.mode == "exact":  # the cache holds the finished blocks; the block stays out
            return model(block, cache=self.cache, update_cache=False)
        if self.mode == "prefix":  # every finished block is run again
            return model(torch.cat([x[:, :s], block], 1))[:, s:]
        whole = torch.cat([x[:, :s], block, x[:, e:]], 1)  # (B, L): later blocks still masked
        if self.mode == "full":
            return diffusion.denoise(model, whole, self.mask_id)[:, s:e]
        if self.calls == 1:  # the block's first step: exact, and it refreshes the whole cache
            logits = forward_with_kv(model, whole, self.cache, 0)[:, s:e]
            self.cache.length = whole.shape[1]  # every position's keys and values
            self.first_logits = logits
        elif self.mode == "dual":  # the block alone, against the cached prefix and suffix
            logits = forward_with_kv(model, block, self.cache, s)
        else:  # the block and what follows it, against the cached (stale) prefix
            logits = forward_with_kv(model, whole[:, s:], self.cache, s)[:, : e - s]
        if self.errors is not None:
            self._record(logits, model(whole)[:, s:e], block == self.mask_id)
        return logits

    def _shifted(self, targets: torch.Tensor) -> torch.Tensor:
        """A next-token-shift model's logits for the targets start+1.. (B, n): the block's
        inputs are the clean token at `start` and the targets before the last (as in
        training, `diffusion.block_nelbo_per_sequence`)."""
        s, e, x, model = self.start, self.end, self.x, self.model
        block = torch.cat([x[:, s : s + 1], targets[:, : e - s - 1]], 1)  # (B, b)
        if self.mode == "exact":
            logits = model(block, cache=self.cache, update_cache=False)
        else:  # "prefix": every finished block is run again
            logits = model(torch.cat([x[:, :s], block], 1))[:, s:]
        return logits[:, : targets.shape[1]]

    def _record(self, approx, exact, masked) -> None:
        """One step's error of the approximate logits at the block's masked positions."""
        log_p = torch.log_softmax(exact.double(), -1)[masked]  # (n_masked, V)
        log_q = torch.log_softmax(approx.double(), -1)[masked]
        stale = torch.log_softmax(self.first_logits.double(), -1)[masked]
        self.errors.append(
            {
                "block": self.start // (self.end - self.start),
                "step": self.calls - 1,
                "max_logit_error": (approx - exact)[masked].abs().max().item(),
                "stale_max_logit_error": (self.first_logits - exact)[masked].abs().max().item(),
                "kl": (log_p.exp() * (log_p - log_q)).sum(-1).mean().item(),
                "stale_kl": (log_p.exp() * (log_p - stale)).sum(-1).mean().item(),
                "argmax_agreement": (log_p.argmax(-1) == log_q.argmax(-1)).double().mean().item(),
            }
        )


def contains_pattern(rows: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Whether each row of `rows` (B, n) contains `pattern` (m,) contiguously: (B,) bool."""
    m = pattern.numel()
    if rows.shape[1] < m:
        return torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)
    windows = rows.unfold(1, m, 1)  # (B, n - m + 1, m)
    return (windows == pattern.to(rows.device)).all(-1).any(-1)


def _stop_pattern(stop_ids) -> torch.Tensor | None:
    if stop_ids is None:
        return None
    pattern = torch.as_tensor(stop_ids, dtype=torch.long).reshape(-1)
    if pattern.numel() == 0:
        raise ValueError("stop_ids is empty: give the token id(s) that end a text, or None")
    return pattern


@torch.inference_mode()
def sample_block_diffusion(
    model: diffusion.Denoiser,
    *,
    length: int,
    block_len: int,
    steps_per_block: int,
    batch_size: int = 1,
    strategy: str = "confidence",
    threshold: float | None = None,
    prompt: torch.Tensor | None = None,
    temperature: float = 1.0,
    use_kv_cache: bool = True,
    approximate_cache: str | None = None,
    generator: torch.Generator | None = None,
    stop_ids=None,
    schedule: str | diffusion.Schedule = "loglinear",
    confidence: str | None = None,
    mask_id: int | None = None,
    record: bool = False,
) -> DiffusionSample:
    """Semi-autoregressive (block) diffusion: decode `length` tokens `block_len` at a time.

    Blocks are decoded left to right; each is a small masked-diffusion problem of
    `steps_per_block` steps, run exactly as `sample_diffusion` runs a whole sequence (same
    strategies, same random numbers per step, drawn for the block's (B, block_len)
    positions), while the finished blocks are fixed context. Notebook 08.

    Which model, and how a step sees the finished blocks:

    - a block-causal model (trained with the "bd3lm" objective; `block_len` must be its own):
      `use_kv_cache=True` keeps the keys and values of the finished blocks in a KV cache
      (each finished block is committed with one forward) and runs only the block being
      denoised; `use_kv_cache=False` runs every finished block again at every step. The two
      give the same tokens: the cache is exact because no finished block can see a later one.
    - a bidirectional model (or a plain denoiser callable): every step runs the whole
      sequence, later blocks still masked (LLaDA's semi-AR decoding), with
      `use_kv_cache=False`. `approximate_cache="prefix"` is Fast-dLLM's approximate cache:
      the first step of a block runs the whole sequence and keeps every position's keys and
      values; the other steps run only the block and what follows it, against the kept keys
      and values of the prefix (stale: computed before the block changed).
      `approximate_cache="dual"` is Fast-dLLM's dual cache: the other steps run only the
      block, against the kept keys and values of the prefix *and* of the still-masked suffix
      (both stale). See `prefix_cache_error` for what each costs in accuracy.

    `strategy`: "confidence" (default), "threshold" (Fast-dLLM's parallel decoding: commit
    every masked position of the block whose confidence exceeds `threshold` in (0, 1],
    default 0.9, and at least as many as "confidence" would, so at least one per step),
    "ancestral" or "ancestral_cached" (see `sample_diffusion`).

    Variable length: with `stop_ids` (a token id or a sequence of ids, e.g. the ids of
    "\\n\\n"), decoding stops after the first block at the end of which every sequence's
    generated text contains that pattern; `tokens` then has fewer than `length` columns (the
    text after each sequence's stop is the caller's to cut). Otherwise all `length` tokens
    are generated.

    Returns a `DiffusionSample`: `nfe` counts every network call (denoising steps and cache
    commits), `tokens_per_step` the generated tokens per denoising step, `trajectory`
    (`record=True`) the whole sequence before the first step and after every step.
    """
    how = BlockDecoding.checked(
        model,
        length=length,
        block_len=block_len,
        steps_per_block=steps_per_block,
        batch_size=batch_size,
        strategy=strategy,
        threshold=threshold,
        prompt=prompt,
        temperature=temperature,
        stop=_stop_pattern(stop_ids),
        schedule=schedule,
        confidence=confidence,
        mask_id=mask_id,
        record=record,
    )
    mode = _cache_mode(model, block_len, use_kv_cache, approximate_cache)
    return decode_blocks(model, how, mode=mode, generator=generator)


@dataclass(frozen=True)
class BlockDecoding:
    """How `sample_block_diffusion` decodes, its arguments checked: what `decode_blocks` and
    `prefix_cache_error` share (one object, not a dozen keyword arguments passed along)."""

    length: int
    block_len: int
    steps_per_block: int
    batch_size: int
    strategy: str
    threshold: float | None
    prompt: torch.Tensor | None
    temperature: float
    stop: torch.Tensor | None  # the pattern that ends a text (`stop_ids`), or None
    schedule: diffusion.Schedule
    confidence: str
    mask_id: int
    record: bool

    @classmethod
    def checked(
        cls,
        model,
        *,
        length,
        block_len,
        steps_per_block,
        batch_size,
        strategy,
        threshold,
        prompt,
        temperature,
        confidence,
        stop=None,
        schedule="loglinear",
        mask_id=None,
        record=False,
    ) -> BlockDecoding:
        """The settings from a sampler's arguments, each checked (raises ValueError)."""
        _check_block_inputs(model, length, block_len, steps_per_block, batch_size)
        check_temperature(temperature)
        return cls(
            length=length,
            block_len=block_len,
            steps_per_block=steps_per_block,
            batch_size=batch_size,
            strategy=strategy,
            threshold=_check_strategy(strategy, threshold, confidence),
            prompt=prompt,
            temperature=temperature,
            stop=stop,
            schedule=diffusion.get_schedule(schedule),
            confidence=confidence or "low_confidence",
            mask_id=diffusion.resolve_mask_id(model, mask_id),
            record=record,
        )


def decode_blocks(
    model, how: BlockDecoding, *, mode: str, generator, errors: list | None = None
) -> DiffusionSample:
    """The block loop of `sample_block_diffusion`: `how` says what to decode, `mode` how each
    step sees the rest of the sequence (`_cache_mode`'s names); with a list `errors`, the
    approximate caches record their error at every step (`prefix_cache_error`)."""
    length, block_len, mask_id = how.length, how.block_len, how.mask_id
    device = _device_of(model, how.prompt)
    x = _initial_state(length, how.batch_size, how.prompt, mask_id, device)  # (B, L)
    prompt_len = 0 if how.prompt is None else how.prompt.shape[-1]
    trajectory = [x.cpu().clone()] if how.record else None
    alphas = how.schedule.alpha(how.schedule.time_grid(how.steps_per_block)).tolist()
    cached = mode in ("exact", "approximate", "dual")
    cache = model.new_cache(how.batch_size) if cached else None
    shift = diffusion.next_token_shift(model)
    if shift and (how.prompt is None or bool((x[:, 0] == mask_id).any())):
        raise ValueError(
            "this model predicts each token from the one before it (next_token_shift): give "
            "a prompt whose first id is a token, e.g. a newline"
        )
    nfe = steps_taken = n_generated = 0
    end = length
    with eval_mode(model):
        for start in range(0, length, block_len):
            stop_at = start + block_len
            # the positions this block decodes: a next-token-shift model's are one later
            first, last = (start + 1, min(stop_at + 1, length)) if shift else (start, stop_at)
            block = x[:, first:last]  # (B, b)
            n_generated += int((block == mask_id).sum())
            view = BlockView(model, x, start, stop_at, mode, cache, mask_id, errors)
            block_trajectory = [] if how.record else None
            block, _, steps = reverse_steps(
                view,
                block,
                alphas,
                mask_id,
                how.temperature,
                generator,
                strategy=how.strategy,
                confidence=how.confidence,
                threshold=how.threshold,
                trajectory=block_trajectory,
            )
            x[:, first:last] = block
            steps_taken += steps
            nfe += view.calls
            for state in block_trajectory or []:
                whole = trajectory[-1].clone()
                whole[:, first:last] = state
                trajectory.append(whole)
            stop = how.stop
            if stop is not None and bool(contains_pattern(x[:, prompt_len:last], stop).all()):
                end = last
                break
            if mode == "exact" and stop_at < length:
                model(x[:, start:stop_at], cache=cache)  # commit the finished block
                nfe += 1
    if end < length:
        x = x[:, :end]
        trajectory = None if trajectory is None else [state[:, :end] for state in trajectory]
    return DiffusionSample(x, nfe, steps_taken, n_generated, trajectory)


@dataclass
class PrefixCacheError:
    """How far Fast-dLLM's approximate prefix cache is from the exact forward.

    Logit errors are over the masked positions of the block being decoded (the ones the
    step predicts), at every step. "stale" is the crude alternative: reusing the block's
    first-step logits for all its steps. `token_agreement`: the fraction of positions where
    the cached sampler wrote the same token as the exact one with the same seed (once they
    differ, the rest of the text is conditioned differently, so it is a pessimistic measure).
    """

    max_logit_error: float
    first_step_max_logit_error: float  # the cache is fresh at a block's first step
    mean_kl: float  # KL(exact || approximate), nats per masked position, averaged over steps
    stale_max_logit_error: float
    stale_mean_kl: float
    argmax_agreement: float
    token_agreement: float
    steps: list[dict]


def prefix_cache_error(
    model: Transformer,
    *,
    length: int,
    block_len: int,
    steps_per_block: int,
    batch_size: int = 1,
    strategy: str = "confidence",
    threshold: float | None = None,
    prompt: torch.Tensor | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    confidence: str | None = None,
    approximate_cache: str = "prefix",
) -> PrefixCacheError:
    """Measure an approximate cache of a bidirectional model against no cache.

    Decodes with `approximate_cache` ("prefix", or "dual" for the prefix and the suffix) and,
    at every step, also runs the exact forward on the same state (this draws no random
    numbers) to compare logits; then decodes again without a cache from the same seed to
    compare tokens. Notebook 08.
    """
    how = BlockDecoding.checked(
        model,
        length=length,
        block_len=block_len,
        steps_per_block=steps_per_block,
        batch_size=batch_size,
        strategy=strategy,
        threshold=threshold,
        prompt=prompt,
        temperature=temperature,
        confidence=confidence,
    )
    mode = _cache_mode(model, block_len, False, approximate_cache)
    steps: list[dict] = []
    with torch.inference_mode():
        seeded = torch.Generator().manual_seed
        cached = decode_blocks(model, how, mode=mode, generator=seeded(seed), errors=steps)
        exact = decode_blocks(model, how, mode="full", generator=seeded(seed))
    if not steps:
        raise ValueError("nothing was decoded: the prompt fills every position")
    first = [row for row in steps if row["step"] == 0]
    return PrefixCacheError(
        max_logit_error=max(row["max_logit_error"] for row in steps),
        first_step_max_logit_error=max(row["max_logit_error"] for row in first),
        mean_kl=sum(row["kl"] for row in steps) / len(steps),
        stale_max_logit_error=max(row["stale_max_logit_error"] for row in steps),
        stale_mean_kl=sum(row["stale_kl"] for row in steps) / len(steps),
        argmax_agreement=sum(row["argmax_agreement"] for row in steps) / len(steps),
        token_agreement=(cached.tokens == exact.tokens).double().mean().item(),
        steps=steps,
    )
