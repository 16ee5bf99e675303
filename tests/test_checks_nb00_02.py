"""The exercise checks of notebooks 00-02: right answers pass, stubs are "not attempted",
and each typical mistake fails with the hint that names it."""

import math
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from exercise_helpers import assert_correct, assert_not_attempted

from course_lib import checks
from course_lib.checks import CheckFailed
from course_lib.data import CharTokenizer
from course_lib.model import ModelConfig


def assert_right_and_stub(check, answer, capsys) -> None:
    """The right answer prints "correct"; the stub is "not attempted yet"."""
    assert_correct(check, answer, capsys)
    assert_not_attempted(check, capsys)


def assert_fails(check, fn, hint: str) -> None:
    with pytest.raises(CheckFailed, match=hint):
        check(fn)


# -- notebook 00: timer ----------------------------------------------------------------------


def make_measure(*, sync_after_warmup=True, sync_each=True, reduce=statistics.median):
    def measure(fn, *, warmup, repeats, clock=time.perf_counter, sync=lambda: None):
        for _ in range(warmup):
            fn()
        if sync_after_warmup:
            sync()
        times = []
        for _ in range(repeats):
            start = clock()
            fn()
            if sync_each:
                sync()
            times.append(clock() - start)
        if not sync_each:
            sync()
        return reduce(times)

    return measure


def test_timer_right_and_stub(capsys):
    assert_right_and_stub(checks.check_timer, make_measure(), capsys)


def test_timer_mistakes():
    check = checks.check_timer
    assert_fails(check, make_measure(reduce=statistics.mean), "that is the mean")
    assert_fails(check, make_measure(reduce=sum), "total of the timed runs")
    assert_fails(check, make_measure(reduce=lambda t: t[len(t) // 2]), "sort the times")
    assert_fails(
        check, make_measure(reduce=lambda t: sorted(t)[len(t) // 2]), "mean of the two middle"
    )
    assert_fails(check, make_measure(sync_each=False), "work was still queued")
    assert_fails(check, make_measure(sync_after_warmup=False), "included the warm-up's queued")

    def uses_perf_counter(fn, *, warmup, repeats, clock=time.perf_counter, sync=lambda: None):
        return make_measure()(fn, warmup=warmup, repeats=repeats, sync=sync)

    assert_fails(check, uses_perf_counter, "never called `clock\\(\\)`")

    def no_sync(fn, *, warmup, repeats, clock=time.perf_counter, sync=lambda: None):
        return make_measure()(fn, warmup=warmup, repeats=repeats, clock=clock)

    assert_fails(check, no_sync, "never called `sync\\(\\)`")

    def times_warmup_too(fn, *, warmup, repeats, clock=time.perf_counter, sync=lambda: None):
        times = []
        for _ in range(warmup + repeats):
            start = clock()
            fn()
            sync()
            times.append(clock() - start)
        return statistics.median(times)

    assert_fails(check, times_warmup_too, "warm-up runs were counted")

    def no_warmup(fn, *, warmup, repeats, clock=time.perf_counter, sync=lambda: None):
        return make_measure()(fn, warmup=0, repeats=repeats, clock=clock, sync=sync)

    assert_fails(check, no_warmup, "should call it warmup \\+ repeats")


# -- notebook 00: forward time bound ---------------------------------------------------------


def bound(n_params, n_tokens, bytes_per_param, bandwidth, flops_per_s):
    return max(n_params * bytes_per_param / bandwidth, 2 * n_params * n_tokens / flops_per_s)


def test_forward_time_bound(capsys):
    assert_right_and_stub(checks.check_forward_time_bound, bound, capsys)
    check = checks.check_forward_time_bound

    def memory(n_params, n_tokens, bytes_per_param, bandwidth, flops_per_s):
        return n_params * bytes_per_param / bandwidth

    def compute(n_params, n_tokens, bytes_per_param, bandwidth, flops_per_s):
        return 2 * n_params * n_tokens / flops_per_s

    assert_fails(check, lambda *a: memory(*a) + compute(*a), "max, not the sum")
    assert_fails(check, lambda *a: min(memory(*a), compute(*a)), "took the smaller")
    assert_fails(check, lambda *a: max(memory(*a), compute(*a) / 2), "multiply AND an add")
    assert_fails(check, lambda *a: max(a[0] / a[3], compute(*a)), "bytes_per_param")
    assert_fails(check, lambda *a: max(8 * memory(*a), compute(*a)), "bits, not bytes")
    assert_fails(check, lambda *a: max(a[1] * memory(*a), compute(*a)), "ONCE")
    assert_fails(check, memory, "only the memory time")
    assert_fails(check, compute, "only the compute time")
    assert_fails(check, lambda *a: "fast", "seconds as a number")


# -- notebook 01 -----------------------------------------------------------------------------


def encode(text):
    return [
        0 if c == "\t" else 1 if c == "\n" else ord(c) - 30 if " " <= c <= "~" else 97 for c in text
    ]


def test_encode(capsys):
    assert_right_and_stub(checks.check_encode, encode, capsys)
    check = checks.check_encode
    assert_fails(check, lambda t: [ord(c) - 32 for c in t], "id = ord\\(ch\\) - 30")
    table = {c: i for i, c in enumerate(CharTokenizer().chars[:-1])}
    assert_fails(check, lambda t: [table[c] for c in t], "raised KeyError")
    assert_fails(check, lambda t: [table.get(c, 98) for c in t], "98 is the mask id")
    assert_fails(check, lambda t: [table[c] for c in t if c in table], "one id per character")
    assert_fails(check, lambda t: [table.get(c, -1) for c in t], "unknown id 97")
    assert_fails(
        check, lambda t: [98 if c == "\u2588" else table.get(c, 97) for c in t], "only how decode"
    )
    assert_fails(
        check,
        lambda t: [ord(c) - 30 if " " <= c <= "~" else 97 for c in t],
        "tab is id 0 and newline id 1",
    )
    assert_fails(check, lambda t: t, "return a list of ints")


def entropy(ids, vocab_size):
    counts = torch.bincount(ids, minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def test_unigram_entropy(capsys):
    assert_right_and_stub(checks.check_unigram_entropy, entropy, capsys)
    check = checks.check_unigram_entropy

    def probs(ids, vocab_size):
        counts = torch.bincount(ids, minlength=vocab_size).double()
        return counts[counts > 0] / counts.sum()

    def naive(ids, vocab_size):
        p = torch.bincount(ids, minlength=vocab_size) / len(ids)
        return -(p * p.log2()).sum()

    assert_fails(check, naive, "nan")
    assert_fails(check, lambda i, v: -(probs(i, v) * probs(i, v).log()).sum(), "natural log")
    assert_fails(check, lambda i, v: -(probs(i, v) * probs(i, v).log10()).sum(), "log base 10")
    assert_fails(check, lambda i, v: (probs(i, v) * probs(i, v).log2()).sum(), "sign is flipped")
    assert_fails(check, lambda i, v: math.log2(v), "UNIFORM")

    def over_vocab(ids, vocab_size):
        counts = torch.bincount(ids, minlength=vocab_size)
        p = counts[counts > 0] / vocab_size
        return -(p * p.log2()).sum()

    assert_fails(check, over_vocab, "not by vocab_size")

    def raw_counts(ids, vocab_size):
        counts = torch.bincount(ids, minlength=vocab_size).double()
        c = counts[counts > 0]
        return -(c * c.log2()).sum()

    assert_fails(check, raw_counts, "not the probabilities")


def test_inputs_and_targets(capsys):
    assert_right_and_stub(checks.check_inputs_and_targets, lambda b: (b[:, :-1], b[:, 1:]), capsys)
    check = checks.check_inputs_and_targets
    assert_fails(check, lambda b: (b[:, 1:], b[:, :-1]), "swapped")
    assert_fails(check, lambda b: (b[:, :-1], b[:, :-1]), "NEXT token")
    assert_fails(check, lambda b: (b[:-1], b[1:]), "sliced the rows")
    assert_fails(check, lambda b: (b, b[:, 1:]), "both drop one token")
    assert_fails(check, lambda b: b, "two tensors")
    assert_fails(check, lambda b: (b[:, :-1].tolist(), b[:, 1:]), "should be a tensor")


# -- notebook 02: masks ----------------------------------------------------------------------


def causal(length):
    i = torch.arange(length)
    return i[None, :] <= i[:, None]


def block_causal(length, block_len):
    b = torch.arange(length) // block_len
    return b[None, :] <= b[:, None]


def test_causal_mask(capsys):
    assert_right_and_stub(checks.check_causal_mask, causal, capsys)
    check = checks.check_causal_mask
    i = torch.arange
    assert_fails(check, lambda n: i(n)[None, :] < i(n)[:, None], "cannot see itself")
    assert_fails(check, lambda n: causal(n).T, "transposed")
    assert_fails(
        check, lambda n: torch.ones(n, n, dtype=torch.bool), "lets position 0 see position 1"
    )
    assert_fails(check, lambda n: causal(n).float(), "dtype torch.float32")
    assert_fails(check, lambda n: causal(n + 1), "has shape")
    assert_fails(check, lambda n: causal(n).tolist(), "return a torch.Tensor")


def test_block_causal_mask(capsys):
    assert_right_and_stub(checks.check_block_causal_mask, block_causal, capsys)
    check = checks.check_block_causal_mask

    def diagonal_only(length, block_len):
        b = torch.arange(length) // block_len
        return b[None, :] == b[:, None]

    assert_fails(check, diagonal_only, "<=, not ==")
    assert_fails(check, lambda n, b: block_causal(n, b).T, "later block")
    assert_fails(check, lambda n, b: causal(n), "both are in block 0")

    def square_blocks(length, block_len):  # assumes block_len divides the length
        blocks = length // block_len
        upper = torch.ones(blocks, blocks).tril().bool()
        return upper.repeat_interleave(block_len, 0).repeat_interleave(block_len, 1)

    assert_fails(check, square_blocks, "has shape")


# -- notebook 02: attention ------------------------------------------------------------------


def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def test_attention(capsys):
    assert_right_and_stub(checks.check_attention, attention, capsys)
    check = checks.check_attention

    def variant(scale=None, dim=-1, fill=float("-inf"), invert=False, after=False, use_mask=True):
        def attn(q, k, v, mask=None):
            d = q.shape[-1]
            scores = q @ k.transpose(-2, -1) / (math.sqrt(d) if scale is None else scale(d))
            if mask is not None and use_mask and not after:
                scores = scores.masked_fill(mask if invert else ~mask, fill)
            weights = scores.softmax(dim=dim)
            if mask is not None and after:
                weights = weights * mask
            return weights @ v

        return attn

    assert_fails(check, variant(scale=lambda d: 1.0), "forgot to scale")
    assert_fails(check, variant(scale=lambda d: d), "not by head_dim")
    assert_fails(check, variant(dim=-2), "over the keys")
    assert_fails(check, variant(use_mask=False), "ignores the mask")
    assert_fails(check, variant(invert=True), "mask is inverted")
    assert_fails(check, variant(fill=0.0), "not 0")
    assert_fails(check, variant(after=True), "after the softmax")

    def unstable(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.exp()
        return weights / weights.sum(-1, keepdim=True) @ v

    assert_fails(check, unstable, "overflows")

    def two_dim_only(q, k, v, mask=None):  # k.transpose(0, 1) is k.T for a matrix only
        scores = q @ k.transpose(0, 1) / math.sqrt(q.shape[-1])
        return scores.softmax(-1) @ v

    assert_fails(check, two_dim_only, "k.transpose\\(-2, -1\\)")
    assert_fails(check, lambda q, k, v, mask=None: q, "is off by")
    assert_fails(check, lambda q, k, v, mask=None: attention(q, k, v, mask)[..., :1], "has shape")


def test_attention_check_agrees_with_sdpa():
    """The check's reference is torch's attention; the solution above must match it."""
    q, k, v = torch.randn(3, 2, 5, 8).unbind(0)
    mask = causal(5)
    torch.testing.assert_close(
        attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    )


# -- notebook 02: parameter count ------------------------------------------------------------


def count(config, *, bias=True, norms=2, head=True, embeddings=False, head_bias=False):
    d, f, n, vocab = (
        config.d_model,
        config.mlp_ratio * config.d_model,
        config.n_layer,
        config.vocab_size,
    )
    per_block = 4 * d * d + 2 * d * f + bias * (5 * d + f) + norms * 2 * d
    total = n * per_block + norms * d + head * d * vocab + head_bias * vocab
    return total + embeddings * ((vocab + 1) * d + config.context_len * d)


def test_param_count(capsys):
    assert count(ModelConfig()) == 3_184_640
    assert_right_and_stub(checks.check_param_count, count, capsys)
    check = checks.check_param_count
    assert_fails(check, lambda c: count(c, embeddings=True), "counted the embeddings")
    assert_fails(check, lambda c: count(c, bias=False), "left out the biases")
    assert_fails(check, lambda c: count(c, head_bias=True), "no bias")
    assert_fails(check, lambda c: count(c, norms=0), "left out the LayerNorms")
    assert_fails(check, lambda c: count(c, norms=1), "weight AND a bias")
    assert_fails(check, lambda c: count(c) - 2 * c.d_model, "final LayerNorm")
    assert_fails(check, lambda c: count(c, head=False), "forgot the output head")
    assert_fails(check, lambda c: count(c) + c.d_model, "not vocab_size \\+ 1")
    assert_fails(check, lambda c: count(c) - 1, "off by -1")
    assert_fails(check, lambda c: "many", "return an int")


def test_param_count_hints_are_unambiguous():
    """On the check's first config, where any single mistake fails first, each typical
    mistake gives a count that no other mistake (nor the right answer) gives."""
    from course_lib.checks.nb02_transformer import _param_variants

    values = list(_param_variants(ModelConfig()).values()) + [count(ModelConfig())]
    assert len(set(values)) == len(values)


def test_a_verdict_shows_nothing_more_in_a_notebook():
    """A cell that ends with a check shows the check's message, not a bare True or False."""
    from IPython.core.interactiveshell import InteractiveShell

    from course_lib.checks._core import Verdict

    formatter = InteractiveShell.instance().display_formatter
    for verdict in (Verdict(True), Verdict(False)):
        assert formatter.format(verdict) == ({}, {})
    assert formatter.format(True)[0] == {"text/plain": "True"}  # what a bare bool would show


def test_the_shared_number_helpers_take_numbers_and_one_element_tensors_only():
    import numpy as np

    from course_lib.checks._core import as_number, close

    assert as_number(torch.tensor([2.5]), "x") == 2.5
    assert as_number(np.float32(0.5), "x") == 0.5
    assert as_number(float("inf"), "x") == float("inf")  # allowed unless finite is asked for
    for bad, message in (
        (torch.ones(2), "shape \\(2,\\): pool"),
        (True, "number"),
        ("1", "number"),
    ):
        with pytest.raises(checks.CheckFailed, match=message):
            as_number(bad, "x", hint="pool")
    with pytest.raises(checks.CheckFailed, match="not a finite number: log"):
        as_number(float("nan"), "x", finite="log")
    assert close(1.0, 1.0 + 1e-9) and not close(1.0, 1.1) and not close("a", 1.0)
    assert close(0.0, 1e-8, atol=1e-7) and not close(0.0, 1e-8)


def test_the_score_variance_prediction_and_its_slips(capsys):
    from exercise_helpers import not_yet, right

    assert right(checks.check_score_variance_prediction((64, 1), (64.0, 1.0)))
    assert "Measured 64.0" in capsys.readouterr().out
    assert not_yet(checks.check_score_variance_prediction(..., (64.0, 1.0)))
    for guess, hint in (
        ((8, 1), "standard deviation"),
        ((1, 1), "variances add"),
        ((64, 8), "c\\^2"),
        ((10, 2), "independent terms"),
        (64, "a pair"),
    ):
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_score_variance_prediction(guess, (64.0, 1.0))
