"""One transformer for every model of the course (notebook 02).

The same network is an autoregressive model, a masked-diffusion denoiser or a block-diffusion
model; only the attention pattern changes:

- ``"causal"``: position i sees positions <= i (AR models; KV cache supported).
- ``"bidirectional"``: every position sees every position (masked diffusion).
- ``"block_causal"``: positions are grouped in blocks of `block_len`; position i sees every
  position whose block is <= its own (block diffusion; KV cache supported).

`forward(idx)` maps ids (B, L) to logits (B, L, vocab_size). The input embedding has one more
row than the output head: the mask id `vocab_size` can be read but never predicted.

Positions enter in one of two ways (`ModelConfig.position`):

- ``"learned"``: a trained vector per position is added to each token's embedding (GPT-2).
- ``"rotary"``: nothing is added; inside attention each query and key is rotated by angles
  proportional to its position (RoPE, Su et al. 2021), so a query-key score depends only on
  the two vectors and the *offset* between their positions. The shipped checkpoints use it:
  with the same training budget it reaches clearly lower loss, most of all for diffusion.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTIONS = ("causal", "bidirectional", "block_causal")
POSITIONS = ("learned", "rotary")
ROTARY_BASE = 10_000.0  # the slowest rotation turns once per ~2*pi*10_000 positions


@dataclass
class ModelConfig:
    """The shape of a `Transformer`. Defaults: the course's small character model."""

    vocab_size: int = 98  # real tokens; the mask id is vocab_size (an input only)
    context_len: int = 256  # longest sequence the position embedding covers
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    mlp_ratio: int = 4
    dropout: float = 0.0
    attention: str = "causal"
    block_len: int | None = None  # only for attention="block_causal"
    position: str = "learned"  # "learned" embedding or "rotary" (RoPE); see the module doc
    # block_causal only: the logits at position i predict token i + 1, as an AR model's do
    # (the block diffusion of Fast-dLLM v2 and SDAR, which keeps an AR model's head)
    next_token_shift: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        for name in ("vocab_size", "context_len", "n_layer", "n_head", "d_model", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.position == "rotary" and self.head_dim % 2:
            raise ValueError(
                f"position='rotary' rotates pairs of dimensions: head_dim={self.head_dim} "
                "must be even"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attention == "block_causal":
            if self.block_len is None or self.block_len < 1:
                raise ValueError("attention='block_causal' needs a positive block_len")
            if self.context_len % self.block_len:
                raise ValueError(
                    f"block_len={self.block_len} must divide context_len={self.context_len}"
                )
        elif self.block_len is not None:
            raise ValueError(
                f"block_len is only for attention='block_causal', not {self.attention!r}"
            )
        if not isinstance(self.next_token_shift, bool):
            raise ValueError(f"next_token_shift must be a bool, got {self.next_token_shift!r}")
        if self.next_token_shift and self.attention != "block_causal":
            raise ValueError(
                "next_token_shift is for block diffusion (attention='block_causal'), not "
                f"{self.attention!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


def attention_mask(
    config: ModelConfig, q_pos: torch.Tensor, k_pos: torch.Tensor
) -> torch.Tensor | None:
    """Which keys each query may see: bool (Lq, Lk), True = allowed; None = everything.

    `q_pos` and `k_pos` are absolute positions, so the same rule serves a full forward and a
    forward that appends to a KV cache.
    """
    if config.attention == "bidirectional":
        return None
    if config.attention == "causal":
        return k_pos[None, :] <= q_pos[:, None]
    block_len = config.block_len
    return (k_pos[None, :] // block_len) <= (q_pos[:, None] // block_len)


def rotary_angles(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each float32 (T, head_dim // 2), of RoPE's angles at `positions` (T,).

    Dimension pair i turns by angle position * ROTARY_BASE ** (-2i / head_dim): the first
    pairs spin fast (fine position), the last ones slowly (coarse position).
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    freqs = ROTARY_BASE ** (-exponents / head_dim)  # (head_dim // 2,)
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]  # (T, head_dim // 2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate queries or keys x (B, H, T, D) by `rotary_angles`: pair (x[i], x[i + D/2])."""
    cos, sin = (t.to(x.dtype) for t in rotary)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


@contextlib.contextmanager
def eval_mode(module) -> Iterator[None]:
    """Eval mode (no dropout) for the block, then the module's own mode again, even after an
    exception. Anything that is not an nn.Module (a plain denoiser function) is left alone.
    The one way the course switches a model to eval mode and back."""
    if not isinstance(module, nn.Module):
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def device_and_dtype(module, default_device: torch.device | str = "cpu"):
    """Where `module`'s weights live and their dtype: (device, dtype). A module without
    weights, or a plain denoiser function, gets (`default_device`, float32). The one way the
    course asks a model where it runs."""
    parameters = module.parameters() if isinstance(module, nn.Module) else iter(())
    first = next(parameters, None)
    if first is None:
        return torch.device(default_device), torch.float32
    return first.device, first.dtype


class KVCache:
    """Preallocated keys and values of every layer, filled left to right.

    Buffers are (B, n_head, context_len, head_dim) per layer and never move or grow, so a
    decoding loop that uses them has static shapes. `length` counts the cached positions.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, config.n_head, config.context_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)
        ]
        self.batch_size = batch_size
        self.capacity = config.context_len
        self.length = 0

    def reset(self) -> None:
        self.length = 0


class SelfAttention(nn.Module):
    """Multi-head self-attention under whatever mask the model passes: causal, bidirectional
    or block-causal (`attention_mask`), with an optional KV cache."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
        start: int = 0,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        H, D = self.config.n_head, self.config.head_dim
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)
        v = v.view(B, T, H, D).transpose(1, 2)
        if rotary is not None:  # keys are rotated before caching: their positions are final
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        if cache is not None:
            # write the new keys/values at start.. and attend to every cached one: those
            # before them and, where the cache holds more (Fast-dLLM's dual cache), after
            cache.keys[layer][:, :, start : start + T] = k
            cache.values[layer][:, :, start : start + T] = v
            end = max(start + T, cache.length)
            k = cache.keys[layer][:, :, :end]  # (B, H, end, D)
            v = cache.values[layer][:, :, :end]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.proj(y)


CausalSelfAttention = SelfAttention  # its name until the course had three masks


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.proj = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x, mask, cache=None, layer=0, start=0, rotary=None):
        x = x + self.attn(self.ln1(x), mask, cache, layer, start, rotary)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """A GPT-style transformer whose attention pattern is set by `config.attention`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token_emb = nn.Embedding(config.vocab_size + 1, config.d_model)  # +1: mask id
        self.pos_emb = (
            nn.Embedding(config.context_len, config.d_model)
            if config.position == "learned"
            else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections so the residual stream's variance stays O(1)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def mask_id(self) -> int:
        return self.config.vocab_size

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The residual stream's input (B, L, d_model): token embeddings, plus learned
        position embeddings when the model has them (dropout not applied)."""
        x = self.token_emb(idx)
        return x if self.pos_emb is None else x + self.pos_emb(positions)

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """RoPE's (cos, sin) at `positions` for a rotary model, None for a learned one."""
        if self.config.position != "rotary":
            return None
        return rotary_angles(positions, self.config.head_dim)

    def forward(
        self,
        idx: torch.Tensor,
        *,
        cache: KVCache | None = None,
        update_cache: bool = True,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, vocab_size) for ids `idx` (B, L).

        With a `cache`, `idx` holds the next L positions after the `cache.length` cached
        ones; they attend to the cache and to each other under the model's mask. The cache
        then keeps them (`update_cache=True`) or forgets them (False: e.g. a block that is
        still being denoised).

        Without a cache, two hooks let a training loss lay out its own sequence: `positions`
        (L,) gives each id's position (default 0..L-1; repeats allowed) and `attn_mask` (L, L)
        bool, True = may attend, replaces the pattern of `config.attention`. Block diffusion
        uses them to score a noisy copy and a clean copy of a sequence side by side
        (`diffusion.block_nelbo_per_sequence`).
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, length), got shape {tuple(idx.shape)}")
        B, L = idx.shape
        start = 0
        if cache is not None:
            if positions is not None or attn_mask is not None:
                raise ValueError("positions and attn_mask are for a forward without a cache")
            if self.config.attention == "bidirectional":
                raise ValueError(
                    "a bidirectional model has no exact KV cache: every position's keys change "
                    "when any token changes (notebook 08 shows an approximate prefix cache)"
                )
            if cache.batch_size != B:
                raise ValueError(f"cache is for batch {cache.batch_size}, idx has batch {B}")
            start = cache.length
        key_positions = positions  # without a cache, queries and keys are the same ids
        if positions is None:
            if start + L > self.config.context_len:
                raise ValueError(
                    f"sequence of {start + L} positions is longer than the model's context "
                    f"({self.config.context_len}); shorten the prompt or the generation"
                )
            positions = torch.arange(start, start + L, device=idx.device)
            key_positions = torch.arange(start + L, device=idx.device)
        elif (
            positions.shape != (L,)
            or positions.min() < 0
            or positions.max() >= self.config.context_len
        ):
            raise ValueError(
                f"positions must be ({L},) with values in [0, {self.config.context_len})"
            )
        x = self.drop(self.embed(idx, positions))  # (B, L, d_model)
        rotary = self.rotary(positions)  # queries and keys are the same ids here
        if attn_mask is not None:
            if attn_mask.shape != (L, L) or attn_mask.dtype != torch.bool:
                raise ValueError(f"attn_mask must be a bool tensor of shape ({L}, {L})")
            mask = attn_mask
        else:
            mask = attention_mask(self.config, positions, key_positions)  # (L, start + L)
        for layer, block in enumerate(self.blocks):
            x = block(x, mask, cache, layer, start, rotary)
        if cache is not None and update_cache:
            cache.length = start + L
        return self.head(self.ln_f(x))  # (B, L, vocab_size)

    def new_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for this model on its device (in its embeddings' dtype)."""
        p = self.token_emb.weight
        return KVCache(self.config, batch_size, device=p.device, dtype=dtype or p.dtype)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the embeddings (the usual scaling-law count)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.token_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n


def forward_flops(config: ModelConfig, n_tokens: int, context: int | None = None) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward that scores `n_tokens` positions.

    Each scored token costs 2 FLOPs per weight of every matmul (the `2N` rule) plus its
    attention: 2 * 2 * d_model FLOPs per layer per key it attends to (scores QK^T and the
    weighted sum of V). `context` is the number of keys each query sees (default: n_tokens,
    i.e. full attention over the scored positions). Rotary position embeddings add a few
    elementwise FLOPs per query and key, negligible beside these and not counted.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    context = n_tokens if context is None else context
    d, f = config.d_model, config.mlp_ratio * config.d_model
    matmul_weights_per_layer = d * 3 * d + d * d + d * f + f * d
    head_weights = d * config.vocab_size
    dense = 2 * n_tokens * (config.n_layer * matmul_weights_per_layer + head_weights)
    attention = 2 * 2 * config.n_layer * n_tokens * context * d
    return dense + attention
