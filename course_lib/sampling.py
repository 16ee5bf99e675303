"""Drawing text from a model: autoregressive decoding (notebook 03).

Categoricals are drawn in float64 by inverting the CDF with one uniform number per draw, so
that (a) low-probability tokens are not lost to float32 rounding and (b) every sampler consumes
the random stream in the same, documented way: the same seed gives the same tokens whether or
not a KV cache is used.
"""

from __future__ import annotations

import torch

from course_lib.model import Transformer


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
    gen_device = generator.device if generator is not None else probs.device
    u = torch.rand(probs.shape[:-1], dtype=torch.float64, generator=generator, device=gen_device)
    cdf = probs.double().cumsum(-1)
    u = u.to(probs.device) * cdf[..., -1]  # scale by the total mass, which rounding leaves ~1
    ids = torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1)
    return ids.clamp_(max=probs.shape[-1] - 1)


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}; for the most likely token use a small "
            "temperature such as 0.01 or top_k=1"
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
    device = next(model.parameters()).device
    seq = _as_batch(prompt).to(device)
    if seq.max() >= model.config.vocab_size or seq.min() < 0:
        raise ValueError(f"prompt ids must be in [0, {model.config.vocab_size})")
    total = seq.shape[1] + n_tokens
    if total > model.config.context_len:
        raise ValueError(
            f"prompt ({seq.shape[1]}) + n_tokens ({n_tokens}) = {total} exceeds the model's "
            f"context of {model.config.context_len}; shorten one of them"
        )
    was_training = model.training
    model.eval()
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
    model.train(was_training)
    return out
