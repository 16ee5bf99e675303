"""self_speculative: the model's own drafts change no law, only the forwards it takes."""

import itertools
import math

import pytest
import torch

from course_lib import metrics
from course_lib import self_speculative as ss
from course_lib.model import ModelConfig, Transformer


class CopyModel:
    """A block-causal law in closed form, whose drafts are often wrong.

    A position leans towards the nearest clean token on its left in its block, else the last
    token of the block before: strongly, so the marginals of an all-masked block (which can
    only copy the block before) miss whenever the block changes token, and the rule that
    checks drafts is exercised. Logits are a function of what the position sees, as a
    block-causal network's are.
    """

    def __init__(self, vocab_size=3, context_len=6, block_len=3, strength=2.5) -> None:
        self.config = ModelConfig(
            vocab_size=vocab_size,
            context_len=context_len,
            attention="block_causal",
            block_len=block_len,
        )
        self.mask_id, self.strength = vocab_size, strength
        self.base = torch.linspace(0.0, 0.6, vocab_size)  # not uniform: a token is favoured
        self.calls = 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        B, L = ids.shape
        b = self.config.block_len
        logits = self.base.repeat(B, L, 1)
        for i in range(L):
            first = i // b * b
            seen = [t for t in ids[0, first:i].tolist() if t != self.mask_id]
            before = ids[0, first - 1].item() if first else None
            leaning = seen[-1] if seen else before
            if leaning is not None and leaning != self.mask_id:
                logits[:, i, leaning] += self.strength
        return logits


def _exact_law(model: CopyModel) -> dict[tuple, float]:
    """Every sequence's probability, position by position, as `sample_left_to_right` reads
    the model: the block's later positions masked, later blocks absent."""
    L, b, V = model.config.context_len, model.config.block_len, model.config.vocab_size
    law = {}
    for seq in itertools.product(range(V), repeat=L):
        p = 1.0
        for i in range(L):
            end = (i // b + 1) * b
            x = torch.tensor([list(seq[:i]) + [model.mask_id] * (end - i)])
            p *= torch.softmax(model(x)[0, i].double(), -1)[seq[i]].item()
        law[seq] = p
    return law


@pytest.mark.parametrize("max_drafts", [None, 1])
def test_the_tokens_follow_the_left_to_right_law_exactly(max_drafts):
    """Chi-square of 4,000 samples of 6 tokens (two blocks of 3) against the exact law, with
    drafts to each block's end and with one draft a round (the round's last row then stops
    inside the block).

    Keeping every draft, or drawing a rejected draft's replacement from p rather than from
    max(0, p - q), moves the statistic far past the bound (to 205,000 and 2,200).
    """
    model = CopyModel()
    law = _exact_law(model)
    sampler = ss.SelfSpeculativeSampler(model, max_drafts=max_drafts, use_kv_cache=False)
    generator = torch.Generator().manual_seed(0)
    samples, counts, rejected = 4000, {}, 0
    for _ in range(samples):
        out = sampler(generator=generator)
        key = tuple(out.tokens[0].tolist())
        counts[key] = counts.get(key, 0) + 1
        rejected += out.rejections > 0
    chi2 = sum((counts.get(k, 0) - samples * p) ** 2 / (samples * p) for k, p in law.items())
    # 728 degrees of freedom: P(chi2 > 900) < 1e-4 under the right law
    assert chi2 < 900, chi2
    assert rejected > samples // 4  # the drafts were rejected often enough to test the rule


def test_the_reference_sampler_reads_the_same_law():
    model = CopyModel(vocab_size=2, context_len=4, block_len=2)
    law = _exact_law(model)
    generator = torch.Generator().manual_seed(1)
    samples, counts = 2000, {}
    for _ in range(samples):
        key = tuple(ss.sample_left_to_right(model, generator=generator).tokens[0].tolist())
        counts[key] = counts.get(key, 0) + 1
    chi2 = sum((counts.get(k, 0) - samples * p) ** 2 / (samples * p) for k, p in law.items())
    assert chi2 < 45, chi2  # 15 degrees of freedom: P(chi2 > 45) < 1e-4


def test_drafts_equal_to_the_target_are_always_kept():
    """A law that ignores the block's own tokens has marginals equal to its conditionals."""
    model = CopyModel(context_len=8, block_len=4, strength=0.0)
    out = ss.sample_self_speculative(model, use_kv_cache=False)
    # the first round drafts nothing; then each round keeps a block's 3 drafts, and draws the
    # next block's first token, except the last, which has no next block
    assert out.accepted == out.drafted == [0, 3, 3]
    assert out.nfe == 3 and out.tokens_per_forward == 8 / 3
    assert out.positions == 4 + (4 * 4 + 4) + 4 * 4  # rows of 4, the second round's last 8


def _tiny(position: str, block_len: int, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=11,
        context_len=32,
        n_layer=2,
        n_head=2,
        d_model=32,
        attention="block_causal",
        block_len=block_len,
        position=position,
    )
    model = Transformer(config).eval()
    with torch.no_grad():
        # sharp, and leaning on the tokens it attends to: drafts are rejected as well as kept
        model.head.weight.mul_(20)
        for block in model.blocks:
            block.attn.proj.weight.mul_(10)
    return model


@pytest.mark.parametrize(
    "position, block_len, max_drafts",
    [("learned", 2, None), ("rotary", 2, None), ("learned", 4, None), ("rotary", 4, None)]
    + [("learned", 8, None), ("rotary", 8, None), ("rotary", 4, 1), ("learned", 8, 3)],
)
def test_the_kv_cache_changes_no_token(position, block_len, max_drafts):
    """The cached rows (one forward a round, the clean blocks' keys kept) write the tokens of
    plain forwards over the whole prefix, one per row."""
    model = _tiny(position, block_len)
    rejections = 0
    for seed in range(3):
        runs = [
            ss.sample_self_speculative(
                model,
                max_drafts=max_drafts,
                use_kv_cache=cached,
                generator=torch.Generator().manual_seed(seed),
            )
            for cached in (False, True)
        ]
        assert torch.equal(runs[0].tokens, runs[1].tokens)
        assert runs[0].accepted == runs[1].accepted
        assert (runs[1].tokens < model.config.vocab_size).all()
        rejections += runs[1].rejections
        assert max(runs[1].drafted) == min(block_len - 1, max_drafts or block_len)
    assert rejections > 0  # the rounds after a rejection were compared too


@pytest.mark.parametrize(
    "start, packed",
    # the rows' 20 keys fit past the cache's length (written there as scratch) or do not
    # (concatenated); prepacked weights fuse the MLP's GELU into its matmul
    [(8, False), (16, False), (8, True)],
)
def test_rows_forward_gives_each_row_the_logits_of_its_own_forward(start, packed):
    from course_lib import fast_forward

    if packed and fast_forward.packing_problem():
        pytest.skip(fast_forward.packing_problem())
    model = _tiny("rotary", 4)
    fast = fast_forward.prepack_weights(model, rows=20) if packed else model
    seq = torch.randint(0, 11, (1, 32), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(1)
    with torch.no_grad():
        model(seq[:, :start], cache=cache)  # clean blocks cached
        drafts = seq[0, start + 1 : start + 4]
        rnd = ss._build_round(seq, start, 4, 1, drafts, model.mask_id, 32)
        commit = rnd.row_starts[-1]
        got = ss.rows_forward(fast, rnd.ids[None], rnd.positions, rnd.mask, cache, commit)
        want = ss._rows_logits_uncached(model, seq, start, rnd)
    assert rnd.extended and [len(w) for w in want] == [4, 4, 4, 8]
    torch.testing.assert_close(got[0], torch.cat(want), atol=1e-5, rtol=1e-5)
    # the committed keys are the clean block's, as a plain cached forward writes them
    reference = model.new_cache(1)
    with torch.no_grad():
        model(torch.cat([seq[:, : start + 1], drafts[None]], 1), cache=reference)
    assert cache.length == start + 4
    torch.testing.assert_close(
        cache.keys[1][:, :, : start + 4], reference.keys[1][:, :, : start + 4]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_rotary_table_rotates_as_the_model_does_bit_for_bit(dtype):
    """`rows_forward`'s rotation (four calls on `rotary_table`) against `model.apply_rotary`,
    indexed from the whole context's table as a sampler does, or made for the positions."""
    from course_lib.model import apply_rotary

    model = _tiny("rotary", 4).to(dtype)
    D = model.config.head_dim
    positions = torch.tensor([3, 0, 31, 17, 17, 8])
    x = torch.randn(2, 1, model.config.n_head, 6, D, generator=torch.Generator().manual_seed(0))
    x = x.to(dtype)
    want = apply_rotary(x, model.rotary(positions))
    table = ss.rotary_table(model)
    for cos, sin in [(t[positions] for t in table), ss.rotary_table(model, positions)]:
        assert torch.equal(x * cos + x.roll(D // 2, -1) * sin, want)
    assert ss.rotary_table(_tiny("learned", 4)) is None


def test_a_cache_with_room_is_longer_by_whole_blocks():
    model = _tiny("rotary", 4)
    cache = ss.cache_with_room(model, 5)
    assert cache.capacity == 32 + 8 and cache.length == 0
    assert cache.keys[0].dtype == model.token_emb.weight.dtype


def test_left_to_right_bits_is_the_exact_likelihood():
    """Against a direct product of the model's conditionals; labelled apart from the ELBO."""
    model = _tiny("learned", 4)
    ids = torch.randint(0, 11, (96,), generator=torch.Generator().manual_seed(2))
    got = ss.left_to_right_bits(model, ids)
    windows = ids.view(3, 32)
    bits = []
    with torch.no_grad():
        for w in windows:
            nats = 0.0
            for i in range(32):
                end = (i // 4 + 1) * 4
                x = torch.cat([w[:i], torch.full((end - i,), model.mask_id)])[None]
                nats -= torch.log_softmax(model(x)[0, i].double(), -1)[w[i]].item()
            bits.append(nats / 32 / math.log(2))
    assert got.n_windows == 3 and got.n_chars == 96
    assert math.isclose(got.bits_per_char, sum(bits) / 3, rel_tol=1e-6)
    elbo = metrics.held_out_bits(model, ids)
    assert elbo.method.startswith("ELBO") and got.method.startswith("-log2 p")


def test_bad_inputs_are_refused_clearly():
    ar = Transformer(ModelConfig(vocab_size=11, context_len=16, n_layer=1, d_model=16))
    with pytest.raises(ValueError, match="block-causal"):
        ss.sample_self_speculative(ar)
    with pytest.raises(ValueError, match="block-causal"):
        ss.left_to_right_bits(ar, torch.zeros(64, dtype=torch.long))
    shifted = ModelConfig(
        vocab_size=11,
        context_len=16,
        n_layer=1,
        d_model=16,
        attention="block_causal",
        block_len=4,
        next_token_shift=True,
    )
    with pytest.raises(ValueError, match="next_token_shift"):
        ss.sample_left_to_right(Transformer(shifted))
    model = _tiny("learned", 4)
    with pytest.raises(ValueError, match="multiple of the block length"):
        ss.sample_self_speculative(model, length=30)
    with pytest.raises(ValueError, match="length must be"):
        ss.sample_self_speculative(model, length=64)
    with pytest.raises(ValueError, match="max_drafts"):
        ss.sample_self_speculative(model, max_drafts=0)
    with pytest.raises(ValueError, match="temperature"):
        ss.sample_self_speculative(model, temperature=0.0)
    with pytest.raises(ValueError, match="2 are needed"):
        ss.left_to_right_bits(model, torch.zeros(40, dtype=torch.long))


def test_the_speed_script_times_ar_and_each_model_in_turns(tmp_path):
    """scripts/self_speculative_speed.py on the shipped checkpoints, two short turns."""
    import json

    from script_helpers import load_script

    script = load_script("self_speculative_speed")
    out = tmp_path / "speed.json"
    assert script.main(["--rounds", "2", "--models", "bd3lm-ar-b2-more", "--out", str(out)]) == 0
    listed = json.loads(out.read_text())["rows"]
    kinds = [(r["model"], r["sampler"]) for r in listed]
    assert set(kinds) == {
        ("ar-small", "ar"),  # the frontier's, float32, and in bfloat16 where the CPU has it
        ("ar-small", "speculative"),  # drafts of 2 and of 4
        ("bd3lm-ar-b2-more", "self_speculative"),
        ("bd3lm-ar-b2-more", "draft_tree"),  # the frontier's two trees
    }
    assert kinds.count(("bd3lm-ar-b2-more", "draft_tree")) == 2
    ar = listed[0]
    assert ar["sampler"] == "ar" and ar["precision"] == "float32" and ar["speedup_vs_ar"] == 1.0
    assert ar["tokens_per_forward"] == 1.0
    own = next(r for r in listed if r["sampler"] == "self_speculative")
    assert 1.0 < own["tokens_per_forward"] <= 2.0 and own["positions_per_forward"] > 2
    small, large = [r for r in listed if r["sampler"] == "draft_tree"]  # depth 2: 3 a forward
    assert small["setting"] == "tree=6 depth=2 T=0.9" and 1.0 < small["tokens_per_forward"] <= 3
    assert large["positions_per_forward"] > small["positions_per_forward"]
    assert small["positions_per_forward"] > own["positions_per_forward"]
    for r in listed:
        assert len(r["call_seconds"]) == 2 and r["tokens_per_s"] > 0
        assert r["speedup_vs_fastest_ar"] <= r["speedup_vs_ar"] + 1e-9
