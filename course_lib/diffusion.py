"""Masked (absorbing-state) diffusion: schedules, corruption, the loss and the ELBO.

Notebook 04 (forward process) introduces the schedules and `corrupt`; notebook 05 (training
and the ELBO) derives and uses `masked_diffusion_loss`, `elbo` and `mdlm_objective`.

The forward process. At time t in [0, 1] every token of a clean sequence x0 is, independently,
still itself with probability alpha(t) and replaced by the mask id with probability
1 - alpha(t). alpha(0) = 1 (clean data), alpha(1) = 0 (all masks); a *schedule* is the choice
of alpha(t) in between.

The loss. The continuous-time negative ELBO of the absorbing process (MDLM, MD4) is

    NELBO(x0) = integral over t in [0, 1] of
                E_{x_t ~ q(x_t | x0)} [ w(t) * sum over masked i of -log p(x0_i | x_t) ],
    w(t) = -alpha'(t) / (1 - alpha(t)).

Only masked positions are scored ("carry-over": an unmasked token is known, so it costs
nothing, and the sampler keeps it). The denoiser returns logits over the real tokens only, so
it can never predict the mask id. For the log-linear schedule alpha(t) = 1 - t the weight is
1/t; for any other schedule it is not, and using 1/t there is a common bug.

Substituting lambda = 1 - alpha(t) turns the integral into one over the masking rate, so the
NELBO's value does not depend on the schedule (only the variance of its estimate does), and
with the *true* conditionals it equals -log p(x0) exactly for every x0: it is the average over
random orders of an any-order autoregressive factorisation (notebook 05 derives it).

A *denoiser* is any callable ids (B, L) -> logits (B, L, V) with tokens in [0, V) and the mask
id `mask_id` (normally V) at masked positions: a `model.Transformer`, or an exact oracle from
`course_lib.synthetic`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from course_lib import env
from course_lib.model import eval_mode  # noqa: F401 (diffusion.eval_mode, its old home)

Denoiser = Callable[[torch.Tensor], torch.Tensor]

# The smallest diffusion time the loss samples. Near t = 0 almost nothing is masked but the
# weight w(t) ~ 1/t is huge: the integrand's expectation stays finite, yet the variance of a
# one-sample estimate grows like the integral of 1/t, which diverges at 0. Sampling t from
# [TIME_EPS, 1] removes that divergence at the price of dropping the integral over
# [0, TIME_EPS], whose size is about TIME_EPS x (the loss of one masked token given all the
# others) per token for the log-linear schedule, and TIME_EPS^2 times that for the cosine:
# at 1e-3, a few thousandths of a bit per token on text (a lone masked character costs a
# small model about 2.5 bits), under a thousandth on the synthetic sources.
TIME_EPS: float = 1e-3


# -- schedules (notebook 04) -----------------------------------------------------------------


def as_time(t: torch.Tensor | float) -> torch.Tensor:
    """`t` as a float64 tensor (differentiable if `t` is): schedules are evaluated in float64."""
    if isinstance(t, torch.Tensor):
        return t.double()
    return torch.tensor(t, dtype=torch.float64)


class Schedule:
    """alpha(t): the probability that a token is still unmasked at time t in [0, 1].

    Subclasses give `alpha` and its derivative `alpha_prime` analytically, and may override
    `mask_prob` (= 1 - alpha(t)) with a form that does not lose digits near t = 0. All methods
    take a float or a tensor of times and return float64 tensors.
    """

    name: str = "schedule"

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        raise NotImplementedError

    def alpha_prime(self, t: torch.Tensor | float) -> torch.Tensor:
        raise NotImplementedError

    def mask_prob(self, t: torch.Tensor | float) -> torch.Tensor:
        """1 - alpha(t): the probability that a token is masked at time t."""
        return 1 - self.alpha(t)

    def weight(self, t: torch.Tensor | float) -> torch.Tensor:
        """The ELBO weight -alpha'(t) / (1 - alpha(t)) (with 1 - alpha(t) from `mask_prob`)."""
        return -self.alpha_prime(t) / self.mask_prob(t)

    def time_grid(self, steps: int) -> torch.Tensor:
        """The times a `steps`-step sampler visits: 1 = t_0 > t_1 > ... > t_steps = 0."""
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)  # (steps + 1,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LogLinearSchedule(Schedule):
    """alpha(t) = 1 - t: the masking probability grows linearly in time; weight 1/t.

    MDLM calls it "log-linear" because its noise level sigma(t) = -log alpha(t) = -log(1 - t)
    is a log of a linear function. MDLM also shifts it to alpha(t) = 1 - (1 - eps) t so that
    alpha(1) = eps; here alpha(1) = 0 exactly (so the sampler's start, all masks, is exactly
    the forward process's end) and the singular weight at t = 0 is handled by sampling
    t >= TIME_EPS in the loss instead.
    """

    name = "loglinear"

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        return 1 - as_time(t)

    def alpha_prime(self, t: torch.Tensor | float) -> torch.Tensor:
        return -torch.ones_like(as_time(t))

    def mask_prob(self, t: torch.Tensor | float) -> torch.Tensor:
        return as_time(t).clone()


class CosineSchedule(Schedule):
    """alpha(t) = cos(pi t / 2): few tokens are masked early, most change near the end.

    alpha'(t) = -(pi / 2) sin(pi t / 2), and 1 - alpha(t) is computed as 2 sin^2(pi t / 4),
    the same number without the cancellation of 1 - cos(x) for small x (in float64,
    1 - cos(1e-8) is exactly 0). The weight is (pi / 2) cot(pi t / 4), about 2/t near 0:
    twice the log-linear one, which is why "1/t" is wrong here.
    """

    name = "cosine"

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        return torch.cos(math.pi / 2 * as_time(t))

    def alpha_prime(self, t: torch.Tensor | float) -> torch.Tensor:
        return -(math.pi / 2) * torch.sin(math.pi / 2 * as_time(t))

    def mask_prob(self, t: torch.Tensor | float) -> torch.Tensor:
        return 2 * torch.sin(math.pi / 4 * as_time(t)) ** 2


SCHEDULES: dict[str, type[Schedule]] = {
    "loglinear": LogLinearSchedule,
    "cosine": CosineSchedule,
}


def get_schedule(name: str | Schedule) -> Schedule:
    """The schedule called `name` ("loglinear" or "cosine"); a `Schedule` is returned as is."""
    if isinstance(name, Schedule):
        return name
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name]()


# -- denoisers and the forward process -------------------------------------------------------


def resolve_mask_id(denoiser: Denoiser, mask_id: int | None) -> int:
    """The mask id to use with `denoiser`: `mask_id`, else the denoiser's config.vocab_size.

    A model wrapped in DistributedDataParallel is looked through (its `.module`). A plain
    callable without a `config` must be given `mask_id`.
    """
    if mask_id is not None:
        if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 1:
            raise ValueError(f"mask_id must be a positive int, got {mask_id!r}")
        return mask_id
    config = getattr(getattr(denoiser, "module", denoiser), "config", None)
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is None:
        raise ValueError(
            "this denoiser has no config.vocab_size to take the mask id from: pass mask_id= "
            "(the id that marks a masked position, normally the number of real tokens)"
        )
    return int(vocab_size)


def denoise(denoiser: Denoiser, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Call `denoiser` on `x_t` (B, L) and check its logits (B, L, V), V <= mask_id."""
    logits = denoiser(x_t)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError("a denoiser must return logits of shape (batch, length, vocab)")
    if logits.shape[:2] != x_t.shape:
        raise ValueError(
            f"the denoiser returned logits of shape {tuple(logits.shape)} for ids of shape "
            f"{tuple(x_t.shape)}; expected ({x_t.shape[0]}, {x_t.shape[1]}, vocab)"
        )
    if logits.shape[-1] > mask_id:
        raise ValueError(
            f"the denoiser returned {logits.shape[-1]} logits per position but mask_id is "
            f"{mask_id}: it must score only the real tokens [0, mask_id), never the mask"
        )
    return logits


def check_clean(x0: torch.Tensor, mask_id: int) -> None:
    """Raise ValueError unless x0 is a (batch, length) LongTensor of tokens, none the mask."""
    if not isinstance(x0, torch.Tensor) or x0.dtype != torch.long or x0.dim() != 2:
        raise ValueError("x0 must be a LongTensor of clean token ids of shape (batch, length)")
    if x0.numel() == 0:
        raise ValueError(f"x0 is empty (shape {tuple(x0.shape)})")
    if x0.min() < 0 or x0.max() >= mask_id:
        raise ValueError(
            f"x0 must hold real tokens in [0, {mask_id}); it contains ids outside (the mask "
            f"id {mask_id} belongs in x_t, not in clean data)"
        )


def default_text_mask_id() -> int:
    """The character tokenizer's mask id: the default for the course's text models."""
    from course_lib.data import CharTokenizer

    return CharTokenizer().mask_id


def corrupt(
    x0: torch.Tensor,
    t: torch.Tensor | float,
    schedule: str | Schedule = "loglinear",
    *,
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x0): mask each token of x0 (B, L) independently w.p. 1 - alpha(t).

    `t` is one time for every sequence, or one per sequence (B,). `mask_id` defaults to the
    course's character tokenizer's; pass the source's for synthetic data. Draws one float64
    uniform per token from `generator` (notebook 04).
    """
    schedule = get_schedule(schedule)
    mask_id = default_text_mask_id() if mask_id is None else resolve_mask_id(None, mask_id)
    check_clean(x0, mask_id)
    t = as_time(t).to(x0.device)
    if t.dim() == 1 and t.numel() == x0.shape[0]:
        t = t[:, None]  # (B, 1): one time per sequence
    elif t.dim() != 0:
        raise ValueError(
            f"t must be a number or one time per sequence ({x0.shape[0]},), got {tuple(t.shape)}"
        )
    if t.min() < 0 or t.max() > 1:
        raise ValueError("diffusion times t must lie in [0, 1]")
    gen_device = env.generator_device(generator, x0.device)
    u = torch.rand(x0.shape, dtype=torch.float64, generator=generator, device=gen_device)
    masked = u.to(x0.device) < schedule.mask_prob(t)  # (B, L)
    return x0.masked_fill(masked, mask_id)


# -- the loss and the ELBO (notebook 05) -----------------------------------------------------


def sample_times(
    batch_size: int,
    *,
    time_eps: float = TIME_EPS,
    low_discrepancy: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """`batch_size` diffusion times in [time_eps, 1] (float64), one per sequence.

    Low-discrepancy (VDM's sampler, Kingma et al. 2021, arXiv:2107.00630): one uniform u,
    and t_b = (u + b / B) mod 1 for b = 0..B-1, so exactly one time falls in each of B equal
    strata. (MDLM's "antithetic" sampling stratifies too, with one uniform per example:
    t_b = (u_b + b) / B.) Each t_b is still uniform (the estimate stays unbiased) but the batch covers
    [0, 1] evenly, which lowers the variance of the batch's loss. Draws one uniform (B if
    `low_discrepancy=False`) from `generator`.
    """
    if not 0 <= time_eps < 1:
        raise ValueError(f"time_eps must be in [0, 1), got {time_eps}")
    gen_device = env.generator_device(generator, device)
    if low_discrepancy:
        u = torch.rand(1, dtype=torch.float64, generator=generator, device=gen_device)
        strata = torch.arange(batch_size, dtype=torch.float64, device=gen_device) / batch_size
        u = (u + strata) % 1.0  # (B,)
    else:
        u = torch.rand(batch_size, dtype=torch.float64, generator=generator, device=gen_device)
    return (time_eps + (1 - time_eps) * u).to(device)  # (B,)


def nelbo_per_sequence(
    denoiser: Denoiser,
    x0: torch.Tensor,
    schedule: str | Schedule,
    *,
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
    time_eps: float = TIME_EPS,
    low_discrepancy: bool = True,
) -> torch.Tensor:
    """A one-sample estimate of each sequence's NELBO in nats per token: (B,), differentiable.

    Random numbers, in this order: the times (`sample_times`), then the masks (`corrupt`).
    The estimate is (1 - time_eps) * w(t) * (sum over masked i of -log p(x0_i | x_t)) / L,
    an unbiased estimate of the integral over [time_eps, 1] (see TIME_EPS).
    """
    schedule = get_schedule(schedule)
    mask_id = resolve_mask_id(denoiser, mask_id)
    check_clean(x0, mask_id)
    B, L = x0.shape
    t = sample_times(
        B,
        time_eps=time_eps,
        low_discrepancy=low_discrepancy,
        generator=generator,
        device=x0.device,
    )  # (B,)
    x_t = corrupt(x0, t, schedule, mask_id=mask_id, generator=generator)  # (B, L)
    masked = x_t == mask_id  # (B, L): the only positions the loss scores (carry-over)
    logits = denoise(denoiser, x_t, mask_id)  # (B, L, V)
    # low-precision logits (bfloat16 autocast) are scored in float32; float64 ones stay float64
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    log_probs = F.log_softmax(logits, dim=-1)  # over the real tokens only
    nll = -log_probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # (B, L)
    nll = torch.where(masked, nll, torch.zeros_like(nll))  # unmasked tokens cost nothing
    weight = schedule.weight(t).to(nll.dtype)  # (B,): -alpha'(t) / (1 - alpha(t))
    interval = 1 - time_eps  # the length of [time_eps, 1]: E over U[time_eps, 1] times it
    return interval * weight * nll.sum(dim=1) / L  # (B,)


def masked_diffusion_loss(
    denoiser: Denoiser,
    x0: torch.Tensor,
    schedule: str | Schedule,
    *,
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
    time_eps: float = TIME_EPS,
    low_discrepancy: bool = True,
) -> torch.Tensor:
    """The masked-diffusion loss of clean ids x0 (B, L): a scalar, nats per token.

    A one-sample Monte Carlo estimate of the continuous-time NELBO averaged over all B * L
    tokens: one low-discrepancy time per sequence, a random mask, and w(t) times the
    cross-entropy of the masked tokens only. Notebook 05 derives it.
    """
    return nelbo_per_sequence(
        denoiser,
        x0,
        schedule,
        mask_id=mask_id,
        generator=generator,
        time_eps=time_eps,
        low_discrepancy=low_discrepancy,
    ).mean()


@torch.no_grad()
def elbo(
    denoiser: Denoiser,
    x0: torch.Tensor,
    schedule: str | Schedule,
    *,
    n_samples: int,
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    time_eps: float = TIME_EPS,
) -> tuple[float, float]:
    """The NELBO of sequences x0 (N, L) in bits per token, and its standard error.

    Each sequence's NELBO is estimated `n_samples` times (fresh times and masks each time,
    `batch_size` sequences per denoiser call) and averaged. The standard error is that of the
    mean over the N sequences: it covers the Monte Carlo noise of t and the masks *and* the
    sampling of the sequences themselves (as independent draws from their source), so it is
    the right yardstick for comparing with a source's entropy. (Stratified times make it
    slightly conservative.) This is an upper bound on the model's NLL, hence on the entropy of
    the data in expectation; notebook 05 compares it with the AR model's bits.

    A block-causal model (notebook 08) is scored with its own bound, BD3-LM's
    `block_nelbo_per_sequence`; every other denoiser with MDLM's `nelbo_per_sequence`.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mask_id = resolve_mask_id(denoiser, mask_id)
    check_clean(x0, mask_id)
    if x0.shape[0] < 2:
        raise ValueError("elbo needs at least 2 sequences to estimate a standard error")
    config = getattr(denoiser, "config", None)
    block = getattr(config, "attention", None) == "block_causal"
    per_sequence_bound = block_nelbo_per_sequence if block else nelbo_per_sequence
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    with eval_mode(denoiser):
        for _ in range(n_samples):
            for start in range(0, x0.shape[0], batch_size):
                chunk = x0[start : start + batch_size]
                estimate = per_sequence_bound(
                    denoiser,
                    chunk,
                    schedule,
                    mask_id=mask_id,
                    generator=generator,
                    time_eps=time_eps,
                )  # (chunk,)
                total[start : start + batch_size] += estimate.double().cpu()
    per_sequence = total / n_samples  # (N,) nats per token
    mean = per_sequence.mean().item()
    standard_error = per_sequence.std().item() / math.sqrt(len(per_sequence))
    return mean / math.log(2), standard_error / math.log(2)


def mdlm_objective(
    model: Denoiser, batch: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training objective "mdlm" for `course_lib.train`: nats per token.

    A batch from `train.TextBatches` (or `synthetic`'s sources) is (B, seq_len + 1), the extra
    id being the AR objective's last target. The diffusion model's clean x0 is `batch[:, :-1]`,
    exactly the AR model's input, so both see seq_len tokens per window and presets share
    seq_len and context_len. Log-linear schedule, low-discrepancy times.
    """
    return masked_diffusion_loss(model, batch[:, :-1], "loglinear", generator=generator)


# -- block diffusion: BD3-LM's loss (notebook 08) -------------------------------------------


def _block_len_of(model: Denoiser) -> int:
    """The block length of a block-causal `model` (looking through DistributedDataParallel)."""
    config = getattr(getattr(model, "module", model), "config", None)
    if getattr(config, "attention", None) != "block_causal":
        raise ValueError(
            "the block-diffusion loss needs a block-causal model (ModelConfig(attention="
            "'block_causal', block_len=...)): each block may see only earlier blocks"
        )
    return int(config.block_len)


def next_token_shift(model) -> bool:
    """Whether `model`'s logits at position i predict token i + 1 (`ModelConfig.next_token_shift`)."""
    config = getattr(getattr(model, "module", model), "config", None)
    return bool(getattr(config, "next_token_shift", False))


def bd3lm_attention_mask(
    length: int, block_len: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Who sees whom when a noisy and a clean copy of a sequence are read side by side.

    Bool (2 * length, 2 * length), True = may attend; ids 0..length-1 are the noisy copy,
    length..2*length-1 the clean copy, both at positions 0..length-1. With k(i) the block of
    position i: a noisy token i sees noisy j when k(j) == k(i) (its own block, bidirectional)
    and clean j when k(j) < k(i) (the finished blocks before it); a clean token i sees clean
    j when k(j) <= k(i) (block-causal) and never a noisy one.
    """
    block = torch.arange(length, device=device) // block_len  # (L,)
    same = block[:, None] == block[None, :]  # (L, L)
    before = block[None, :] < block[:, None]  # key's block before the query's
    noisy_rows = torch.cat([same, before], dim=1)  # (L, 2L)
    clean_rows = torch.cat([torch.zeros_like(same), same | before], dim=1)
    return torch.cat([noisy_rows, clean_rows], dim=0)  # (2L, 2L)


def block_nelbo_per_sequence(
    model: Denoiser,
    x0: torch.Tensor,
    schedule: str | Schedule,
    *,
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
    time_eps: float = TIME_EPS,
    low_discrepancy: bool = True,
) -> torch.Tensor:
    """BD3-LM's NELBO estimate of each sequence in nats per token: (B,), differentiable.

    The sequence is cut into blocks of the model's `block_len`. Block diffusion factorises
    p(x) = prod over blocks k of p(block_k | blocks before k), and each factor is a masked-
    diffusion model of one block given a *clean* prefix. So the NELBO is a sum over blocks of
    the MDLM NELBO of that block: every block gets its own time t_k (one per block,
    stratified over all B * n_blocks blocks of the batch), its own mask, the weight
    -alpha'(t_k) / (1 - alpha(t_k)), and is denoised seeing the clean blocks before it and
    its own noisy tokens.

    How it is computed, exactly and in one forward (BD3-LM's vectorised form, so it also
    works under DistributedDataParallel): the model reads the noisy sequence and the clean
    sequence side by side, 2L ids with positions 0..L-1 twice, under `bd3lm_attention_mask`:
    a noisy token sees its own noisy block and the clean blocks before it; a clean token sees
    clean blocks up to its own. The logits of the noisy half are the loss's; the clean half
    only supplies keys and values. That costs about twice an MDLM step, where the obvious
    form (one copy of the sequence per block) costs n_blocks times.

    With `ModelConfig.next_token_shift` (the logits at i predict token i + 1, as AR's head
    does), `x0` is (B, L + 1) and the bound is of its last L ids. Targets k*b+1..(k+1)*b are
    read at inputs k*b..(k+1)*b-1: the clean token before the block, then the block's noisy
    targets but its last (which only the next block reads).

    Random numbers, in this order: the times (`sample_times`, B * n_blocks), then one float64
    uniform per token for the masks. With a single block it is exactly `nelbo_per_sequence`.
    """
    schedule = get_schedule(schedule)
    mask_id = resolve_mask_id(model, mask_id)
    check_clean(x0, mask_id)
    block_len = _block_len_of(model)
    shift = next_token_shift(model)
    if shift:  # x0[:, 0] is the context; the bound is of x0[:, 1:], read one place earlier
        x0, targets = x0[:, :-1], x0[:, 1:]
    else:
        targets = x0
    B, L = x0.shape
    if L % block_len:
        raise ValueError(f"block_len={block_len} must divide the sequence length {L}")
    n_blocks = L // block_len
    t = sample_times(
        B * n_blocks,
        time_eps=time_eps,
        low_discrepancy=low_discrepancy,
        generator=generator,
        device=x0.device,
    ).view(B, n_blocks)  # (B, n_blocks): one time per block
    gen_device = env.generator_device(generator, x0.device)
    u = torch.rand(x0.shape, dtype=torch.float64, generator=generator, device=gen_device)
    mask_prob = schedule.mask_prob(t).repeat_interleave(block_len, dim=1)  # (B, L)
    masked = u.to(x0.device) < mask_prob  # (B, L): which targets are masked
    if shift:  # input i is target i - 1; a block's first input is the clean token before it
        x_t = torch.cat([x0[:, :1], targets[:, :-1].masked_fill(masked[:, :-1], mask_id)], 1)
        x_t[:, ::block_len] = x0[:, ::block_len]
    else:
        x_t = x0.masked_fill(masked, mask_id)  # (B, L)
    positions = torch.arange(L, device=x0.device).repeat(2)  # (2L,): noisy half, clean half
    logits = model(
        torch.cat([x_t, x0], dim=1),  # (B, 2L)
        positions=positions,
        attn_mask=bd3lm_attention_mask(L, block_len, device=x0.device),
    )[:, :L]  # (B, L, V): the noisy half's predictions
    if logits.shape[-1] > mask_id:
        raise ValueError(f"the model scores {logits.shape[-1]} tokens; mask_id is {mask_id}")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    log_probs = F.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L)
    nll = torch.where(masked, nll, torch.zeros_like(nll))  # carry-over: unmasked cost nothing
    weight = schedule.weight(t).to(nll.dtype)  # (B, n_blocks)
    per_block = nll.view(B, n_blocks, block_len).sum(-1)  # (B, n_blocks)
    return (1 - time_eps) * (weight * per_block).sum(1) / L  # (B,)


def bd3lm_objective(
    model: Denoiser, batch: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training objective "bd3lm" for `course_lib.train`: nats per token.

    As `mdlm_objective` (clean x0 = `batch[:, :-1]`, log-linear schedule, stratified times),
    with BD3-LM's per-block loss (`block_nelbo_per_sequence`) for a block-causal model.
    """
    x0 = batch if next_token_shift(model) else batch[:, :-1]
    return block_nelbo_per_sequence(model, x0, "loglinear", generator=generator).mean()
