"""A block-diffusion model's left-to-right law, sampled several tokens per forward by a tree of
its own guesses (notebook 12).

`self_speculative` reads a block-causal diffusion model left to right: asked for position j
with the block's earlier positions filled in and the rest masked, the model gives the
conditional p(x_j | x_<j), one token per forward (`self_speculative.sample_left_to_right`, the
reference). Its speculative sampler drafts one chain of tokens and checks it; here a round
reads a *tree* of them, and needs no check at all.

A node of the tree is a guess of the next few tokens (its path from the root); its *row* is the
uncached blocks with the committed tokens and the path filled in and the rest masked, and the
row's output at the position after the path is the model's exact conditional there. One
forward reads every node's row. Then the round walks down from the root: draw the next token
from the node's conditional, exactly as the reference would; if a child of the node guessed
that token, move to the child (its row holds the next conditional) and draw again; if none
did, stop. Every token is drawn from the law's own conditional, whatever the tree: the tree
decides only how many draws one forward pays for. With one uniform number per draw the walk
consumes the generator as the reference does, so a seed writes the reference's tokens.

The guesses come from the row where the previous round's walk stopped: its outputs after the
token drawn there are the model's marginals (they cannot see that token, nor each other). A path's
guessed probability is the product of its tokens' marginals, and the tree keeps the
`tree_size` likeliest paths: deep where the marginals are sure, wide where they are not. The
last row's clean blocks go to the KV cache.

Batch 1, as speculative AR. A round costs one forward of every row's positions: the price of
the tree is positions, which for a large model under the memory roof come almost free
(notebook 10), and for the course's tiny ones, or on a CPU, do not.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch

from course_lib.model import Transformer, device_and_dtype, eval_mode
from course_lib.self_speculative import cache_with_room, check_left_to_right, rows_forward
from course_lib.step_rules import check_temperature, logits_to_probs, sample_categorical


@dataclass
class DraftTreeSample:
    """Tokens (1, length) and what they cost."""

    tokens: torch.Tensor
    n_generated: int
    nfe: int = 0  # network calls: one per round
    positions: int = 0  # positions the network read, all rounds
    drawn: list[int] = field(default_factory=list)  # tokens drawn, per round

    @property
    def tokens_per_forward(self) -> float:
        return self.n_generated / self.nfe


@dataclass
class _Tree:
    """Guessed paths: node i has `parents[i]` (-1 for the root), `tokens[i]` (the token its
    path ends with; none for the root) and `depths[i]` (its path's length)."""

    parents: list[int]
    tokens: list[int]
    depths: list[int]

    @classmethod
    def root(cls) -> _Tree:
        return cls([-1], [-1], [0])

    def children(self) -> dict[tuple[int, int], int]:
        return {
            (p, t): i for i, (p, t) in enumerate(zip(self.parents, self.tokens, strict=True)) if i
        }

    def path(self, i: int) -> list[int]:
        tokens = []
        while i:
            tokens.append(self.tokens[i])
            i = self.parents[i]
        return tokens[::-1]


def grow_tree(marginals: torch.Tensor, size: int) -> _Tree:
    """The `size` likeliest paths under `marginals` (D, V), each token's probability taken
    independently: level d guesses the position d after the root's. Best first, so every
    node's parent is in the tree (a path is never likelier than its prefix)."""
    tree = _Tree.root()
    if size == 0 or len(marginals) == 0:
        return tree
    k = min(size, marginals.shape[-1])
    top = torch.topk(marginals, k, dim=-1)
    probs, ids = top.values.tolist(), top.indices.tolist()
    scores = [1.0]
    # (-score, parent, level, rank): the rank-th likeliest token at `level` below `parent`
    heap = [(-probs[0][0], 0, 0, 0)]
    while heap and len(tree.parents) <= size:
        negative, parent, level, rank = heapq.heappop(heap)
        tree.parents.append(parent)
        tree.tokens.append(ids[level][rank])
        tree.depths.append(level + 1)
        scores.append(-negative)
        node = len(scores) - 1
        if rank + 1 < k:  # its next sibling
            heapq.heappush(
                heap, (-scores[parent] * probs[level][rank + 1], parent, level, rank + 1)
            )
        if level + 1 < len(probs):  # its likeliest child
            heapq.heappush(heap, (negative * probs[level + 1][0], node, level + 1, 0))
    return tree


@dataclass
class _Rows:
    """A round's input: the shared block (the committed tokens, when they fill a block the cache
    lacks: every row reads it as clean context), then one row per node. Row i covers positions
    base .. base + lengths[i] - 1 and starts at starts[i] in the flat ids."""

    ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (T,)
    mask: torch.Tensor  # (T, cached + T) bool: the shared block sees itself, a row it and itself
    shared: int  # the shared block's length (0 or block_len)
    base: int  # the rows' first position
    starts: list[int]
    lengths: list[int]

    def index(self, row: int, position: int) -> int:
        """Where `position` of row `row` is in the flat ids."""
        return self.starts[row] + position - self.base


class DraftTreeSampler:
    """`sample_draft_tree` for one model and length, reusable across calls.

    `tree_size`: drafted nodes a round reads beside the root (0: one token per forward, the
    reference with a KV cache). `depth`: the deepest guess, in tokens after the root's; each
    row reaches to the end of the block that holds its depth-th position after its own, so
    its marginals can guess that far. `model` may be a copy laid out for speed
    (`fast_forward.prepack_weights`): the sampler only calls its submodules.
    `use_kv_cache=False` reads every row with a plain forward of the clean blocks and the row
    (the reference the cached rows must match).
    """

    def __init__(self, model: Transformer, *, length=None, tree_size=8, depth=3, use_kv_cache=True):
        self.block_len = check_left_to_right(model)
        length = model.config.context_len if length is None else length
        if not isinstance(length, int) or not 0 < length <= model.config.context_len:
            raise ValueError(f"length must be an int in [1, {model.config.context_len}]")
        for name, value, low in (("tree_size", tree_size, 0), ("depth", depth, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.model, self.length, self.tree_size, self.depth = model, length, tree_size, depth
        self.device, _ = device_and_dtype(model)
        # room for a round: the shared block, and rows of under 2 (depth + block_len) each
        room = self.block_len + (tree_size + 1) * 2 * (depth + self.block_len)
        self.cache = cache_with_room(model, room) if use_kv_cache else None

    @torch.inference_mode()
    def __call__(self, *, temperature=1.0, generator=None) -> DraftTreeSample:
        check_temperature(temperature)
        with eval_mode(self.model):
            return self._decode(temperature, generator)

    def _row_end(self, position: int) -> int:
        """Where the row of the node that predicts `position` ends: the end of the block that
        holds the position `depth` after it, so that its outputs can guess that far (a leaf's
        row too: a walk may stop anywhere, and guessing from an ancestor's row instead, which
        misses more tokens, cost more tokens a forward than its positions saved)."""
        b = self.block_len
        return min((position + self.depth) // b * b + b, self.length)

    def _build_rows(self, seq, cached: int, n: int, tree: _Tree) -> _Rows:
        b, mask_id, device = self.block_len, self.model.mask_id, self.device
        committed = seq[0, cached:n].tolist()
        shared = b if len(committed) == b else 0
        base = cached + shared
        committed = committed[shared:]
        lengths = [self._row_end(n + d) - base for d in tree.depths]
        ids = seq[0, cached:base].tolist()
        for i, size in enumerate(lengths):
            row = committed + tree.path(i)
            ids.extend(row + [mask_id] * (size - len(row)))
        T = len(ids)
        lengths_t = torch.tensor(lengths, device=device)
        row_of = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths_t)
        starts = torch.cumsum(lengths_t, 0) - lengths_t + shared
        local = torch.arange(T - shared, device=device) - starts[row_of] + shared
        block = local // b
        mask = torch.ones(T, cached + T, dtype=torch.bool, device=device)
        mask[:shared, cached + shared :] = False
        mask[shared:, cached + shared :] = (row_of[:, None] == row_of[None, :]) & (
            block[None, :] <= block[:, None]
        )
        positions = torch.cat([torch.arange(cached, base, device=device), base + local])
        ids_t = torch.tensor(ids, device=device)
        return _Rows(ids_t, positions, mask, shared, base, starts.tolist(), lengths)

    def _forward(self, seq, cached: int, rows: _Rows) -> tuple[torch.Tensor, list]:
        """Logits (T, V) of the round's input, and each layer's (keys, values) of it (with the
        KV cache; without, a plain forward per row, and no logits for the shared block)."""
        if self.cache is None:
            logits = [torch.zeros(rows.shared, self.model.config.vocab_size)]
            for start, size in zip(rows.starts, rows.lengths, strict=True):
                row = torch.cat([seq[0, : rows.base], rows.ids[start : start + size]])
                logits.append(self.model(row[None])[0, rows.base :])
            return torch.cat(logits), []
        new_keys: list = []
        logits = rows_forward(
            self.model, rows.ids[None], rows.positions, rows.mask, self.cache, new_keys=new_keys
        )
        return logits[0], new_keys

    def _cache(self, new_keys, start: int, first: int, end: int) -> None:
        """Cache positions first..end-1, read from the flat input's index `start` on."""
        if self.cache is None or end == first:
            return
        span = slice(start, start + end - first)
        for layer, (k, v) in enumerate(new_keys):
            self.cache.keys[layer][:, :, first:end] = k[:, :, span]
            self.cache.values[layer][:, :, first:end] = v[:, :, span]
        self.cache.length = end

    def _decode(self, temperature, generator) -> DraftTreeSample:
        b, length = self.block_len, self.length
        seq = torch.full((1, length), self.model.mask_id, dtype=torch.long, device=self.device)
        out = DraftTreeSample(seq, length)
        if self.cache is not None:
            self.cache.reset()
        cached, n, tree = 0, 0, _Tree.root()  # cached <= n: the tokens committed
        while n < length:
            rows = self._build_rows(seq, cached, n, tree)
            logits, new_keys = self._forward(seq, cached, rows)
            # each node's conditional: its row's output at the position after its path
            at = [rows.index(i, n + d) for i, d in enumerate(tree.depths)]
            probs = logits_to_probs(logits[at], temperature)
            children, node = tree.children(), 0
            while True:
                position = n + tree.depths[node]
                token = int(sample_categorical(probs[node], generator))
                seq[0, position] = token
                child = children.get((node, token))
                if child is None or position + 1 == length:
                    break
                node = child
            out.nfe += 1
            out.positions += len(rows.ids)
            out.drawn.append(tree.depths[node] + 1)
            # the last row's outputs after the token drawn are the marginals that guess the
            # next tree (none for the last position: a path must leave a position to predict)
            last = min(position + 1 + self.depth, length - 1)
            guesses = logits[rows.index(node, position + 1) : rows.index(node, last)]
            # final now: the shared block, and the clean blocks of the last row
            self._cache(new_keys, 0, cached, rows.base)
            new_cached = position // b * b
            self._cache(new_keys, rows.starts[node], rows.base, new_cached)
            cached, n = new_cached, position + 1
            tree = grow_tree(logits_to_probs(guesses, temperature), self.tree_size)
        return out


def sample_draft_tree(
    model: Transformer,
    *,
    length: int | None = None,
    temperature: float = 1.0,
    tree_size: int = 8,
    depth: int = 3,
    use_kv_cache: bool = True,
    generator: torch.Generator | None = None,
) -> DraftTreeSample:
    """`length` tokens (default: the context) drawn exactly as
    `self_speculative.sample_left_to_right` draws them, several per forward (the module's
    docstring)."""
    sampler = DraftTreeSampler(
        model, length=length, tree_size=tree_size, depth=depth, use_kv_cache=use_kv_cache
    )
    return sampler(temperature=temperature, generator=generator)
