"""A block-diffusion model read left to right, and sampled that way several tokens per forward
with its own drafts (notebook 12).

A block-causal diffusion model (notebook 08) predicts every masked position of a block from the
clean blocks before it and the block's clean positions. Asked for position j with the block's
positions before j clean and j onward masked, it gives a conditional p(x_j | x_<j): the model
then *is* a left-to-right model, with an exact likelihood (`left_to_right_bits`) and an exact
sampler, one token per forward (`sample_left_to_right`). The ELBO is not that likelihood: it
averages the model's predictions over random masks, and so over every order of revealing a
block, most of them harder than left to right.

Its one-token-per-forward law can be sampled faster with speculative decoding, the model being
its own draft (`sample_self_speculative`). The forward that predicts position j with j onward
masked also predicts every later position of the block: marginals, which ignore each other, so
the draft is cheap but often wrong. A round checks the drafts with the rule of
`speculative.accept_or_resample`, which keeps exactly the target law whatever the draft: the
network reads, in one forward, one *row* per drafted token (the block with the drafts before it
filled in), each row giving the target's conditional at its drafted position. The row with every
draft filled in carries the next block, masked, behind it: if every draft is kept, its clean
keys and values go to the KV cache and its marginals draft the next block. Drafts for the rest
of the block after a rejection come from the row that stopped: the law stays exact; only the
acceptance rate pays for drafts that ignore the replaced token.

Batch 1, as speculative AR. A round costs one forward of (drafts + 1) x block_len positions,
plus block_len for the next block: the extra positions are the ones a diffusion step already
pays for, and at batch 1 under the memory roof they come almost free for a large model
(notebook 10); for the course's tiny ones the roofline predicts less (notebook 12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from course_lib import diffusion
from course_lib.fast_forward import PackedLinear
from course_lib.metrics import HeldOutBits
from course_lib.model import KVCache, Transformer, device_and_dtype, eval_mode
from course_lib.speculative import accept_or_resample
from course_lib.step_rules import check_temperature, logits_to_probs, sample_categorical


def check_left_to_right(model) -> int:
    """The block length of a model that can be read left to right here (else ValueError)."""
    config = getattr(model, "config", None)
    if config is None or config.attention != "block_causal":
        raise ValueError(
            "reading a model left to right within its blocks needs a block-causal diffusion "
            "model (ModelConfig(attention='block_causal', block_len=...)); an AR model already "
            "is one, and a bidirectional one has no blocks"
        )
    if config.next_token_shift:
        raise ValueError(
            "a model with next_token_shift predicts each token one place later; the left-to-"
            "right reading here is for block-diffusion models without it"
        )
    return config.block_len


# -- the exact likelihood --------------------------------------------------------------------


@torch.no_grad()
def left_to_right_bits(
    model: Transformer,
    ids: torch.Tensor,
    *,
    max_windows: int | None = None,
    batch_size: int = 64,
) -> HeldOutBits:
    """Bits per character of held-out `ids` (1-D) under the model read left to right.

    The same disjoint windows of the model's context as `metrics.held_out_bits` (each read from
    its start). Each window costs block_len forwards of its noisy and clean copies side by side
    (BD3-LM's training layout, `diffusion.bd3lm_attention_mask`): forward j masks every block
    from its position j on and scores position j of every block. The number is an exact
    -log2 p, so it compares with an AR model's as an ELBO cannot.
    """
    block_len = check_left_to_right(model)
    L = model.config.context_len
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError("ids must be a 1-D tensor of token ids")
    n_windows = len(ids) // L if max_windows is None else min(len(ids) // L, max_windows)
    if n_windows < 2:
        raise ValueError(f"{len(ids)} ids make {len(ids) // L} window(s) of {L}: 2 are needed")
    device, _ = device_and_dtype(model)
    windows = ids[: n_windows * L].view(n_windows, L).to(device)
    offset = torch.arange(L, device=device) % block_len
    attn_mask = diffusion.bd3lm_attention_mask(L, block_len, device=device)
    positions = torch.arange(L, device=device).repeat(2)
    nats = torch.zeros(n_windows, dtype=torch.float64, device=device)
    with eval_mode(model):
        for first in range(0, n_windows, batch_size):
            x0 = windows[first : first + batch_size]
            for j in range(block_len):
                x_t = x0.masked_fill(offset >= j, model.mask_id)
                logits = model(torch.cat([x_t, x0], 1), positions=positions, attn_mask=attn_mask)
                log_probs = F.log_softmax(logits[:, :L].double(), dim=-1)
                nll = -log_probs.gather(-1, x0[..., None])[..., 0]  # (B, L)
                nats[first : first + len(x0)] += nll[:, offset == j].sum(1)
    per_window = nats / (L * math.log(2))
    standard_error = per_window.std().item() / math.sqrt(n_windows)
    method = f"-log2 p, left to right within blocks of {block_len}, windows of {L}"
    return HeldOutBits(per_window.mean().item(), standard_error, n_windows, n_windows * L, method)


# -- sampling ----------------------------------------------------------------------------------


@dataclass
class SelfSpeculativeSample:
    """Tokens (1, length) and what they cost."""

    tokens: torch.Tensor
    n_generated: int
    nfe: int = 0  # network calls: one per round
    accepted: list[int] = field(default_factory=list)  # drafted tokens kept, per round
    drafted: list[int] = field(default_factory=list)  # drafted tokens checked, per round
    positions: int = 0  # positions the network read, all rounds

    @property
    def tokens_per_forward(self) -> float:
        return self.n_generated / self.nfe

    @property
    def rejections(self) -> int:
        """Rounds that stopped at a rejected draft."""
        return sum(
            kept < drafted for kept, drafted in zip(self.accepted, self.drafted, strict=True)
        )


def _check_length(model: Transformer, length: int | None) -> int:
    block_len = check_left_to_right(model)
    length = model.config.context_len if length is None else length
    if not isinstance(length, int) or not 0 < length <= model.config.context_len:
        raise ValueError(f"length must be an int in [1, {model.config.context_len}]")
    if length % block_len:
        raise ValueError(f"length {length} must be a multiple of the block length {block_len}")
    return length


@torch.inference_mode()
def sample_left_to_right(
    model: Transformer,
    *,
    length: int | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> SelfSpeculativeSample:
    """The reference: `length` tokens, one per forward, each from the model's conditional
    given the block's earlier positions (later ones masked) and the blocks before."""
    length = _check_length(model, length)
    check_temperature(temperature)
    block_len = model.config.block_len
    device, _ = device_and_dtype(model)
    seq = torch.full((1, length), model.mask_id, dtype=torch.long, device=device)
    with eval_mode(model):
        for i in range(length):
            end = (i // block_len + 1) * block_len  # later blocks cannot change position i
            probs = logits_to_probs(model(seq[:, :end])[0, i], temperature)
            seq[0, i] = sample_categorical(probs, generator)
    return SelfSpeculativeSample(seq, length, nfe=length, positions=length)


@dataclass
class _Round:
    """One round's rows: row i is the block with its committed tokens and the first i drafts
    filled in, masked after them; the last row, when the drafts reach the block's end, carries
    the next block (masked) behind it."""

    ids: torch.Tensor  # (T,): the rows, one after another
    positions: torch.Tensor  # (T,)
    mask: torch.Tensor  # (T, start + T) bool: each row sees the cache and itself
    row_starts: list[int]  # where each row begins in ids
    extended: bool  # the last row carries the next block


def _build_round(seq, start, block_len, n_committed, drafts, mask_id, length) -> _Round:
    device = seq.device
    block = seq[0, start : start + block_len].clone()
    n_drafts = len(drafts)
    extended = n_committed + n_drafts == block_len and start + block_len < length
    ids, positions, row_starts, sizes = [], [], [], []
    for i in range(n_drafts + 1):
        row = block.clone()
        row[n_committed : n_committed + i] = drafts[:i]
        row[n_committed + i :] = mask_id
        size = block_len
        if i == n_drafts and extended:
            row = torch.cat([row, torch.full_like(row, mask_id)])
            size = 2 * block_len
        row_starts.append(sum(sizes))
        sizes.append(size)
        ids.append(row)
        positions.append(torch.arange(start, start + size, device=device))
    T = sum(sizes)
    mask = torch.zeros(T, start + T, dtype=torch.bool, device=device)
    mask[:, :start] = True  # every row sees the clean blocks before
    for row_start, size in zip(row_starts, sizes, strict=True):
        k = torch.arange(size, device=device) // block_len  # 0: this block, 1: the next
        keys = slice(start + row_start, start + row_start + size)
        mask[row_start : row_start + size, keys] = k[None, :] <= k[:, None]
    return _Round(torch.cat(ids), torch.cat(positions), mask, row_starts, extended)


def rows_forward(
    model: Transformer,
    ids: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    cache: KVCache,
    commit: int | None = None,
    new_keys: list | None = None,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits (1, T, V) of `ids` (1, T) at `positions` under `mask` (T, cache.length + T),
    attending to the cache's positions and to each other; the cache's length is unchanged but,
    with `commit` = i, the keys and values of ids i..i+block_len-1 are cached as the next
    block. A list `new_keys` receives every layer's (keys, values) of the T ids, (1, H, T, D)
    each, for a caller that decides after the forward which of them to cache (`draft_tree`).
    `rotary`: `rotary_table(model)`, made once by a sampler (default: made for `positions`).

    The network's forward, written for a forward of a few dozen positions on a CPU, where
    every call costs: queries and keys rotated together in four calls (`rotary_table`), the
    mask made additive once rather than by each layer's attention, the MLP's GELU fused into
    its matmul when the weights are prepacked (`fast_forward.PackedLinear.gelu`), and the new
    keys written past the cache's length (scratch space: the length does not move) rather than
    concatenated to it, where the cache has room (a sampler can give it room).
    """
    config = model.config
    B, T = ids.shape
    C, H, D = config.d_model, config.n_head, config.head_dim
    start = cache.length
    room = start + T <= cache.capacity
    x = model.embed(ids, positions)
    if rotary is None:
        rotary = rotary_table(model, positions)
    else:
        rotary = (rotary[0][positions], rotary[1][positions])
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(
            ~mask, float("-inf")
        )
    for layer, block in enumerate(model.blocks):
        qkv = block.attn.qkv(block.ln1(x)).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        qk, v = qkv[:2], qkv[2]  # (2, B, H, T, D), (B, H, T, D)
        if rotary is not None:
            qk = qk * rotary[0] + qk.roll(D // 2, -1) * rotary[1]
        q, k = qk[0], qk[1]
        if room:
            cache.keys[layer][:, :, start : start + T] = k
            cache.values[layer][:, :, start : start + T] = v
            keys, values = (
                cache.keys[layer][:, :, : start + T],
                cache.values[layer][:, :, : start + T],
            )
        else:
            keys = torch.cat([cache.keys[layer][:, :, :start], k], dim=2)
            values = torch.cat([cache.values[layer][:, :, :start], v], dim=2)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = x + block.attn.proj(y.transpose(1, 2).reshape(B, T, C))
        h = block.ln2(x)
        fc = block.mlp.fc
        h = fc.gelu(h) if isinstance(fc, PackedLinear) else F.gelu(fc(h))
        x = x + block.mlp.proj(h)
        if new_keys is not None:
            new_keys.append((k, v))
        if commit is not None:
            new = slice(commit, commit + config.block_len)
            cache.keys[layer][:, :, start : start + config.block_len] = k[:, :, new]
            cache.values[layer][:, :, start : start + config.block_len] = v[:, :, new]
    if commit is not None:
        cache.length = start + config.block_len
    return model.head(model.ln_f(x))


def rotary_table(
    model: Transformer, positions: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """RoPE at `positions` (default: the whole context, for a sampler to index once a round)
    laid out for `rows_forward`: (cos, sin), each (T, head_dim) in the model's dtype, cos
    repeated over both halves and sin signed (-sin, sin), so that a rotation is
    x * cos + x.roll(head_dim // 2, -1) * sin, `model.apply_rotary`'s pairs bit for bit in
    four calls instead of eight. None for a model with learned positions."""
    device, dtype = device_and_dtype(model)
    if positions is None:
        positions = torch.arange(model.config.context_len, device=device)
    angles = model.rotary(positions)
    if angles is None:
        return None
    cos, sin = (t.to(dtype) for t in angles)
    return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)


def cache_with_room(model: Transformer, room: int) -> KVCache:
    """A KV cache for batch 1 with `room` positions past the model's context: scratch space
    for `rows_forward`'s new keys, which then need no concatenation."""
    device, _ = device_and_dtype(model)
    block = model.config.block_len or 1
    room = -(-room // block) * block  # a whole number of blocks, as a context must be
    config = replace(model.config, context_len=model.config.context_len + room)
    return KVCache(config, 1, device=device, dtype=model.token_emb.weight.dtype)


def _rows_logits_uncached(model, seq, start, rnd: _Round) -> list[torch.Tensor]:
    """Each row's logits from a plain forward of the clean blocks and that row: the reference
    that `rows_forward` must equal."""
    bounds = [*rnd.row_starts, len(rnd.ids)]
    return [
        model(torch.cat([seq[0, :start], rnd.ids[a:b]])[None])[0, start:]
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]


class SelfSpeculativeSampler:
    """`sample_self_speculative` for one model and length, reusable across calls.

    `model` may be a copy laid out for speed (`fast_forward.prepack_weights`): the sampler only
    calls its submodules. `max_drafts` caps the drafts a round checks (default: to the block's
    end): fewer rows a forward, fewer tokens it can keep. `use_kv_cache=False` reads every row
    with a plain forward over the whole prefix instead (the reference the cached rows must
    match).
    """

    def __init__(self, model: Transformer, *, length=None, max_drafts=None, use_kv_cache=True):
        self.length = _check_length(model, length)
        if max_drafts is not None and (not isinstance(max_drafts, int) or max_drafts < 1):
            raise ValueError(f"max_drafts must be a positive int (or None), got {max_drafts!r}")
        self.max_drafts = max_drafts or model.config.block_len
        self.model = model
        self.block_len = model.config.block_len
        self.device, _ = device_and_dtype(model)
        # room for a round's rows: (drafts + 1) rows of a block, and the next block
        room = (self.max_drafts + 2) * self.block_len
        self.cache = cache_with_room(model, room) if use_kv_cache else None
        self.rotary = rotary_table(model) if use_kv_cache else None

    @torch.inference_mode()
    def __call__(self, *, temperature=1.0, generator=None) -> SelfSpeculativeSample:
        check_temperature(temperature)
        with eval_mode(self.model):
            return self._decode(temperature, generator)

    def _row_logits(self, seq, start, rnd: _Round, commit: bool) -> list[torch.Tensor]:
        if self.cache is None:
            return _rows_logits_uncached(self.model, seq, start, rnd)
        logits = rows_forward(
            self.model,
            rnd.ids[None],
            rnd.positions,
            rnd.mask,
            self.cache,
            commit=rnd.row_starts[-1] if commit else None,
            rotary=self.rotary,
        )[0]
        bounds = [*rnd.row_starts, len(rnd.ids)]
        return [logits[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]

    def _decode(self, temperature, generator) -> SelfSpeculativeSample:
        b, length, mask_id = self.block_len, self.length, self.model.mask_id
        seq = torch.full((1, length), mask_id, dtype=torch.long, device=self.device)
        out = SelfSpeculativeSample(seq, length)
        if self.cache is not None:
            self.cache.reset()
        start, n_committed = 0, 0  # the block being written, and its tokens already final
        drafts = torch.zeros(0, dtype=torch.long, device=self.device)
        q = torch.zeros(0, self.model.config.vocab_size, dtype=torch.float64)
        while start < length:
            rnd = _build_round(seq, start, b, n_committed, drafts, mask_id, length)
            m = len(drafts)
            # a round that reaches the block's end commits the clean block, if every draft
            # is kept; the keys are written now and forgotten below if one is not
            logits = self._row_logits(seq, start, rnd, commit=rnd.extended)
            probs = [logits_to_probs(row, temperature) for row in logits]
            # the target at each drafted position, then at the position after the drafts;
            # after the sequence's last position there is none: a stand-in, never drawn from
            after = min(n_committed + m, len(probs[m]) - 1)
            p = torch.stack([probs[i][n_committed + i] for i in range(m)] + [probs[m][after]])
            kept, token = accept_or_resample(p, q.to(p.device), drafts, generator)
            out.nfe += 1
            out.accepted.append(kept)
            out.drafted.append(m)
            out.positions += len(rnd.ids)
            seq[0, start + n_committed : start + n_committed + kept] = drafts[:kept]
            n_committed += kept
            if kept == m and n_committed == b:  # every draft kept to the block's end
                if not rnd.extended:  # the sequence's last block is complete
                    break
                # the drawn token starts the next block; its row drafts the rest of it
                start, n_committed, row = start + b, 0, probs[m][b:]
            else:
                if self.cache is not None and rnd.extended:
                    self.cache.length = start  # the block's keys included a rejected draft
                row = probs[kept]  # the row that stopped: the block masked from here on
            seq[0, start + n_committed] = token
            n_committed += 1
            # the next drafts: the stopping row's marginals after the new token, each alone
            q = row[n_committed : min(b, n_committed + self.max_drafts)]
            drafts = sample_categorical(q, generator) if len(q) else drafts[:0]
            if n_committed == b and start + b == length:
                break
        return out


def sample_self_speculative(
    model: Transformer,
    *,
    length: int | None = None,
    temperature: float = 1.0,
    max_drafts: int | None = None,
    use_kv_cache: bool = True,
    generator: torch.Generator | None = None,
) -> SelfSpeculativeSample:
    """`length` tokens (default: the context) drawn exactly as `sample_left_to_right` draws
    them, several per forward: the model drafts a block's later positions from its own
    marginals and checks them in the next forward (the module's docstring)."""
    sampler = SelfSpeculativeSampler(
        model, length=length, max_drafts=max_drafts, use_kv_cache=use_kv_cache
    )
    return sampler(temperature=temperature, generator=generator)
