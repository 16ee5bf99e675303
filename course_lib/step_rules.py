"""The pieces of one sampling step, shared by every sampler of the course.

The reference samplers (`sampling`, notebooks 03, 06 and 08) and the optimized ones (`fast`,
notebook 09) turn logits into probabilities, draw categoricals and decide what a diffusion step
reveals with these functions, so the two cannot drift apart: a change here changes both, and
the tests that compare them still hold. `sampling` re-exports every public name here
(`sampling.confident_commit` is this module's `confident_commit`).

Categoricals are drawn in float64 by inverting the CDF with one uniform number per draw;
`gumbel_max_sample` shows what goes wrong with low-precision noise.
"""

from __future__ import annotations

import bisect
import math

import torch

from course_lib import env


def logits_to_probs(
    logits: torch.Tensor,
    temperature: float = 1.0,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """float64 probabilities from logits (..., V), after temperature, top-k and top-p."""
    check_temperature(temperature)
    logits = logits.double() / temperature
    vocab = logits.shape[-1]
    if top_k is not None:
        if not 1 <= top_k <= vocab:
            raise ValueError(f"top_k must be in [1, {vocab}], got {top_k}")
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest set of most likely tokens whose mass reaches top_p
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_categorical(
    probs: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One draw from each categorical in `probs` (..., V): ids of shape (...).

    Inverse-CDF sampling in float64: one uniform u per draw, the id is the first whose
    cumulative probability exceeds u. The generator may live on the CPU for any device.
    """
    gen_device = env.generator_device(generator, probs.device)
    u = torch.rand(probs.shape[:-1], dtype=torch.float64, generator=generator, device=gen_device)
    return categorical_from_uniforms(probs, u.to(probs.device))


def categorical_from_uniforms(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """`sample_categorical` with its float64 uniforms `u` (...) already drawn (a sampler
    that draws a whole block's numbers before the block's loop uses it)."""
    cdf = probs.double().cumsum(-1)
    u = u * cdf[..., -1]  # scale by the total mass, which rounding leaves ~1
    ids = torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1)
    return ids.clamp_(max=probs.shape[-1] - 1)


def categorical_from_cdf(cdf: list[float], u: float) -> int:
    """`categorical_from_uniforms` for one categorical, in plain Python: `cdf` its float64
    cumulative probabilities as a list (`probs.double().cumsum(-1).tolist()`), `u` its
    uniform. The same id bit for bit (the same float64 product, the same comparisons), for a
    walk that draws one token at a time and would pay several tensor calls a draw."""
    return min(bisect.bisect_right(cdf, u * cdf[-1]), len(cdf) - 1)


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}; for the most likely token use a small "
            "temperature such as 0.01 or top_k=1"
        )


STRATEGIES = ("ancestral", "ancestral_cached", "confidence", "threshold")
CONFIDENCES = ("low_confidence", "margin", "entropy")
DEFAULT_THRESHOLD = 0.9


def position_confidence(probs: torch.Tensor, proposal: torch.Tensor, kind: str) -> torch.Tensor:
    """How sure the denoiser is at each position, in [0, 1]: (B, L) from probs (B, L, V).

    "low_confidence" (LLaDA's name: low-confidence positions stay masked): the probability of
    the drawn token `proposal`. "margin": top-1 minus top-2 probability. "entropy":
    1 - H(p) / log V (1 = certain, 0 = uniform).
    """
    if kind == "low_confidence":
        return probs.gather(-1, proposal.unsqueeze(-1)).squeeze(-1)
    V = probs.shape[-1]
    if V == 1:
        return torch.ones(probs.shape[:-1], dtype=probs.dtype, device=probs.device)
    if kind == "margin":
        top2 = torch.topk(probs, 2, dim=-1).values  # (B, L, 2)
        return top2[..., 0] - top2[..., 1]
    if kind == "entropy":
        entropy = -torch.special.xlogy(probs, probs).sum(-1)  # (B, L) nats
        return 1 - entropy / torch.log(torch.tensor(float(V), dtype=probs.dtype))
    raise ValueError(f"unknown confidence {kind!r}: choose one of {CONFIDENCES}")


# The step rules. Every diffusion sampler of the course, the reference ones here and the
# optimized one in `fast`, decides what a step reveals with these functions, so the two cannot
# drift apart: a change here changes both, and the tests that compare them still hold.


def reveal_probability(alphas: list[float], j: int) -> float:
    """The chance that ancestral step j (from alphas[j] to alphas[j + 1]) unmasks a masked
    token: (alpha_s - alpha_t) / (1 - alpha_t), set to exactly 1 at the last step (alpha = 1
    there makes the ratio 1 up to rounding)."""
    if j == len(alphas) - 2:
        return 1.0
    alpha_t, alpha_s = alphas[j], alphas[j + 1]  # from time t down to time s < t
    return (alpha_s - alpha_t) / (1 - alpha_t)


def masks_left_after(n_masked: torch.Tensor, alphas: list[float]) -> torch.Tensor:
    """How many masks each row may still hold after each step: (B, steps) int64, 0 after the
    last. `n_masked` (B,) counts each row's masks before the first step; the schedule keeps
    round(n_masked * (1 - alpha)) of them after a step that ends at alpha."""
    mask_probs = 1 - torch.tensor(alphas[1:], dtype=torch.float64, device=n_masked.device)
    left = torch.round(n_masked.double()[:, None] * mask_probs[None, :]).long()
    left[:, -1] = 0
    return left


def commit_quota(n_masked, left_after):
    """How many tokens a "confidence" step commits: down to the schedule's count, at least one,
    at most what is masked. Ints (the host's bookkeeping) or (B,) tensors alike."""
    if isinstance(n_masked, torch.Tensor):
        return torch.minimum((n_masked - left_after).clamp(min=1), n_masked)
    return min(max(n_masked - left_after, 1), n_masked)


def confident_commit(
    probs: torch.Tensor,
    proposal: torch.Tensor,
    masked: torch.Tensor,
    left_after: torch.Tensor,
    kind: str,
    threshold: float | None,
) -> torch.Tensor:
    """Which positions a confidence or threshold step commits: (B, L) bool.

    probs (B, L, V), the drawn `proposal` (B, L) and `masked` (B, L); `left_after` (B,) is the
    schedule's count for this step (`masks_left_after`). The masked positions are ranked by
    `position_confidence` (ties keep position order) and the first `commit_quota` of each row
    are committed; with a `threshold`, so is every masked position whose confidence is above it.
    """
    conf = position_confidence(probs, proposal, kind)  # (B, L) in [0, 1]
    conf = conf.masked_fill(~masked, float("-inf"))  # only masked positions compete
    quota = commit_quota(masked.sum(1), left_after)  # (B,)
    order = torch.sort(conf, dim=1, descending=True, stable=True).indices  # (B, L)
    in_quota = torch.arange(masked.shape[1], device=masked.device)[None, :] < quota[:, None]
    commit = torch.zeros_like(masked).scatter(1, order, in_quota)  # (B, L), by position
    if threshold is not None:
        commit |= masked & (conf > threshold)
    return commit


def gumbel_max_sample(
    logits: torch.Tensor,
    *,
    noise_dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draws argmax(logits + Gumbel noise) with the noise made in `noise_dtype`: ids (...).

    Gumbel-max is exact with exact noise g = -log(-log u). A uniform made in float32 has 24
    random bits: u <= 1 - 2^-24, so g <= 24 log 2 ~ 16.6, and the upper tail of g comes in
    coarse steps: a token far below the top wins less often than it should, or never.
    Rare tokens lose mass and frequent ones gain it, like sampling at a lower temperature
    (Zheng et al. 2024 traced MDLM's flattering generative perplexities to this). With a
    character vocabulary the float32 effect is tiny; bfloat16 noise (8 bits, g <= 8 log 2 ~ 5.5)
    shows it plainly. The course's samplers avoid it: float64 inverse-CDF sampling
    (`sample_categorical`). Notebook 06 compares token frequencies.

    The uniform is drawn in float64 and cut to as many random bits as `noise_dtype`'s
    significand holds (exactly what `torch.rand` makes in float32), then the logs are taken
    in `noise_dtype`. Zheng et al. 2024: arXiv:2409.02908.
    """
    # significand bits: 53 float64, 24 float32, 11 float16, 8 bfloat16
    bits = round(-math.log2(torch.finfo(noise_dtype).eps)) + 1
    gen_device = env.generator_device(generator, logits.device)
    u = torch.rand(logits.shape, dtype=torch.float64, generator=generator, device=gen_device)
    u = (torch.floor(u * 2.0**bits) / 2.0**bits).to(logits.device, noise_dtype)  # k / 2^bits
    gumbel = -torch.log(-torch.log(u))  # in noise_dtype; u = 0 gives -inf (never chosen)
    return (logits.double() + gumbel.double()).argmax(dim=-1)


def _check_strategy(strategy, threshold, confidence) -> float | None:
    """Check a sampler's strategy arguments; the threshold to use (None if unused).

    A threshold is a confidence in [0, 1]: 0 commits every masked position at the first
    step, 1 only the quota (never more than the schedule asks).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {STRATEGIES}")
    if confidence is not None and strategy not in ("confidence", "threshold"):
        raise ValueError(
            f"confidence= is for the confidence/threshold strategies, not {strategy!r}"
        )
    if confidence is not None and confidence not in CONFIDENCES:
        raise ValueError(f"unknown confidence {confidence!r}: choose one of {CONFIDENCES}")
    if threshold is not None and strategy != "threshold":
        raise ValueError(f"threshold= is for strategy='threshold', not {strategy!r}")
    if strategy != "threshold":
        return None
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (a confidence), got {threshold}")
    return threshold
