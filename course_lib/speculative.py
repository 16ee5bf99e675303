"""Speculative decoding: AR's own way to write more than one token per forward (notebook 12).

A small *draft* model proposes `draft_len` tokens, one cheap forward each. The *target* model
scores all of them in one forward, and a rejection rule keeps a prefix of them and draws one
more token, so that every token written follows exactly the target's distribution (Leviathan
et al. 2023, arXiv:2211.17192; Chen et al. 2023, arXiv:2302.01318):

- drafted token x, drawn from q, is kept with probability min(1, p(x) / q(x));
- at the first rejection, the token is drawn instead from the residual max(0, p - q),
  normalised, and the round ends;
- when every drafted token is kept, one more is drawn from p at the next position.

Each round costs one target forward and writes between 1 and `draft_len + 1` tokens: how many
depends on how often the draft agrees with the target. A diffusion model's tokens per forward
must be compared with this, AR's own answer, not only with one token per forward.

Models are causal callables `ids (1, L) -> logits (1, L, V)`, where the logits at position i
predict token i + 1 (the course's AR `Transformer`, or an exact synthetic source in the
tests). For two Transformers, KV caches make each draft step one new position and each
verification only the new positions; a rejected suffix is dropped by rolling a cache back.
Batch 1: every sequence would accept a different number of tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from course_lib import env
from course_lib.model import Transformer, eval_mode
from course_lib.sampling import check_temperature, logits_to_probs, sample_categorical

ARModel = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SpeculativeSample:
    """Tokens (1, prompt + n_tokens) and what they cost."""

    tokens: torch.Tensor
    n_tokens: int
    target_forwards: int = 0
    draft_forwards: int = 0
    accepted: list[int] = field(default_factory=list)  # drafted tokens kept, per round

    @property
    def tokens_per_target_forward(self) -> float:
        return self.n_tokens / self.target_forwards


def accept_or_resample(
    p: torch.Tensor,
    q: torch.Tensor,
    drafted: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """The rule that keeps the target's distribution: (drafted tokens kept, next token).

    p (k + 1, V): the target's probabilities at the k drafted positions and one more; q (k, V):
    the draft's, from which `drafted` (k,) was drawn. One float64 uniform per drafted token
    decides its fate, in order; the next token comes from the residual at the first rejection,
    else from p[k].
    """
    k = drafted.numel()
    gen_device = env.generator_device(generator, p.device)
    u = torch.rand(k, dtype=torch.float64, generator=generator, device=gen_device).tolist()
    for i in range(k):
        token = int(drafted[i])
        if u[i] * q[i, token] < p[i, token]:  # u < p/q without dividing by a tiny q
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        return i, int(sample_categorical(residual / residual.sum(), generator))
    return k, int(sample_categorical(p[k], generator))


class _Scorer:
    """Next-token probabilities of a growing sequence, from a KV cache when it has one."""

    def __init__(self, model: ARModel, temperature: float, use_cache: bool) -> None:
        self.model, self.temperature = model, temperature
        self.cache = model.new_cache(1) if use_cache else None
        self.forwards = 0

    def probs(self, seq: torch.Tensor, n_new: int) -> torch.Tensor:
        """Probabilities (n_new, V) of the token after each of seq's last n_new positions."""
        self.forwards += 1
        if self.cache is None:
            logits = self.model(seq.unsqueeze(0))[0, -n_new:]
        else:  # run only what the cache does not hold yet
            logits = self.model(seq[self.cache.length :].unsqueeze(0), cache=self.cache)[0]
            logits = logits[-n_new:]
        return logits_to_probs(logits, self.temperature)

    def keep(self, length: int) -> None:
        """Forget cached positions from `length` on (a rejected draft's)."""
        if self.cache is not None:
            self.cache.length = min(self.cache.length, length)


@torch.inference_mode()
def sample_speculative(
    target: ARModel,
    draft: ARModel,
    *,
    prompt: torch.Tensor,
    n_tokens: int,
    draft_len: int = 4,
    temperature: float = 1.0,
    use_kv_cache: bool = True,
    generator: torch.Generator | None = None,
) -> SpeculativeSample:
    """Continue `prompt` (L,) by `n_tokens` tokens drawn exactly from `target` at `temperature`.

    `draft` proposes up to `draft_len` tokens per round. KV caches are used when both models
    are `Transformer`s and `use_kv_cache` (the tokens are the same either way).
    """
    if not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive int, got {n_tokens!r}")
    if not isinstance(draft_len, int) or draft_len < 0:
        raise ValueError(f"draft_len must be an int >= 0, got {draft_len!r}")
    check_temperature(temperature)
    if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.long or prompt.dim() != 1:
        raise ValueError("prompt must be a 1-D LongTensor of ids (speculative decoding is batch 1)")
    if prompt.numel() == 0:
        raise ValueError("prompt must hold at least one token; start from a newline")
    models = [m for m in (target, draft) if isinstance(m, Transformer)]
    for model in models:
        if model.config.attention != "causal":
            raise ValueError(f"both models must be causal, one is {model.config.attention!r}")
        if prompt.numel() + n_tokens > model.config.context_len:
            raise ValueError(
                f"prompt + n_tokens = {prompt.numel() + n_tokens} exceeds a model's context "
                f"({model.config.context_len})"
            )
    with eval_mode(target), eval_mode(draft):
        return _decode(
            target,
            draft,
            prompt,
            n_tokens,
            draft_len,
            temperature,
            generator,
            caching=use_kv_cache and len(models) == 2,
        )


def _decode(target, draft, prompt, n_tokens, draft_len, temperature, generator, *, caching):
    """The rounds of `sample_speculative`: draft, verify, keep a prefix, roll the caches back."""
    verifier = _Scorer(target, temperature, caching)
    proposer = _Scorer(draft, temperature, caching)
    seq = prompt.clone()
    result = SpeculativeSample(tokens=seq, n_tokens=n_tokens)
    end = prompt.numel() + n_tokens
    while seq.numel() < end:
        k = min(draft_len, end - seq.numel() - 1)  # the round writes at most k + 1 tokens
        drafted, q = [], []
        for _ in range(k):
            probs = proposer.probs(torch.cat([seq, seq.new_tensor(drafted)]), 1)[0]  # (V,)
            q.append(probs)
            drafted.append(int(sample_categorical(probs, generator)))
        drafted_ids = seq.new_tensor(drafted)
        p = verifier.probs(torch.cat([seq, drafted_ids]), k + 1)  # (k + 1, V)
        kept, nxt = accept_or_resample(p, torch.stack(q) if q else p[:0], drafted_ids, generator)
        seq = torch.cat([seq, drafted_ids[:kept], seq.new_tensor([nxt])])
        # the caches may keep every position whose token is now final (all but the newest)
        verifier.keep(seq.numel() - 1)
        proposer.keep(seq.numel() - 1)
        result.accepted.append(kept)
    result.tokens = seq.unsqueeze(0)
    result.target_forwards, result.draft_forwards = verifier.forwards, proposer.forwards
    return result
