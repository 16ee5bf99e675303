"""The GPU paths (skipped without CUDA): scripts/gpu_session.py runs this file on a lent GPU.

On a GPU exact token equality is not a property of the kernels (other shapes, other sums), so
the float32 stages are held to agreement, and bf16 to the distribution and the quality of the
text it writes, against float32.
"""

import dataclasses

import pytest
import torch
from test_fast import L, V
from test_fast import make as make_on_cpu

from course_lib import checkpoints, env, fast, metrics, sampling

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make(attention):
    return make_on_cpu(attention).cuda()  # the CPU tests' tiny models, on the GPU


def gen(seed=0):
    return torch.Generator(device="cuda").manual_seed(seed)


def test_every_gpu_stage_writes_valid_text_and_float32_agrees():
    """float32 stages agree with the reference on most tokens (near-ties may flip); bf16 stages
    write complete, valid text at the same tokens per step. compile with CUDA graphs is the
    last stage, so both run together here."""
    model = make("block_causal")
    settings = dict(length=L, steps_per_block=8, batch_size=4)
    ref = fast.reference_sample_diffusion(model, generator=gen(), **settings)
    stages = fast.stages_for("cuda")
    assert stages[-1][1].compile and stages[-1][1].cuda_graphs
    for name, options in stages:
        out = fast.fast_sample_diffusion(model, generator=gen(), options=options, **settings)
        assert (out.tokens < V).all() and out.tokens_per_step == ref.tokens_per_step, name
        if not options.bf16:
            assert (out.tokens == ref.tokens).double().mean() > 0.9, name
    ar = make("causal")
    prompt = torch.zeros(4, 1, dtype=torch.long, device="cuda")
    expected = sampling.sample_ar(ar, prompt=prompt, n_tokens=L - 1, generator=gen())
    for name, options in fast.stages_for("cuda", fast.AR_STAGES):
        out = fast.fast_sample_ar(
            ar, prompt=prompt, n_tokens=L - 1, generator=gen(), options=options
        )
        assert out.shape == expected.shape and (out < V).all(), name


@pytest.mark.parametrize(
    "strategy, threshold", [("confidence", None), ("threshold", 0.3), ("ancestral", None)]
)
def test_whole_step_graphs_write_the_tokens_of_the_same_loop_run_eagerly(strategy, threshold):
    """With no_host_reads, cuda_graphs captures each whole step (network, float64 sampling,
    step rule, commit): one graph serves every block of a block-causal model with the cache,
    and its replays agree with the same loop run without graphs (float32; near-ties may
    flip)."""
    model = make("block_causal")
    eager = fast.DiffusionOptimizations(no_host_reads=True)
    assert eager.kv_cache and eager.static_buffers
    settings = dict(steps_per_block=8, strategy=strategy, threshold=threshold)
    outs = []
    for options in (eager, dataclasses.replace(eager, cuda_graphs=True)):
        sampler = fast.FastDiffusionSampler(model, length=L, batch_size=4, options=options)
        for seed in (0, 1):  # the second call replays the first call's graphs
            outs.append(sampler(generator=gen(seed), **settings).tokens)
    assert len(sampler.whole_graphs) == 1
    for want, got in zip(outs[:2], outs[2:], strict=True):
        assert (got < V).all() and (got == want).double().mean() > 0.9, strategy


def _tv(a: torch.Tensor, b: torch.Tensor, vocab: int) -> float:
    pa = torch.bincount(a.flatten().cpu(), minlength=vocab).double()
    pb = torch.bincount(b.flatten().cpu(), minlength=vocab).double()
    return 0.5 * (pa / pa.sum() - pb / pb.sum()).abs().sum().item()


def test_bf16_writes_text_like_float32s():
    """The shipped block-diffusion model, 32 samples of 128 characters per precision: bf16's
    character frequencies are as close to float32's as two float32 runs with other seeds are
    to each other, and ar-small scores its text within 10% of float32's perplexity."""
    ckpt = env.DATA_DIR / "checkpoints"
    if not (ckpt / "bd3lm-small.pt").exists():
        pytest.skip("needs the shipped checkpoints")
    model = checkpoints.load_checkpoint(ckpt / "bd3lm-small.pt", device="cuda")
    scorer = checkpoints.load_checkpoint(ckpt / "ar-small.pt", device="cuda")
    stages = dict(fast.stages_for("cuda"))
    fp32, bf16 = stages["skip_unchanged"], stages["bf16"]

    def draw(options, seed):
        sampler = fast.FastDiffusionSampler(model, length=128, batch_size=32, options=options)
        return sampler(steps_per_block=16, generator=gen(seed)).tokens

    a, b, half = draw(fp32, 0), draw(fp32, 1), draw(bf16, 2)
    vocab = model.config.vocab_size
    floor = _tv(a, b, vocab)
    assert _tv(half, a, vocab) < 2 * floor + 0.02, (_tv(half, a, vocab), floor)
    ppl_fp32 = metrics.generative_perplexity(a, scorer)
    ppl_bf16 = metrics.generative_perplexity(half, scorer)
    assert abs(ppl_bf16 / ppl_fp32 - 1) < 0.10, (ppl_bf16, ppl_fp32)
