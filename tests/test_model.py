"""course_lib.model: attention patterns, the KV cache, config checks, parameter and FLOP counts."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from course_lib.model import (
    ModelConfig,
    Transformer,
    apply_rotary,
    attention_mask,
    forward_flops,
    rotary_angles,
)

V = 98
L = 32  # context
BLOCK = 8


def make(attention="causal", dtype=torch.float32, **overrides):
    kw = dict(context_len=L, n_layer=2, n_head=2, d_model=32, attention=attention)
    if attention == "block_causal":
        kw["block_len"] = BLOCK
    torch.manual_seed(0)
    return Transformer(ModelConfig(**(kw | overrides))).to(dtype).eval()


def ids(batch=2, length=L, seed=0, high=V):
    return torch.randint(0, high, (batch, length), generator=torch.Generator().manual_seed(seed))


def changed_after(x, pos, seed=1):
    """`x` with every token from `pos` on replaced by different ones."""
    y = x.clone()
    y[:, pos:] = (x[:, pos:] + 1 + ids(x.shape[0], x.shape[1] - pos, seed, V - 1)) % V
    assert (y[:, pos:] != x[:, pos:]).all()
    return y


def per_position_change(model, x, y):
    """max |logits(x) - logits(y)| at each position: (L,)."""
    with torch.no_grad():
        return (model(x) - model(y)).abs().amax(dim=(0, 2))


DIFFERENT = 1e-4  # a real dependence moves logits by ~1e-2 at init; rounding by < 1e-6


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_causal_logits_ignore_later_tokens(position):
    model = make("causal", position=position)
    x = ids()
    for pos in (1, 13, L - 1):
        change = per_position_change(model, x, changed_after(x, pos))
        torch.testing.assert_close(change[:pos], torch.zeros(pos), rtol=0, atol=1e-6)
        assert (change[pos:] > DIFFERENT).all()


def test_bidirectional_logits_depend_on_later_tokens():
    model = make("bidirectional")
    x = ids()
    change = per_position_change(model, x, changed_after(x, 20))
    assert (change > DIFFERENT).all()  # every position, before 20 included


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_block_causal_sees_its_own_block_and_earlier_blocks_only(position):
    model = make("block_causal", position=position)
    x = ids()
    n_blocks = L // BLOCK
    for b in range(n_blocks):
        blk = slice(b * BLOCK, (b + 1) * BLOCK)
        # the last token of block b changes every logit of block b (and of later blocks)...
        y = x.clone()
        y[:, blk.stop - 1] = (y[:, blk.stop - 1] + 1) % V
        change = per_position_change(model, x, y)
        assert (change[blk] > DIFFERENT).all(), b
        assert (change[blk.stop :] > DIFFERENT).all(), b
        # ...and no logit of an earlier block
        torch.testing.assert_close(change[: blk.start], torch.zeros(blk.start), rtol=0, atol=1e-6)
        if b + 1 < n_blocks:
            # changing every later block leaves block b alone
            change = per_position_change(model, x, changed_after(x, blk.stop))
            torch.testing.assert_close(change[blk], torch.zeros(BLOCK), rtol=0, atol=1e-6)


def full_logits(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("chunks", [[1] * L, [5, 1, 10, 3, 13], [L]])
def test_causal_kv_cache_gives_the_full_forward_logits(chunks, position):
    model = make("causal", torch.float64, position=position)
    x = ids()
    cache = model.new_cache(2)
    assert cache.keys[0].dtype == torch.float64
    pieces, start = [], 0
    with torch.no_grad():
        for n in chunks:
            pieces.append(model(x[:, start : start + n], cache=cache))
            start += n
            assert cache.length == start
    torch.testing.assert_close(torch.cat(pieces, 1), full_logits(model, x), rtol=1e-10, atol=1e-10)


def test_causal_kv_cache_in_float32_matches_within_float32_rounding():
    model = make("causal")
    x = ids()
    cache = model.new_cache(2)
    with torch.no_grad():
        cached = torch.cat([model(x[:, i : i + 1], cache=cache) for i in range(L)], 1)
    torch.testing.assert_close(cached, full_logits(model, x))


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_block_causal_kv_cache_block_by_block(position):
    model = make("block_causal", torch.float64, position=position)
    x = ids()
    cache = model.new_cache(2)
    with torch.no_grad():
        cached = torch.cat(
            [model(x[:, s : s + BLOCK], cache=cache) for s in range(0, L, BLOCK)], dim=1
        )
    assert cache.length == L
    torch.testing.assert_close(cached, full_logits(model, x), rtol=1e-10, atol=1e-10)


def test_a_block_being_denoised_does_not_enter_the_cache():
    model = make("block_causal", torch.float64)
    x = ids()
    cache = model.new_cache(2)
    mask_id = model.mask_id
    with torch.no_grad():
        model(x[:, :BLOCK], cache=cache)
        noisy = x[:, BLOCK : 2 * BLOCK].clone()
        noisy[:, ::2] = mask_id  # a partly masked second block
        first = model(noisy, cache=cache, update_cache=False)
        assert cache.length == BLOCK
        again = model(noisy, cache=cache, update_cache=False)
        assert torch.equal(first, again)
        # another guess for the block: the cache still holds exactly the first block
        other = model(x[:, BLOCK : 2 * BLOCK], cache=cache, update_cache=False)
        assert cache.length == BLOCK
        committed = model(x[:, BLOCK : 2 * BLOCK], cache=cache)
        assert cache.length == 2 * BLOCK
        third = model(x[:, 2 * BLOCK : 3 * BLOCK], cache=cache)
    full = full_logits(model, x)
    reference = full_logits(model, torch.cat([x[:, :BLOCK], noisy], 1))[:, BLOCK:]
    torch.testing.assert_close(first, reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(other, full[:, BLOCK : 2 * BLOCK], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(committed, other, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(third, full[:, 2 * BLOCK : 3 * BLOCK], rtol=1e-10, atol=1e-10)


def test_update_cache_false_in_a_causal_model():
    model = make("causal", torch.float64)
    x = ids()
    cache = model.new_cache(2)
    with torch.no_grad():
        model(x[:, :10], cache=cache)
        peek = model(x[:, 10:11], cache=cache, update_cache=False)
        assert cache.length == 10
        assert torch.equal(model(x[:, 10:11], cache=cache, update_cache=False), peek)
        model(x[:, 10:], cache=cache)
    torch.testing.assert_close(peek, full_logits(model, x)[:, 10:11], rtol=1e-10, atol=1e-10)
    assert cache.length == L


def test_bidirectional_model_refuses_a_kv_cache():
    model = make("bidirectional")
    cache = make("causal").new_cache(1)
    with pytest.raises(ValueError, match="bidirectional"):
        model(ids(1, 4), cache=cache)


def test_cache_of_another_batch_size_is_refused():
    model = make("causal")
    with pytest.raises(ValueError, match="batch"):
        model(ids(2, 4), cache=model.new_cache(3))


def test_sequences_longer_than_the_context_are_refused():
    model = make("causal")
    with pytest.raises(ValueError, match="context"):
        model(ids(1, L + 1))
    cache = model.new_cache(1)
    model(ids(1, L - 2), cache=cache)
    with pytest.raises(ValueError, match="longer than the model's context"):
        model(ids(1, 3), cache=cache)
    assert cache.length == L - 2


@pytest.mark.parametrize("attention", ["causal", "bidirectional", "block_causal"])
def test_positions_and_attn_mask_hooks_default_to_the_config(attention):
    """Passing the default positions and the config's own mask changes nothing."""
    model, x = make(attention), ids()
    positions = torch.arange(L)
    mask = attention_mask(model.config, positions, positions)
    mask = torch.ones(L, L, dtype=torch.bool) if mask is None else mask
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, positions=positions, attn_mask=mask), model(x), rtol=0, atol=1e-6
        )
        torch.testing.assert_close(model(x, positions=positions), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_two_copies_side_by_side_with_a_block_diagonal_mask_are_two_forwards(position):
    """Repeated positions and a custom mask: two sequences packed into one row."""
    model = make("bidirectional", position=position)
    x, y = ids(1, 12, seed=0), ids(1, 12, seed=1)
    block = torch.arange(24) // 12
    with torch.no_grad():
        packed = model(
            torch.cat([x, y], 1),
            positions=torch.arange(12).repeat(2),
            attn_mask=block[:, None] == block[None, :],
        )
        torch.testing.assert_close(packed[:, :12], model(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(packed[:, 12:], model(y), rtol=0, atol=1e-5)


def test_bad_positions_and_masks_are_refused():
    model, x = make("causal"), ids(1, 8)
    with pytest.raises(ValueError, match="positions must be"):
        model(x, positions=torch.arange(7))
    with pytest.raises(ValueError, match="positions must be"):
        model(x, positions=torch.arange(8) + L)
    with pytest.raises(ValueError, match="attn_mask must be"):
        model(x, attn_mask=torch.ones(8, 8))
    with pytest.raises(ValueError, match="without a cache"):
        model(x, cache=model.new_cache(1), positions=torch.arange(8))


def test_idx_must_be_two_dimensional():
    with pytest.raises(ValueError, match="batch, length"):
        make()(torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(attention="block_causal", block_len=5), "divide"),
        (dict(attention="block_causal"), "block_len"),
        (dict(block_len=8), "only for attention='block_causal'"),
        (dict(d_model=30, n_head=4), "divisible"),
        (dict(attention="sliding"), "attention must be one of"),
        (dict(n_layer=0), "n_layer"),
        (dict(vocab_size=98.0), "vocab_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(position="sinusoidal"), "position must be one of"),
        (dict(position="rotary", d_model=30, n_head=2), "must be even"),
    ],
)
def test_model_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**({"context_len": 32} | overrides))


def test_no_logit_for_the_mask_but_the_mask_is_a_valid_input():
    model = make("bidirectional")
    assert model.mask_id == V
    x = ids(2, 16)
    x[:, ::3] = model.mask_id
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 16, V)  # vocab_size, not vocab_size + 1
    assert torch.isfinite(logits).all()
    y = x.clone()
    y[:, 0] = 0  # the mask embedding is its own row, different from every token's
    assert not torch.allclose(model(y), logits)


def test_num_params_matches_a_hand_count():
    cfg = ModelConfig(vocab_size=10, context_len=6, n_layer=2, n_head=2, d_model=4, mlp_ratio=3)
    model = Transformer(cfg)
    # d = 4, mlp width f = 12. Per block: two layer norms 2 * (4 + 4) = 16; qkv 4*12 + 12 = 60;
    # attention projection 4*4 + 4 = 20; mlp in 4*12 + 12 = 60; mlp out 12*4 + 4 = 52: 208.
    # Final norm 8, head 4*10 = 40 (no bias). Embeddings: (10 + 1 mask) * 4 + 6 * 4 = 68.
    assert model.num_params() == 2 * 208 + 8 + 40 == 464
    assert model.num_params(non_embedding=False) == 464 + 68


def test_forward_flops_matches_a_hand_computed_value():
    cfg = ModelConfig(vocab_size=10, context_len=16, n_layer=1, n_head=2, d_model=8)
    # per layer: qkv 8*24 + proj 8*8 + mlp 8*32 + 32*8 = 768 weights; head 8*10 = 80
    # dense: 2 FLOPs per weight per token = 2*3*(768 + 80) = 5088
    # attention: 2*2*d per key per layer = 4*8 = 32 per (query, key) pair
    assert forward_flops(cfg, 3) == 5088 + 32 * 3 * 3
    assert forward_flops(cfg, 3, context=10) == 5088 + 32 * 3 * 10
    with pytest.raises(ValueError, match="n_tokens"):
        forward_flops(cfg, 0)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_forward_flops_matches_torchs_flop_counter(attention):
    model = make(attention)
    counter = FlopCounterMode(display=False)
    # the math backend runs attention as matmuls, which the counter sees
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(ids(1, 16))
    assert counter.get_total_flops() == forward_flops(model.config, 16)


def test_forward_flops_with_a_cache_counts_the_cached_keys():
    model = make("causal")
    cache = model.new_cache(1)
    x = ids(1, 20)
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        model(x[:, :16], cache=cache)
        with counter, sdpa_kernel(SDPBackend.MATH):
            model(x[:, 16:], cache=cache)
    assert counter.get_total_flops() == forward_flops(model.config, 4, context=20)


# -- rotary position embeddings ----------------------------------------------------------------


def test_rotary_scores_depend_only_on_the_offset():
    """RoPE's point: q.k after rotation at positions (m, n) is a function of m - n alone."""
    D = 16
    q, k = torch.randn(
        2, 1, 1, 1, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )

    def score(m, n):
        qm = apply_rotary(q, rotary_angles(torch.tensor([m]), D))
        kn = apply_rotary(k, rotary_angles(torch.tensor([n]), D))
        return (qm * kn).sum().item()

    for offset in (0, 3, -5):
        scores = [score(n + offset, n) for n in (0, 7, 40, 200)]
        assert scores == pytest.approx([scores[0]] * 4, abs=1e-4), offset
    assert score(3, 0) != pytest.approx(score(4, 0), abs=1e-3)  # the offset matters
    # a rotation keeps lengths, and position 0 is no rotation at all
    qr = apply_rotary(q, rotary_angles(torch.tensor([123]), D))
    torch.testing.assert_close(qr.norm(), q.norm())
    torch.testing.assert_close(apply_rotary(q, rotary_angles(torch.tensor([0]), D)), q)


def test_a_rotary_model_has_no_position_embedding_and_still_sees_order():
    model = make("bidirectional", position="rotary")
    assert model.pos_emb is None
    assert not any("pos_emb" in name for name, _ in model.named_parameters())
    assert model.num_params() == make("bidirectional").num_params()  # same non-embedding count
    assert model.num_params(non_embedding=False) == sum(p.numel() for p in model.parameters())
    # without positions a bidirectional model would be blind to order: swapping two tokens
    # would swap their logits and change nothing else
    x = ids(1, 12)
    y = x.clone()
    y[:, [2, 9]] = x[:, [9, 2]]
    with torch.no_grad():
        a, b = model(x), model(y)
    assert (a[:, [2, 9]] - b[:, [9, 2]]).abs().max() > DIFFERENT


def test_eval_mode_restores_the_mode_even_after_an_exception():
    from course_lib import diffusion
    from course_lib.model import eval_mode

    net = torch.nn.Linear(2, 2)
    for start in (True, False):
        net.train(start)
        with pytest.raises(RuntimeError, match="inside"), eval_mode(net):
            assert not net.training
            raise RuntimeError("inside")
        assert net.training == start
    with eval_mode(lambda x: x):  # a plain denoiser function: nothing to switch
        pass
    assert diffusion.eval_mode is eval_mode  # its old home still works


def test_device_and_dtype_reads_the_weights_or_falls_back():
    from course_lib.model import device_and_dtype

    net = Transformer(ModelConfig(n_layer=1, d_model=32, n_head=2, context_len=8)).double()
    assert device_and_dtype(net) == (torch.device("cpu"), torch.float64)
    assert device_and_dtype(lambda ids: ids, "meta") == (torch.device("meta"), torch.float32)
    assert device_and_dtype(torch.nn.ReLU()) == (torch.device("cpu"), torch.float32)
