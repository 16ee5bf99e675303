"""draft_tree: a tree of the model's own guesses changes no token, only the forwards it takes."""

import itertools
import math

import pytest
import torch
from test_self_speculative import CopyModel, _tiny

from course_lib import draft_tree as dt
from course_lib import self_speculative as ss


def _reference(model, seed, length=None):
    generator = torch.Generator().manual_seed(seed)
    return ss.sample_left_to_right(model, length=length, generator=generator).tokens


@pytest.mark.parametrize("tree_size, depth", [(0, 1), (1, 1), (4, 2), (8, 3), (16, 5)])
def test_the_tree_writes_the_reference_tokens_of_a_closed_form_law(tree_size, depth):
    """Each token is one draw from the law's conditional, as the reference draws it, with one
    uniform number: a seed writes the reference's tokens, whatever the tree. A walk that went
    on down a child that did not guess the token drawn, or drew from a node's marginal instead
    of its conditional, would not."""
    model = CopyModel(vocab_size=3, context_len=9, block_len=3)
    forwards = 0
    for seed in range(12):
        out = dt.sample_draft_tree(
            model,
            tree_size=tree_size,
            depth=depth,
            use_kv_cache=False,
            generator=torch.Generator().manual_seed(seed),
        )
        assert torch.equal(out.tokens, _reference(model, seed))
        assert sum(out.drawn) == out.n_generated == 9 and len(out.drawn) == out.nfe
        assert max(out.drawn) <= depth + 1
        forwards += out.nfe
    if tree_size:
        assert forwards < 12 * 9  # the tree saved forwards


@pytest.mark.parametrize(
    "position, block_len, tree_size, depth",
    [("learned", 2, 4, 2), ("rotary", 2, 8, 3), ("learned", 4, 6, 3), ("rotary", 4, 16, 5)]
    + [("rotary", 8, 8, 3), ("learned", 8, 2, 9)],
)
def test_the_kv_cache_and_shared_blocks_change_no_token(position, block_len, tree_size, depth):
    """One forward a round over the cache (rows side by side under one mask, the blocks they
    agree on read once, the stopping row's clean blocks cached) writes the tokens of plain
    forwards and of the reference, on a network whose guesses are often wrong."""
    model = _tiny(position, block_len)
    deep = shallow = 0
    for seed in range(6):
        outs = [
            dt.sample_draft_tree(
                model,
                tree_size=tree_size,
                depth=depth,
                use_kv_cache=cache,
                temperature=0.8,
                generator=torch.Generator().manual_seed(seed),
            )
            for cache in (True, False)
        ]
        generator = torch.Generator().manual_seed(seed)
        reference = ss.sample_left_to_right(model, temperature=0.8, generator=generator).tokens
        assert torch.equal(outs[0].tokens, outs[1].tokens)
        assert torch.equal(outs[0].tokens, reference)
        assert outs[0].positions == outs[1].positions
        deep += sum(d > 1 for d in outs[0].drawn)
        shallow += sum(d == 1 for d in outs[0].drawn)
    assert deep and shallow  # walks that went down the tree, and walks that stopped at once


@pytest.mark.parametrize("block_len, committed", [(2, 2), (2, 1), (4, 3), (4, 4)])
def test_rows_share_the_blocks_they_agree_on_and_see_only_their_own(block_len, committed):
    """The round's layout, against each row written out alone: every row reads back its own
    tokens at its own positions, reaches `depth` past its prediction (and its block's end),
    and each of its positions sees, of the round's input, exactly its row's blocks up to its
    own; rows that agree on a block read it once."""
    model = _tiny("rotary", block_len)
    sampler = dt.DraftTreeSampler(model, tree_size=9, depth=3)
    torch.manual_seed(0)
    tree = dt.grow_tree(torch.softmax(torch.randn(3, 11) * 3, -1).double(), 9)
    cached = 8
    n = cached + committed
    seq = torch.full((1, 32), model.mask_id)
    seq[0, :n] = torch.randint(0, 11, (n,))
    rows = sampler._build_rows(seq, cached, n, tree)
    new = rows.mask[:, cached:]
    assert rows.mask[:, :cached].all()
    lengths = []
    for i, depth in enumerate(tree.depths):
        p = n + depth  # the position the node predicts
        end = max(p // block_len * block_len + block_len, p + 3 + 1)
        row = seq[0, cached:n].tolist() + tree.path(i)
        row += [model.mask_id] * (end - cached - len(row))
        flat = rows.where[i]
        assert rows.ids[flat].tolist() == row
        assert rows.positions[flat].tolist() == list(range(cached, end))
        for j, index in enumerate(flat):
            own = flat[: (j // block_len + 1) * block_len]  # its block and the ones before
            assert torch.nonzero(new[index]).flatten().tolist() == sorted(own)
        lengths.append(len(row))
    assert len(rows.ids) < sum(lengths)  # shared blocks were read once


def test_a_sequence_shorter_than_the_context():
    model = _tiny("rotary", 4)
    out = dt.sample_draft_tree(model, length=12, generator=torch.Generator().manual_seed(3))
    assert out.tokens.shape == (1, 12) and (out.tokens < model.mask_id).all()
    assert torch.equal(out.tokens, _reference(model, 3, length=12))


def test_the_tree_holds_the_likeliest_paths():
    """Against every path of up to three levels, ranked by the product of its marginals."""
    torch.manual_seed(0)
    marginals = torch.softmax(torch.randn(3, 5) * 2, -1).double()
    for size in (1, 3, 7, 20):
        tree = dt.grow_tree(marginals, size)
        paths = [tuple(tree.path(i)) for i in range(1, len(tree.parents))]
        assert len(paths) == len(set(paths)) == size
        everything = [
            path for depth in (1, 2, 3) for path in itertools.product(range(5), repeat=depth)
        ]

        def score(path):
            return math.prod(marginals[level, t].item() for level, t in enumerate(path))

        best = sorted(everything, key=score, reverse=True)[:size]
        assert sorted(map(score, paths)) == pytest.approx(sorted(map(score, best)))
        for i in range(1, len(tree.parents)):  # a node's depth is its path's length
            assert tree.depths[i] == len(tree.path(i)) == tree.depths[tree.parents[i]] + 1
    assert dt.grow_tree(marginals, 0).parents == [-1]
    assert dt.grow_tree(marginals[:0], 5).parents == [-1]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="block-causal"):
        dt.DraftTreeSampler(_tiny_ar())
    model = _tiny("rotary", 4)
    for bad in ({"tree_size": -1}, {"tree_size": True}, {"depth": 0}, {"depth": 1.5}):
        with pytest.raises(ValueError, match="must be an int"):
            dt.DraftTreeSampler(model, **bad)
    for length in (0, 33, 2.0):
        with pytest.raises(ValueError, match="length"):
            dt.DraftTreeSampler(model, length=length)
    with pytest.raises(ValueError, match="temperature"):
        dt.sample_draft_tree(model, temperature=0.0)


def _tiny_ar():
    from course_lib.model import ModelConfig, Transformer

    return Transformer(ModelConfig(vocab_size=5, context_len=8, n_layer=1, n_head=1, d_model=8))
