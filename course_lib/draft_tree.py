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
forward reads every node's row, a block that several rows hold alike (the same tokens up to its
end) once. Then the round walks down from the root: draw the next token
from the node's conditional, exactly as the reference would; if a child of the node guessed
that token, move to the child (its row holds the next conditional) and draw again; if none
did, stop. Every token is drawn from the law's own conditional, whatever the tree: the tree
decides only how many draws one forward pays for. With one uniform number per draw the walk
consumes the generator as the reference does, so a seed writes the reference's tokens.

The guesses come from the row where the previous round's walk stopped: its outputs after the
token drawn there are the model's marginals (they cannot see that token, nor each other). A path's
guessed probability is the product of its tokens' marginals, and the tree keeps the
`tree_size` likeliest paths: deep where the marginals are sure, wide where they are not. The
clean blocks of the row where the walk stopped go to the KV cache.

Batch 1, as speculative AR. A round costs one forward of every row's positions: the price of
the tree is positions, which for a large model under the memory roof come almost free
(notebook 10), and for the course's tiny ones, or on a CPU, do not.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch

from course_lib.model import Transformer, device_and_dtype, eval_mode
from course_lib.sampling import draw_uniforms
from course_lib.self_speculative import (
    cache_with_room,
    check_left_to_right,
    rotary_table,
    rows_forward,
)
from course_lib.step_rules import categorical_from_cdf, check_temperature, logits_to_probs


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
    """A round's input: one row per node, each covering positions base .. base + len - 1 (base:
    the first uncached position), laid side by side in flat ids, sharing the blocks they agree
    on (`_Layout`). Row i's position p is at flat index where[i][p - base]."""

    ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (T,)
    mask: torch.Tensor  # (T, cached + T) bool: the cache, the block and its rows' earlier ones
    base: int
    where: list[list[int]]

    def index(self, row: int, position: int) -> int:
        """Where `position` of row `row` is in the flat ids."""
        return self.where[row][position - self.base]


class _Layout:
    """Rows laid side by side in one flat input, sharing the blocks they agree on: a block is
    laid out once for each (parent block, tokens), its parent the block before it in its
    rows. Block-causal attention makes a block's outputs depend only on it and the blocks
    before it, so rows that hold the same tokens up to a block's end may read it once."""

    def __init__(self, block_len: int) -> None:
        self.block_len = block_len
        self.ids: list[int] = []
        self.block_of: list[int] = []  # each flat position's block
        self.starts: list[int] = []  # each block's first flat index
        self.parents: list[int] = []  # each block's parent (-1: the row's first block)
        self.blocks: dict[tuple[int, tuple[int, ...]], int] = {}

    def add(self, row: list[int]) -> list[int]:
        """Lay out `row`, blocks it shares with earlier rows read from them: the flat index of
        each of its positions."""
        flat, parent = [], -1
        for k in range(0, len(row), self.block_len):
            chunk = tuple(row[k : k + self.block_len])
            block = self.blocks.get((parent, chunk))
            if block is None:
                block = self.blocks[parent, chunk] = len(self.starts)
                self.starts.append(len(self.ids))
                self.parents.append(parent)
                self.ids.extend(chunk)
                self.block_of.extend([block] * len(chunk))
            flat.extend(range(self.starts[block], self.starts[block] + len(chunk)))
            parent = block
        return flat


def _subtree_ranges(parents: list[int]) -> tuple[list[int], list[int]]:
    """Number a forest depth first (each node's parent before it, -1 for a root): node i gets
    first[i], and its subtree is the nodes numbered first[i] .. last[i] - 1."""
    size = [1] * len(parents)
    for node in reversed(range(len(parents))):
        if parents[node] >= 0:
            size[parents[node]] += size[node]
    first, free, top = [0] * len(parents), [0] * len(parents), 0  # free: a child's number
    for node, parent in enumerate(parents):
        if parent < 0:
            first[node], top = top, top + size[node]
        else:
            first[node] = free[parent]
            free[parent] += size[node]
        free[node] = first[node] + 1
    return first, [f + n for f, n in zip(first, size, strict=True)]


class DraftTreeSampler:
    """`sample_draft_tree` for one model and length, reusable across calls.

    `tree_size`: drafted nodes a round reads beside the root (0: one token per forward, the
    reference with a KV cache). `depth`: the deepest guess, in tokens after the root's; each
    row reaches `depth` positions past its own prediction, so that its marginals can guess
    that far (and at least to its block's end). `model` may be a copy laid out for speed
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
        # room for a round: rows of at most 2 (depth + block_len) positions each
        room = self.block_len + (tree_size + 1) * 2 * (depth + self.block_len)
        self.cache = cache_with_room(model, room) if use_kv_cache else None
        self.rotary = rotary_table(model) if use_kv_cache else None

    @torch.inference_mode()
    def __call__(self, *, temperature=1.0, generator=None) -> DraftTreeSample:
        check_temperature(temperature)
        with eval_mode(self.model):
            return self._decode(temperature, generator)

    def _row_end(self, position: int) -> int:
        """Where the row of the node that predicts `position` ends: past the position `depth`
        after it, so that its outputs can guess that far, and not before its own block's end,
        which the model reads whole (a leaf's row too: a walk may stop anywhere, and guessing
        from an ancestor's row instead, which misses more tokens, cost more tokens a forward
        than its positions saved)."""
        b = self.block_len
        return min(max(position // b * b + b, position + self.depth + 1), self.length)

    def _build_rows(self, seq, cached: int, n: int, tree: _Tree) -> _Rows:
        mask_id = self.model.mask_id
        committed = seq[0, cached:n].tolist()
        layout, where = _Layout(self.block_len), []
        for i, depth in enumerate(tree.depths):
            row = committed + tree.path(i)
            where.append(layout.add(row + [mask_id] * (self._row_end(n + depth) - n - depth)))
        # block j sees block i when i is j or an ancestor of j: when j lies in i's subtree,
        # which numbering the blocks depth first makes a range, first[i] <= first[j] < last[i]
        first, last = _subtree_ranges(layout.parents)
        ids, T = layout.ids, len(layout.ids)
        order = torch.tensor([first[i] for i in layout.block_of])
        ends = torch.tensor([last[i] for i in layout.block_of])
        mask = torch.ones(T, cached + T, dtype=torch.bool)
        mask[:, cached:] = (order[None, :] <= order[:, None]) & (order[:, None] < ends[None, :])
        positions = [0] * T
        for row in where:
            for offset, index in enumerate(row):
                positions[index] = cached + offset
        device = self.device
        return _Rows(
            torch.tensor(ids, device=device),
            torch.tensor(positions, device=device),
            mask.to(device),
            cached,
            where,
        )

    def _forward(self, seq, rows: _Rows) -> tuple[torch.Tensor, list]:
        """Logits (T, V) of the round's input, and each layer's (keys, values) of it (with the
        KV cache; without, a plain forward per row)."""
        if self.cache is None:
            logits = torch.zeros(len(rows.ids), self.model.config.vocab_size, device=self.device)
            for row in rows.where:
                ids = torch.cat([seq[0, : rows.base], rows.ids[row]])
                logits[row] = self.model(ids[None])[0, rows.base :]
            return logits, []
        new_keys: list = []
        logits = rows_forward(
            self.model,
            rows.ids[None],
            rows.positions,
            rows.mask,
            self.cache,
            new_keys=new_keys,
            rotary=self.rotary,
        )
        return logits[0], new_keys

    def _cache(self, new_keys, rows: _Rows, row: int, end: int) -> None:
        """Cache row `row`'s positions up to `end` (exclusive): its clean blocks."""
        if self.cache is None or end == rows.base:
            return
        flat, done = rows.where[row][: end - rows.base], 0
        if rows.base + len(rows.ids) <= self.cache.capacity:
            # `rows_forward` wrote the round's keys past the cache's length, flat index i at
            # base + i: a row's blocks laid out first are in place already
            while done < len(flat) and flat[done] == done:
                done += 1
        if done < len(flat):
            index = torch.tensor(flat[done:], device=self.device)
            for layer, (k, v) in enumerate(new_keys):
                self.cache.keys[layer][:, :, rows.base + done : end] = k[:, :, index]
                self.cache.values[layer][:, :, rows.base + done : end] = v[:, :, index]
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
            logits, new_keys = self._forward(seq, rows)
            # each node's conditional: its row's output at the position after its path
            probs = logits_to_probs(logits, temperature)
            at = [rows.index(i, n + d) for i, d in enumerate(tree.depths)]
            cdfs = probs[at].cumsum(-1)
            children, node, drawn = tree.children(), 0, []
            while True:
                # one draw as `sample_categorical` makes it: one uniform, the inverse CDF
                u = draw_uniforms((), generator, self.device).item()
                drawn.append(categorical_from_cdf(cdfs[node].tolist(), u))
                position = n + tree.depths[node]
                child = children.get((node, drawn[-1]))
                if child is None or position + 1 == length:
                    break
                node = child
            seq[0, n : position + 1] = torch.tensor(drawn)
            out.nfe += 1
            out.positions += len(rows.ids)
            out.drawn.append(len(drawn))
            # the stopping row's outputs after the token drawn are the marginals that guess the
            # next tree (none for the last position: a path must leave a position to predict)
            last = min(position + 1 + self.depth, length - 1)
            guesses = probs[rows.where[node][position + 1 - rows.base : last - rows.base]]
            # final now: the clean blocks of the row where the walk stopped
            new_cached = position // b * b
            self._cache(new_keys, rows, node, new_cached)
            cached, n = new_cached, position + 1
            tree = grow_tree(guesses, self.tree_size)
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
        model,
        length=length,
        tree_size=tree_size,
        depth=depth,
        use_kv_cache=use_kv_cache,
    )
    return sampler(temperature=temperature, generator=generator)
