"""course_lib.fast: every optimization stage writes the reference's tokens (notebook 09)."""

import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from course_lib import fast, fast_options, sampling
from course_lib.model import ModelConfig, Transformer

V, L, BLOCK = 11, 32, 8
CPU_STAGES = [(name, opts) for name, opts in fast.stages_for("cpu") if not opts.compile]
CPU_AR_STAGES = [
    (name, opts) for name, opts in fast.stages_for("cpu", fast.AR_STAGES) if not opts.compile
]


def make(attention, dtype=torch.float32, seed=0, position="learned"):
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=V,
        context_len=L,
        n_layer=2,
        n_head=2,
        d_model=32,
        attention=attention,
        block_len=BLOCK if attention == "block_causal" else None,
        position=position,
    )
    return Transformer(config).to(dtype).eval()


@pytest.fixture(scope="module")
def models():
    models = {kind: make(kind) for kind in ("block_causal", "bidirectional", "causal")}
    models["rotary_block_causal"] = make("block_causal", position="rotary")
    models["rotary_causal"] = make("causal", position="rotary")
    return models


PROMPT = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # a whole block and a bit
# (model, block_len, strategy, steps per block, threshold, prompt): every loop of the sampler
CASES = [
    ("block_causal", None, "confidence", 3, None, None),
    ("block_causal", None, "confidence", 8, None, PROMPT),
    ("block_causal", None, "threshold", 8, 0.1, PROMPT),
    ("block_causal", None, "ancestral", 12, None, PROMPT),  # more steps than tokens: skips
    ("bidirectional", None, "ancestral", 48, None, None),  # MDLM, one block of 32
    ("bidirectional", None, "confidence", 8, None, PROMPT),
    ("bidirectional", None, "threshold", 8, 0.05, None),  # all at once: ends early
    ("bidirectional", BLOCK, "confidence", 4, None, None),  # semi-AR, whole sequence each step
    ("rotary_block_causal", None, "confidence", 8, None, PROMPT),  # RoPE: the shipped models
]


def run_case(models, case, seed, options=None, sampler=None):
    kind, block_len, strategy, steps, threshold, prompt = case
    settings = dict(strategy=strategy, threshold=threshold, prompt=prompt, temperature=0.8)
    if options is None and sampler is None:
        return fast.reference_sample_diffusion(
            models[kind],
            length=L,
            block_len=block_len,
            steps_per_block=steps,
            batch_size=3,
            generator=torch.Generator().manual_seed(seed),
            **settings,
        )
    sampler = sampler or fast.FastDiffusionSampler(
        models[kind], length=L, block_len=block_len, batch_size=3, options=options
    )
    return sampler(steps_per_block=steps, generator=torch.Generator().manual_seed(seed), **settings)


@pytest.fixture(scope="module")
def references(models):
    return {
        (i, seed): run_case(models, case, seed) for i, case in enumerate(CASES) for seed in (0, 1)
    }


@pytest.mark.parametrize("stage", [name for name, _ in CPU_STAGES])
def test_every_diffusion_stage_writes_the_reference_tokens(stage, models, references):
    options = dict(CPU_STAGES)[stage]
    for (i, seed), ref in references.items():
        out = run_case(models, CASES[i], seed, options)
        assert torch.equal(out.tokens, ref.tokens), (stage, CASES[i][:5], seed)
        assert out.n_generated == ref.n_generated and out.steps_taken == ref.steps_taken
        assert out.tokens_per_step == ref.tokens_per_step


def test_the_cases_exercise_what_the_stages_change(models, references):
    """The test above could pass vacuously: check its cases reach the interesting paths."""
    by_case = {i: ref for (i, seed), ref in references.items() if seed == 0}
    assert by_case[2].tokens_per_step > BLOCK / 8  # threshold committed extra tokens
    assert by_case[6].steps_taken == 1 and by_case[6].tokens_per_step == L
    fastest = CPU_STAGES[-1][1]
    skipped = run_case(models, CASES[4], 0, fastest)  # ancestral, 48 steps for 32 tokens
    assert skipped.nfe < by_case[4].nfe == 48
    cached = run_case(models, CASES[0], 0, fastest)  # one commit per finished block but the last
    assert cached.nfe == by_case[0].nfe + L // BLOCK - 1


# the GPU's last stage without the switches only a GPU has: what no_host_reads changes, on a CPU
GPU_LOOP = dataclasses.replace(
    fast.final_stage(fast.stages_for("cuda"))[1], bf16=False, cuda_graphs=False
)


def host_reads(fn, monkeypatch) -> int:
    """How often `fn()` reads a tensor's value on the host: .item(), int(t), bool(t) (seen by
    a dispatch mode as aten._local_scalar_dense, or as aten.is_nonzero for bool(t) under
    inference mode) and Tensor.tolist (which the dispatcher does not see, so a wrapper
    counts it). On a GPU each is a wait for the device."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    reading = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.item.default}
    count = 0

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal count
            count += func in reading
            return func(*args, **(kwargs or {}))

    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        nonlocal count
        count += 1
        return tolist(self)

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "tolist", counted_tolist)
        with Reads():
            fn()
    return count


@pytest.mark.parametrize(
    "strategy, threshold", [("confidence", None), ("threshold", 0.3), ("ancestral", None)]
)
@pytest.mark.parametrize("kind", ["block_causal", "bidirectional"])
def test_the_gpu_loop_reads_nothing_per_step(kind, strategy, threshold, models, monkeypatch):
    """With no_host_reads (the GPU's stages) a call reads the host only between blocks: as
    often with 8 steps per block as with 2. Without it, threshold and ancestral decoding read
    once a step, and the counter sees it (so the first assertion can fail)."""

    def reads(options, steps):
        sampler = fast.FastDiffusionSampler(models[kind], length=L, batch_size=2, options=options)
        settings = dict(strategy=strategy, threshold=threshold, steps_per_block=steps)
        call = lambda: sampler(generator=torch.Generator().manual_seed(0), **settings)  # noqa: E731
        return host_reads(call, monkeypatch)

    assert GPU_LOOP.no_host_reads
    assert reads(GPU_LOOP, 8) == reads(GPU_LOOP, 2)
    if strategy != "confidence":
        per_step = dataclasses.replace(GPU_LOOP, no_host_reads=False)
        assert reads(per_step, 8) > reads(per_step, 2)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_the_gpu_loop_writes_the_reference_tokens_where_every_block_ran_all_its_steps(
    i, models, references
):
    """Drawing a block's numbers before its loop draws the same numbers in the same order, so
    the tokens are the reference's until a block finishes early: there the reference stops
    drawing, and the next blocks get other numbers. So: the first block always agrees, and
    the whole sequence wherever the reference ran every step of every block."""
    kind, block_len, _, steps, _, _ = CASES[i]
    b = block_len or (models[kind].config.block_len if kind.endswith("block_causal") else L)
    full = 0
    for seed in (0, 1):
        ref, out = references[(i, seed)], run_case(models, CASES[i], seed, GPU_LOOP)
        assert not (out.tokens == models[kind].mask_id).any()
        assert torch.equal(out.tokens[:, :b], ref.tokens[:, :b]), (CASES[i][:5], seed)
        assert out.steps_taken >= ref.steps_taken
        if ref.steps_taken == steps * (L // b):
            assert torch.equal(out.tokens, ref.tokens), (CASES[i][:5], seed)
            full += 1
    if CASES[i][2] == "confidence" and CASES[i][5] is None:  # every step commits its quota
        assert full == 2


@pytest.mark.parametrize("strategy", ["confidence", "ancestral"])
def test_what_the_steps_need_from_the_host_is_built_once_per_call(strategy, models, monkeypatch):
    """The schedule's counts and reveal chances reach the device in one copy per call, not
    one per block: on a GPU such a copy waits for the queued work. As many are built for a
    call of 4 blocks as for one of 2."""
    built = []
    for name in ("masks_left_after", "reveal_probability"):
        rule = getattr(sampling, name)
        spy = lambda *args, rule=rule, name=name: built.append(name) or rule(*args)  # noqa: E731
        monkeypatch.setattr(sampling, name, spy)

    def count(length):
        built.clear()
        sampler = fast.FastDiffusionSampler(
            models["block_causal"], length=length, batch_size=2, options=GPU_LOOP
        )
        sampler(steps_per_block=4, strategy=strategy, generator=torch.Generator().manual_seed(0))
        return len(built)

    assert count(2 * BLOCK) == count(4 * BLOCK) == (1 if strategy == "confidence" else 4)


class CPUReplay:
    """A CUDA graph's contract, as far as a CPU can keep it (a stand-in for `fast.GraphedStep`):
    at capture it keeps `fn`, with the settings bound into it, and copies of the inputs; each
    call copies its inputs into those copies, runs the kept `fn` on them and writes the result
    into the outputs of capture. So a graph key that leaves a setting out replays the stale
    setting here too, and a caller keeping an output past the next call sees it overwritten.
    What capture itself forbids (a read of a value, a copy from the host) it cannot see: only a
    GPU run checks that."""

    def __init__(self, fn, *inputs):
        self.fn, self.inputs = fn, [t.clone() for t in inputs]
        self.outputs = fn(*self.inputs)

    def __call__(self, *inputs):
        for buffer, t in zip(self.inputs, inputs, strict=True):
            buffer.copy_(t)
        return self.outputs.copy_(self.fn(*self.inputs))


REPLAY_CASES = [(i, False) for i in range(len(CASES))] + [
    (i, True) for i, case in enumerate(CASES) if case[0].endswith("block_causal")
]


@pytest.mark.parametrize("i, fuse_commit", REPLAY_CASES)
def test_the_gpu_loop_replayed_as_graphs_writes_the_tokens_it_writes_eagerly(
    i, fuse_commit, models, monkeypatch
):
    """With cuda_graphs, each whole step (`FastDiffusionSampler.whole_step`) is one graph per
    shape and setting, captured once and replayed. Replayed as a graph would replay it, every
    case writes the tokens of the same loop run eagerly, in a second call and with other
    settings, and a block-causal model with the cache needs one graph for all its blocks' steps."""
    kind, block_len, strategy, steps, threshold, prompt = CASES[i]
    check = fast._check_options  # cuda_graphs would be refused on a CPU: the replay stands in
    no_graphs = lambda options: dataclasses.replace(options, cuda_graphs=False)  # noqa: E731
    monkeypatch.setattr(fast, "_check_options", lambda options, m: check(no_graphs(options), m))
    monkeypatch.setattr(fast, "GraphedStep", CPUReplay)
    graphed, eager = (
        fast.FastDiffusionSampler(
            models[kind], length=L, block_len=block_len, batch_size=3, options=options
        )
        for options in (dataclasses.replace(GPU_LOOP, cuda_graphs=True), GPU_LOOP)
    )
    settings = dict(strategy=strategy, threshold=threshold, prompt=prompt)
    settings.update(steps_per_block=steps, fuse_commit=fuse_commit)
    calls = [(0, 0.8, None), (1, 0.8, None), (0, 1.5, None)]  # seed, temperature, confidence
    if strategy != "ancestral":
        calls.append((0, 0.8, "margin"))
    for seed, temperature, confidence in calls:
        draw = dict(temperature=temperature, confidence=confidence)
        want = eager(generator=torch.Generator().manual_seed(seed), **settings, **draw)
        got = graphed(generator=torch.Generator().manual_seed(seed), **settings, **draw)
        assert torch.equal(got.tokens, want.tokens), (CASES[i][:5], fuse_commit, seed)
        assert got.nfe == want.nfe and got.steps_taken == want.steps_taken
        if seed == 0 and temperature == 0.8 and confidence is None:
            captured = len(graphed.whole_graphs)
    # one set of graphs per setting; the second seed captured nothing new
    assert len(graphed.whole_graphs) == (len(calls) - 1) * captured
    if kind.endswith("block_causal") and not fuse_commit and prompt is None:
        assert captured == 1


def test_the_threshold_is_strict_in_the_fast_sampler_too(models):
    """A model with enormous logits is certain (probability exactly 1 in float64) at most
    positions. threshold=1.0 commits nothing beyond the quota (no confidence *exceeds* 1), so
    it decodes exactly like "confidence"; a threshold just below 1 commits them at once."""
    sure = make("block_causal")
    with torch.no_grad():
        sure.head.weight.mul_(1e4)
    sampler = fast.FastDiffusionSampler(sure, length=L, batch_size=3)

    def draw(**settings):
        return sampler(
            steps_per_block=BLOCK, generator=torch.Generator().manual_seed(0), **settings
        )

    quota_only = draw(strategy="confidence")
    at_one = draw(strategy="threshold", threshold=1.0)
    assert torch.equal(at_one.tokens, quota_only.tokens)
    assert at_one.steps_taken == quota_only.steps_taken == L  # one token per step
    below_one = draw(strategy="threshold", threshold=1 - 1e-9)
    assert below_one.steps_taken < L / 2  # the certain positions went at once: not vacuous


def test_every_sampler_takes_its_step_rule_from_sampling(models, monkeypatch):
    """One rule for the reference and the fast samplers: `sampling.confident_commit` decides
    every confidence and threshold step of both (row by row before `vectorized_unmask`, all
    rows at once after), so a change to the rule cannot reach one of them only."""
    calls = []
    rule = sampling.confident_commit

    def spy(*args):
        calls.append(args[-2:])  # (confidence kind, threshold)
        return rule(*args)

    monkeypatch.setattr(sampling, "confident_commit", spy)
    for options in (None, CPU_STAGES[0][1], CPU_STAGES[-1][1]):  # reference, naive, fastest
        calls.clear()
        out = run_case(models, CASES[2], 0, options)  # threshold 0.1, with a prompt
        if options is CPU_STAGES[0][1]:  # the naive stage: once per row still masked
            assert out.steps_taken < len(calls) <= 3 * out.steps_taken
        else:
            assert len(calls) == out.steps_taken
        assert set(calls) == {("low_confidence", 0.1)}


@pytest.mark.parametrize("i", [0, 1, 2, 3, 8])  # the block-causal cases, prompts included
def test_a_fused_commit_writes_the_same_tokens_with_one_forward_fewer_per_block(i, models):
    """The next block's first forward also writes the finished block into the cache."""
    kind = CASES[i][0]
    sampler = fast.FastDiffusionSampler(models[kind], length=L, batch_size=3)
    n_blocks = L // BLOCK
    for seed in (0, 1):
        separate = run_case(models, CASES[i], seed, sampler=sampler)
        fused = sampler(
            steps_per_block=CASES[i][3],
            strategy=CASES[i][2],
            threshold=CASES[i][4],
            prompt=CASES[i][5],
            temperature=0.8,
            generator=torch.Generator().manual_seed(seed),
            fuse_commit=True,
        )
        assert torch.equal(fused.tokens, separate.tokens), (CASES[i][:5], seed)
        assert fused.nfe == separate.nfe - (n_blocks - 1)
        assert fused.steps_taken == separate.steps_taken


def test_a_fused_commit_needs_the_cache_and_static_buffers(models):
    plain = fast.DiffusionOptimizations(static_buffers=False, skip_unchanged=False)
    for kind, options in (("bidirectional", None), ("block_causal", plain)):
        sampler = fast.FastDiffusionSampler(models[kind], length=L, batch_size=1, options=options)
        with pytest.raises(ValueError, match="fuse_commit"):
            sampler(steps_per_block=4, fuse_commit=True)


def test_a_kept_sampler_starts_afresh_every_call(models, references):
    """Static buffers are reused across calls: nothing of the last call may leak in."""
    for i in (1, 3, 4):
        kind, block_len = CASES[i][:2]
        sampler = fast.FastDiffusionSampler(
            models[kind], length=L, block_len=block_len, batch_size=3
        )
        for seed in (1, 0, 1):
            assert torch.equal(
                run_case(models, CASES[i], seed, sampler=sampler).tokens, references[i, seed].tokens
            )


@pytest.mark.parametrize("kind", ["causal", "rotary_causal"])
@pytest.mark.parametrize("stage", [name for name, _ in CPU_AR_STAGES])
def test_every_ar_stage_writes_the_tokens_of_sample_ar(stage, kind, models):
    options = dict(CPU_AR_STAGES)[stage]
    model = models[kind]
    decoder = fast.FastARDecoder(model, batch_size=3, options=options)
    for seed, prompt_len in [(0, 1), (1, 4), (2, 4)]:
        prompt = torch.randint(0, V, (3, prompt_len), generator=torch.Generator().manual_seed(seed))
        kwargs = dict(prompt=prompt, n_tokens=L - prompt_len, temperature=0.9)
        expected = sampling.sample_ar(
            model, use_kv_cache=False, generator=torch.Generator().manual_seed(seed), **kwargs
        )
        got = decoder(generator=torch.Generator().manual_seed(seed), **kwargs)
        assert torch.equal(got, expected), (stage, seed)
        once = fast.fast_sample_ar(
            model, options=options, generator=torch.Generator().manual_seed(seed), **kwargs
        )
        assert torch.equal(once, expected)


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("attention", ["causal", "block_causal"])
def test_static_forward_is_the_cached_forward(attention, position):
    """gpt-fast's step (writes at position tensors, attends over the whole cache under the
    mask) computes what model(...) computes; float64 so that the check can be 1e-10."""
    model = make(attention, torch.float64, position=position)
    x = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(2)
    cache.keys[0].fill_(1e3)  # garbage beyond what is written must stay hidden by the mask
    with torch.no_grad():
        full = model(x)
        pieces = [
            fast.static_forward(model, x[:, s:e], torch.arange(s, e), cache)
            for s, e in [(0, 8), (8, 16), (16, 24), (24, 32)]
        ]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize(
    "attention, pieces",
    [
        ("causal", [(0, 5), *[(s, s + 1) for s in range(5, L)]]),  # a prefill, then decoding
        ("block_causal", [(0, 8), (8, 16), (16, 24), (24, 32)]),  # one block each: no mask
        ("block_causal", [(0, 16), (16, 24), (24, 32)]),  # two blocks at once: masked
    ],
)
def test_sliced_forward_is_the_cached_forward(attention, pieces, position):
    """The fused-kernel variant (only the filled keys, no mask where none is needed) computes
    what model(...) computes, and writes the same cache; float64 so the check can be 1e-10."""
    from course_lib.fast_forward import hides_nothing, sliced_forward

    model = make(attention, torch.float64, position=position)
    x = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(0))
    cache, static_cache = model.new_cache(2), model.new_cache(2)
    for c in (cache, static_cache):
        c.keys[0].fill_(1e3)  # beyond the filled part: never read by the slice, masked by static
    with torch.no_grad():
        full = model(x)
        sliced = [sliced_forward(model, x[:, s:e], s, cache) for s, e in pieces]
        for s, e in pieces:
            fast.static_forward(model, x[:, s:e], torch.arange(s, e), static_cache)
    torch.testing.assert_close(torch.cat(sliced, 1), full, rtol=1e-10, atol=1e-10)
    for mine, theirs in zip(
        cache.keys + cache.values, static_cache.keys + static_cache.values, strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)
    unmasked = [hides_nothing(model.config, s, e - s) for s, e in pieces]
    assert unmasked[1:] == [True] * (len(pieces) - 1)  # decoding steps and single blocks
    assert unmasked[0] == (pieces[0][1] == BLOCK)  # a prefill or two blocks need the mask


def test_the_stages_turn_the_switches_on_one_at_a_time():
    for stages, options_type in [
        (fast.DIFFUSION_STAGES, fast.DiffusionOptimizations),
        (fast.AR_STAGES, fast.AROptimizations),
    ]:
        names = [f.name for f in dataclasses.fields(options_type)]
        assert [name for name, _ in stages] == ["naive", *names]
        for k, (name, options) in enumerate(stages):
            on = [n for n in names if getattr(options, n)]
            assert on == names[:k], name
    cpu = fast.stages_for("cpu")
    assert not any(fast.needs_cuda(options) for _, options in cpu)
    last = "skip_unchanged" if fast.packing_problem() else "prepacked_weights"
    assert [name for name, _ in cpu][-2:] == [last, "compile"]
    assert not dict(cpu)["compile"].prepacked_weights  # inductor compiles dense weights
    assert not any(options.no_host_reads for _, options in cpu)  # it pays only on a GPU
    for stages, last in (
        (fast.DIFFUSION_STAGES, ["bf16", "no_host_reads", "cuda_graphs", "compile"]),
        (fast.AR_STAGES, ["bf16", "cuda_graphs", "compile"]),
    ):
        cuda = fast.stages_for("cuda", stages)
        assert "prepacked_weights" not in dict(cuda)
        assert not any(options.prepacked_weights for _, options in cuda)
        assert [name for name, _ in cuda][-len(last) :] == last


needs_onednn = pytest.mark.skipif(
    bool(fast.packing_problem()), reason=f"no oneDNN packing here: {fast.packing_problem()}"
)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_linear_computes_the_linear(rows, bias):
    """Same outputs as F.linear up to the order of float32 sums, at any number of rows
    (the layout is chosen for `rows`, but every input shape must work)."""
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(48, 40, generator=gen)
    b = torch.randn(48, generator=gen) if bias else None
    layer = fast.PackedLinear(weight, b, rows=rows)
    assert layer.onednn == (rows > 1)
    for shape in [(1, 40), (rows, 40), (2, 5, 40), (3, 16, 40)]:
        x = torch.randn(shape, generator=gen)
        torch.testing.assert_close(layer(x), F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="float32 or bfloat16 CPU weights"):
        fast.PackedLinear(weight.double(), None, rows=rows)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 16])
def test_a_packed_linear_fuses_the_gelu_after_it(rows):
    """`gelu` is F.gelu(F.linear(...)), in one oneDNN call where the layout is oneDNN's."""
    gen = torch.Generator().manual_seed(rows)
    weight, b = torch.randn(48, 40, generator=gen), torch.randn(48, generator=gen)
    layer = fast.PackedLinear(weight, b, rows=rows)
    x = torch.randn(3, 5, 40, generator=gen)
    want = F.gelu(F.linear(x, weight, b))
    torch.testing.assert_close(layer.gelu(x), want, rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.skipif(
    fast.half_dtype("cpu") != torch.bfloat16, reason="this CPU has no fast bfloat16"
)
@pytest.mark.parametrize("rows", [1, 16])
def test_a_packed_bfloat16_linear_computes_the_bfloat16_linear(rows):
    """bfloat16 weights take oneDNN's layout at any row count (draft_tree's rows)."""
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(48, 40, generator=gen).bfloat16()
    b = torch.randn(48, generator=gen).bfloat16()
    layer = fast.PackedLinear(weight, b, rows=rows)
    assert layer.onednn
    for shape in [(1, 40), (rows, 40), (3, 16, 40)]:
        x = torch.randn(shape, generator=gen).bfloat16()
        y = layer(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), F.linear(x, weight, b).float(), rtol=2e-2, atol=2e-2)


@needs_onednn
def test_prepacked_weights_are_a_copy_close_to_the_model(models):
    model = models["rotary_block_causal"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    packed = fast.prepack_weights(model, rows=8)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert isinstance(model.head, torch.nn.Linear) and isinstance(packed.head, fast.PackedLinear)
    ids = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids), model(ids), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_prepacked_ar_decoding_at_batch_one_writes_the_tokens_of_sample_ar(models):
    """Batch 1 takes the transposed-weight path (batch 3, above, takes oneDNN's)."""
    options = dict(CPU_AR_STAGES)["prepacked_weights"]
    for kind in ("causal", "rotary_causal"):
        decoder = fast.FastARDecoder(models[kind], options=options)
        assert not decoder.model.head.onednn
        for seed in range(3):
            kwargs = dict(prompt=torch.tensor([[seed + 1]]), n_tokens=L - 1)
            expected = sampling.sample_ar(
                models[kind], generator=torch.Generator().manual_seed(seed), **kwargs
            )
            got = decoder(generator=torch.Generator().manual_seed(seed), **kwargs)
            assert torch.equal(got, expected), (kind, seed)


def test_prepacked_weights_are_asked_for_not_assumed(models):
    """Their tokens are checked, not guaranteed: off unless asked for, like compile."""
    assert not fast.DiffusionOptimizations().prepacked_weights
    assert not fast.AROptimizations().prepacked_weights
    sampler = fast.FastDiffusionSampler(models["block_causal"], length=L)
    assert sampler.model is models["block_causal"]


def test_prepacked_weights_are_refused_where_they_cannot_run(models, monkeypatch):
    options = fast.DiffusionOptimizations(prepacked_weights=True)
    with pytest.raises(ValueError, match="packs float32 weights"):
        fast.FastDiffusionSampler(make("block_causal", torch.float64), length=L, options=options)
    with pytest.raises(ValueError, match="do not combine"):
        fast.FastARDecoder(
            models["causal"], options=fast.AROptimizations(prepacked_weights=True, compile=True)
        )
    # where the stages and the checks live (fast re-exports them)
    monkeypatch.setattr(fast_options, "packing_problem", lambda: "no oneDNN in this build")
    assert "prepacked_weights" not in dict(fast.stages_for("cpu"))
    assert not any(options.prepacked_weights for _, options in fast.stages_for("cpu"))
    with pytest.raises(ValueError, match="no oneDNN in this build"):
        fast.FastDiffusionSampler(models["block_causal"], length=L, options=options)


def test_gpu_switches_are_refused_on_a_cpu_with_a_reason(models, monkeypatch):
    options = fast.DiffusionOptimizations(cuda_graphs=True)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        fast.FastDiffusionSampler(models["block_causal"], length=L, options=options)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        fast.FastARDecoder(models["causal"], options=fast.AROptimizations(cuda_graphs=True))
    # a CPU without bf16 units, seen by the checks and the stages (fast_options)
    monkeypatch.setattr(fast_options, "half_dtype", lambda device: None)
    with pytest.raises(ValueError, match="many times slower"):
        fast.FastDiffusionSampler(
            models["block_causal"], length=L, options=fast.DiffusionOptimizations(bf16=True)
        )
    assert fast.cpu_bf16_stage() is None
    with pytest.raises(ValueError, match="static shapes"):
        fast.FastDiffusionSampler(
            models["block_causal"],
            length=L,
            options=fast.DiffusionOptimizations(static_buffers=False, compile=True),
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(length=30), "must divide"),
        (dict(block_len=4), "trained with blocks of 8"),
        (dict(steps_per_block=0), "steps_per_block must be a positive int"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(strategy="threshold", threshold=-0.1), r"threshold must be in \[0, 1\]"),
        (dict(strategy="greedy"), "unknown strategy"),
    ],
)
def test_bad_input_is_refused(kwargs, message, models):
    settings = dict(length=L, steps_per_block=2) | kwargs
    with pytest.raises(ValueError, match=message):
        fast.fast_sample_diffusion(models["block_causal"], **settings)


def test_bad_ar_input_is_refused(models):
    with pytest.raises(ValueError, match="causal model"):
        fast.FastARDecoder(models["bidirectional"])
    with pytest.raises(ValueError, match="fast_sample_ar"):
        fast.FastDiffusionSampler(models["causal"], length=L)
    decoder = fast.FastARDecoder(models["causal"], batch_size=2)
    prompt = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="batch"):
        decoder(prompt=prompt[:1], n_tokens=4)
    with pytest.raises(ValueError, match="exceeds the context"):
        decoder(prompt=prompt, n_tokens=L)
    with pytest.raises(ValueError, match="n_tokens must be a positive int"):
        decoder(prompt=prompt, n_tokens=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        decoder(prompt=prompt, n_tokens=4, temperature=-1.0)


@pytest.mark.skipif(
    not os.environ.get("COURSE_SLOW_TESTS"),
    reason="torch.compile on a CPU takes about a minute per model; set COURSE_SLOW_TESTS=1",
)
def test_the_compiled_stage_writes_the_reference_tokens(models, references):
    """Compiled kernels may sum in another order (logits move in the last bit): the tokens
    are what must not move."""
    compiled = dict(fast.stages_for("cpu"))["compile"]
    for i in (0, 3, 4):
        out = run_case(models, CASES[i], 0, compiled)
        assert torch.equal(out.tokens, references[i, 0].tokens)
    decoder = fast.FastARDecoder(
        models["causal"], options=dict(fast.stages_for("cpu", fast.AR_STAGES))["compile"]
    )
    prompt = torch.tensor([[1]])
    expected = sampling.sample_ar(
        models["causal"], prompt=prompt, n_tokens=L - 1, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(
        decoder(prompt=prompt, n_tokens=L - 1, generator=torch.Generator().manual_seed(0)), expected
    )


def test_the_16_bit_dtype_is_chosen_by_capability(monkeypatch):
    """bf16 on GPUs that have it, fp16 on those that do not (a T4); on a CPU, bf16 only where
    training's rule (bf16 units, measured faster) says so; nothing elsewhere."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert fast.half_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert fast.half_dtype("cuda") == torch.float16
    monkeypatch.setattr(fast.env, "cpu_has_bf16_units", lambda: False)
    assert fast.half_dtype("cpu") is None
    monkeypatch.setattr(fast.env, "cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(fast.env, "bf16_speedup_on_cpu", lambda: 1.2)  # units, but not faster
    assert fast.half_dtype("cpu") is None
    monkeypatch.setattr(fast.env, "bf16_speedup_on_cpu", lambda: 4.0)
    assert fast.half_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("COURSE_BF16", "0")  # the course's switch for training turns it off too
    assert fast.half_dtype("cpu") is None
    assert fast.half_dtype("meta") is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_16_bit_samplers_run_in_the_chosen_dtype_with_float32_logits_in_fp16(
    dtype, models, monkeypatch
):
    """Whatever `half_dtype` picks, the samplers run a copy in it (the caller's model stays
    float32) and write valid text; in float16 the last norm and the logits stay float32."""
    for module in (fast, fast_options):  # the samplers' copy, and the checks and stages
        monkeypatch.setattr(module, "half_dtype", lambda device: dtype)
    name, options = fast.cpu_bf16_stage()
    assert name == "bf16" and options.bf16 and not options.prepacked_weights
    sampler = fast.FastDiffusionSampler(models["block_causal"], length=L, options=options)
    assert sampler.model.blocks[0].mlp.fc.weight.dtype == dtype
    assert models["block_causal"].blocks[0].mlp.fc.weight.dtype == torch.float32
    ids = torch.full((1, BLOCK), sampler.model.mask_id)
    with torch.inference_mode():
        logits = sampler.step(ids, torch.arange(BLOCK))
    assert logits.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    out = sampler(steps_per_block=BLOCK, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (1, L) and (out.tokens < V).all()
    decoder = fast.FastARDecoder(models["causal"], options=fast.AROptimizations(bf16=True))
    text = decoder(prompt=torch.tensor([1]), n_tokens=8, generator=torch.Generator())
    assert text.shape == (1, 9) and (text < V).all()


@pytest.mark.parametrize("strategy", ["confidence", "threshold", "ancestral"])
def test_the_dual_cache_writes_the_reference_dual_caches_tokens(strategy, models):
    """Fast-dLLM's dual cache is approximate, so the fast sampler's is held to the reference's
    own dual cache (`sample_block_diffusion(approximate_cache="dual")`): the same tokens,
    with one whole-sequence forward per block and block-sized forwards after it."""
    model = models["bidirectional"]
    settings = dict(length=L, block_len=BLOCK, steps_per_block=4, batch_size=3)
    extra = dict(strategy=strategy, temperature=0.8, prompt=PROMPT[:3])
    with_cache = [o for name, o in CPU_STAGES if o.kv_cache and o.static_buffers]
    for seed in (0, 1):
        ref = sampling.sample_block_diffusion(
            model,
            approximate_cache="dual",
            generator=torch.Generator().manual_seed(seed),
            **settings,
            **extra,
        )
        for options in with_cache:
            sampler = fast.FastDiffusionSampler(
                model,
                length=L,
                block_len=BLOCK,
                batch_size=3,
                options=options,
                approximate_cache="dual",
            )
            out = sampler(steps_per_block=4, generator=torch.Generator().manual_seed(seed), **extra)
            assert torch.equal(out.tokens, ref.tokens), (strategy, seed, options)
            assert out.nfe == ref.nfe and out.steps_taken == ref.steps_taken
    # On this tiny random model the dual cache's logits are so close to the exact ones that
    # the tokens equal those of no cache too, so equality alone cannot show the cache is used:
    # check the forwards' widths (its approximation is measured in test_block_diffusion.py).
    widths = []
    step = sampler.step
    sampler.step = lambda ids, positions: widths.append(ids.shape[1]) or step(ids, positions)
    sampler(steps_per_block=4, generator=torch.Generator().manual_seed(0), **extra)
    blocks = len([w for w in widths if w == L])
    assert blocks >= 1 and set(widths) <= {L, BLOCK} and BLOCK in widths  # refresh, then blocks


def test_the_dual_cache_is_for_bidirectional_models_with_the_static_cache(models):
    with pytest.raises(ValueError, match="exact KV cache"):
        fast.FastDiffusionSampler(models["block_causal"], length=L, approximate_cache="dual")
    with pytest.raises(ValueError, match="kv_cache and static_buffers"):
        fast.FastDiffusionSampler(
            models["bidirectional"],
            length=L,
            block_len=BLOCK,
            approximate_cache="dual",
            options=fast.DiffusionOptimizations(static_buffers=False),
        )
    with pytest.raises(ValueError, match="approximate_cache='dual'"):
        fast.FastDiffusionSampler(
            models["bidirectional"], length=L, block_len=BLOCK, approximate_cache="prefix"
        )
