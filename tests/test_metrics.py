"""course_lib.metrics: the numbers are the ones information theory predicts."""

import math
import random
import textwrap

import pytest
import torch
import torch.nn.functional as F

from course_lib import data, diffusion, metrics
from course_lib.model import ModelConfig, Transformer

V = 10  # vocabulary of the stand-in models


class StandIn:
    """A 'causal model' whose logits are given by a function of the ids: config + forward."""

    def __init__(self, logits_fn, vocab_size=V, context_len=16, attention="causal"):
        self.config = ModelConfig(
            vocab_size=vocab_size,
            context_len=context_len,
            n_layer=1,
            n_head=1,
            d_model=8,
            attention=attention,
        )
        self.logits_fn = logits_fn

    def __call__(self, idx):
        assert idx.shape[1] <= self.config.context_len, "a window longer than the context"
        return self.logits_fn(idx)


def uniform_model(**kw):
    vocab = kw.get("vocab_size", V)
    return StandIn(lambda idx: torch.zeros(*idx.shape, vocab), **kw)


def successor_logits(idx, p):
    """log-probs: the successor (id + 1) % V with probability p, the others share 1 - p."""
    logits = torch.full((*idx.shape, V), math.log((1 - p) / (V - 1)))
    return logits.scatter(-1, ((idx + 1) % V)[..., None], math.log(p))


def successor_model(p, **kw):
    return StandIn(lambda idx: successor_logits(idx, p), **kw)


def counting(n, start=0):
    return (torch.arange(start, start + n) % V).long()


# -- window_plan ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_ids", "window", "stride"),
    [
        (2, 8, None),
        (9, 8, None),
        (10, 8, None),
        (100, 8, None),
        (100, 8, 8),
        (101, 16, 3),
        (57, 1, 1),
    ],
)
def test_window_plan_scores_every_id_once_with_enough_context(n_ids, window, stride):
    plan = metrics.window_plan(n_ids, window, stride)
    stride = window // 2 if stride is None else stride
    scored = [t for w in plan for t in range(w.first_scored, w.end)]
    assert scored == list(range(1, n_ids))  # each id but the first, once, in order
    span = min(window, n_ids - 1) + 1
    for i, w in enumerate(plan):
        assert w.end - w.start == span and 0 <= w.start and w.end <= n_ids
        if i > 0:  # later windows give every scored id at least window - stride + 1 of context
            assert w.first_scored - w.start >= min(window, n_ids - 1) - stride + 1


def test_window_plan_first_scored_skips_a_prompt():
    plan = metrics.window_plan(50, 8, first_scored=20)
    assert [t for w in plan for t in range(w.first_scored, w.end)] == list(range(20, 50))


@pytest.mark.parametrize(
    "args", [(1, 8), (10, 0), (10, 8, 0), (10, 8, 9), (10, 8, None, 0), (10, 8, None, 10)]
)
def test_window_plan_rejects_bad_arguments(args):
    n, window, *rest = args
    stride = rest[0] if rest else None
    kwargs = {"first_scored": rest[1]} if len(rest) > 1 else {}
    with pytest.raises(ValueError):
        metrics.window_plan(n, window, stride, **kwargs)


# -- bits_per_char ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "stride"), [(2, None), (16, None), (17, None), (200, None), (200, 16)]
)
def test_uniform_model_costs_log2_vocab_bits(n, stride):
    ids = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(n))
    bits = metrics.bits_per_char(uniform_model(), ids, stride=stride, batch_size=3)
    assert bits == pytest.approx(math.log2(V), rel=1e-6)


@pytest.mark.parametrize("p", [0.5, 0.9, 0.999])
def test_model_right_with_probability_p_costs_minus_log2_p(p):
    bits = metrics.bits_per_char(successor_model(p), counting(300))
    assert bits == pytest.approx(-math.log2(p), rel=1e-5)


def test_model_with_the_true_distribution_reaches_the_entropy_rate():
    """A Markov source: the successor with probability p, else a uniform other id. A model that
    outputs the true conditionals scores its entropy rate (up to sampling noise)."""
    p, n = 0.7, 20_000
    gen = torch.Generator().manual_seed(0)
    ids = [0]
    hits = torch.rand(n - 1, generator=gen) < p
    others = torch.randint(1, V, (n - 1,), generator=gen)  # offset from the successor
    for hit, other in zip(hits.tolist(), others.tolist(), strict=True):
        ids.append((ids[-1] + 1) % V if hit else (ids[-1] + 1 + other) % V)
    bits = metrics.bits_per_char(successor_model(p), torch.tensor(ids))

    cost_hit, cost_miss = -math.log2(p), -math.log2((1 - p) / (V - 1))
    n_hits = int(hits.sum())
    assert bits == pytest.approx((n_hits * cost_hit + (n - 1 - n_hits) * cost_miss) / (n - 1))
    entropy_rate = p * cost_hit + (1 - p) * cost_miss
    standard_error = math.sqrt(p * (1 - p) * (cost_hit - cost_miss) ** 2 / (n - 1))
    assert abs(bits - entropy_rate) < 4 * standard_error


def test_a_context_free_model_with_the_texts_frequencies_scores_its_unigram_entropy():
    ids = torch.randint(0, V, (500,), generator=torch.Generator().manual_seed(1)) % 4
    freqs = torch.bincount(ids[1:], minlength=V).double() / (len(ids) - 1)
    model = StandIn(lambda idx: freqs.log().float().expand(*idx.shape, V))
    assert metrics.bits_per_char(model, ids) == pytest.approx(metrics.unigram_entropy(ids[1:]))


def confidence_grows_with_context(idx):
    """Right (the successor) with probability 1 - 1/(c + 1), c = the position's context length."""
    context = torch.arange(1, idx.shape[1] + 1, dtype=torch.float64)
    p = (1 - 1 / (context + 1))[None, :, None]  # (1, L, 1)
    logits = ((1 - p) / (V - 1)).log().expand(*idx.shape, V).clone()
    right = ((idx + 1) % V)[..., None]
    return logits.scatter(-1, right, p.log().expand(*idx.shape, 1)).float()


def test_sliding_windows_give_each_char_the_context_of_the_plan():
    n, window = 100, 16
    for stride in (4, 8, 16):
        plan = metrics.window_plan(n, window, stride)
        contexts = [t - w.start for w in plan for t in range(w.first_scored, w.end)]
        expected = sum(-math.log2(1 - 1 / (c + 1)) for c in contexts) / (n - 1)
        model = StandIn(confidence_grows_with_context)
        bits = metrics.bits_per_char(model, counting(n), window=window, stride=stride)
        assert bits == pytest.approx(expected, rel=1e-5)
    # more overlap, more context, fewer bits (and more forward passes)
    overlapping = metrics.bits_per_char(model, counting(n), window=window, stride=4)
    disjoint = metrics.bits_per_char(model, counting(n), window=window, stride=16)
    assert overlapping < disjoint


def tiny_transformer(**kw):
    torch.manual_seed(0)
    config = dict(vocab_size=V, context_len=8, n_layer=1, n_head=2, d_model=16)
    return Transformer(ModelConfig(**{**config, **kw}))


def test_real_model_matches_a_direct_cross_entropy():
    model = tiny_transformer().eval()
    ids = torch.randint(0, V, (3 * 8 + 1,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # non-overlapping windows of 8 = three rows of a plain forward
        logits = model(ids[:-1].view(3, 8))
        direct = F.cross_entropy(logits.reshape(-1, V), ids[1:]).item() / math.log(2)
    for batch_size in (1, 2, 32):
        got = metrics.bits_per_char(model, ids, stride=8, batch_size=batch_size)
        assert got == pytest.approx(direct, rel=1e-5)


def test_evaluates_in_eval_mode_and_restores_training_mode():
    model = tiny_transformer(dropout=0.5).train()
    ids = torch.randint(0, V, (40,), generator=torch.Generator().manual_seed(3))
    first = metrics.bits_per_char(model, ids)
    assert model.training
    assert metrics.bits_per_char(model, ids) == first  # dropout was off: deterministic


def test_text_is_encoded_with_the_course_tokenizer_and_max_chars_truncates():
    model = uniform_model(vocab_size=98)
    assert metrics.bits_per_char(model, "def f(x):\n    return x\n") == pytest.approx(
        math.log2(98), rel=1e-6
    )
    # counting for 9 ids, then noise: only the first 9 are read
    ids = torch.cat([counting(9), torch.tensor([0, 5, 0, 5, 0])])
    model = successor_model(0.9, context_len=4)
    assert metrics.bits_per_char(model, ids, max_chars=9) == pytest.approx(-math.log2(0.9))
    assert metrics.bits_per_char(model, ids) > -math.log2(0.9)


@pytest.mark.parametrize(
    ("model", "ids", "kwargs", "message"),
    [
        (uniform_model(), "", {}, "at least 2"),
        (uniform_model(vocab_size=98), "a", {}, "at least 2"),
        (uniform_model(), torch.tensor([1, 2, V]), {}, "outside"),
        (uniform_model(), torch.tensor([-1, 2, 3]), {}, "outside"),
        (uniform_model(), torch.zeros(2, 5, dtype=torch.long), {}, "1-D"),
        (uniform_model(), torch.zeros(5), {}, "torch.long"),
        (uniform_model(), counting(20), {"window": 17}, "context"),
        (uniform_model(), counting(20), {"stride": 0}, "stride"),
        (uniform_model(), counting(20), {"max_chars": 1}, "max_chars"),
        (uniform_model(), counting(20), {"batch_size": 0}, "batch_size"),
        (uniform_model(attention="bidirectional"), counting(20), {}, "causal"),
        (tiny_transformer(attention="bidirectional"), counting(20), {}, "causal"),
        (lambda idx: idx, counting(20), {}, "causal"),
    ],
)
def test_bits_per_char_rejects_bad_input(model, ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        metrics.bits_per_char(model, ids, **kwargs)


# -- generative perplexity --------------------------------------------------------------------


def test_generative_perplexity_of_a_uniform_scorer_is_the_vocabulary_size():
    samples = torch.randint(0, V, (5, 40), generator=torch.Generator().manual_seed(4))
    assert metrics.generative_perplexity(samples, uniform_model()) == pytest.approx(V, rel=1e-5)


def test_generative_perplexity_of_a_scorer_right_with_probability_p_is_1_over_p():
    p = 0.8
    prompt = torch.tensor([3, 7, 1, 5])  # not a counting sequence: costs more than -log2 p
    rows = [torch.cat([prompt, counting(n, start=6)]) for n in (10, 30, 30)]
    scorer = successor_model(p)
    assert metrics.generative_perplexity(rows, scorer, prompt_len=4) == pytest.approx(1 / p)
    assert metrics.generative_perplexity(rows, scorer) > 1 / p  # the prompt is scored too
    # a (B, L) tensor and a list of its rows pool the same tokens
    batch = torch.stack([counting(12, start=s) for s in range(3)])
    assert metrics.generative_perplexity(batch, scorer) == pytest.approx(
        metrics.generative_perplexity(list(batch), scorer)
    )


def test_generative_perplexity_pools_tokens_not_samples():
    p = 0.6
    good = counting(11)  # 10 predictions, all right
    bad = torch.tensor([0, 5, 0, 5, 0, 5])  # 5 predictions, all wrong
    cost_right, cost_wrong = -math.log2(p), -math.log2((1 - p) / (V - 1))
    expected = 2 ** ((10 * cost_right + 5 * cost_wrong) / 15)
    got = metrics.generative_perplexity([good, bad], successor_model(p))
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("samples", "kwargs", "message"),
    [
        ([], {}, "empty"),
        (torch.tensor([[1, 2, V]]), {}, "mask id"),
        (torch.tensor([[1]]), {}, "longer than"),
        (torch.tensor([[1, 2, 3]]), {"prompt_len": 3}, "longer than"),
        (torch.tensor([[1, 2, 3]]), {"prompt_len": -1}, "prompt_len"),
        (torch.zeros(2, 2, 2, dtype=torch.long), {}, r"\(B, L\)"),
    ],
)
def test_generative_perplexity_rejects_bad_input(samples, kwargs, message):
    with pytest.raises(ValueError, match=message):
        metrics.generative_perplexity(samples, uniform_model(), **kwargs)


def test_generative_perplexity_needs_a_causal_scorer():
    with pytest.raises(ValueError, match="causal"):
        metrics.generative_perplexity(counting(10), tiny_transformer(attention="bidirectional"))


# -- diversity --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bits"),
    [("aaaa", 0.0), ("abab", 1.0), ("abcd", 2.0), ("aab", math.log2(3) - 2 / 3)],
)
def test_unigram_entropy_of_known_strings(text, bits):
    assert metrics.unigram_entropy(text) == pytest.approx(bits)


def test_unigram_entropy_pools_every_input_form():
    rows = torch.tensor([[0, 0], [1, 2]])  # frequencies 1/2, 1/4, 1/4: 1.5 bits
    for form in (rows, rows.tolist(), list(rows), [0, 0, 1, 2], ["aa", "bc"]):
        assert metrics.unigram_entropy(form) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="empty"):
        metrics.unigram_entropy("")


@pytest.mark.parametrize(
    ("ids", "n", "fraction"),
    [
        ("aaaa", 1, 1 / 4),
        ("aaaa", 2, 1 / 3),
        ("abcd", 2, 1.0),
        ("abab", 2, 2 / 3),
        (torch.tensor([[0, 0], [0, 0]]), 2, 1 / 2),  # rows apart: (0,0) twice, not three times
        (["ab", "ab"], 2, 1 / 2),
        (torch.tensor([1, 2, 3]), 3, 1.0),
    ],
)
def test_distinct_ngrams(ids, n, fraction):
    assert metrics.distinct_ngrams(ids, n) == pytest.approx(fraction)


@pytest.mark.parametrize(("ids", "n"), [("abc", 4), ("abc", 0), ([], 1)])
def test_distinct_ngrams_rejects_bad_input(ids, n):
    with pytest.raises(ValueError):
        metrics.distinct_ngrams(ids, n)


# -- validity of generated Python -------------------------------------------------------------


def test_valid_code_scores_one_and_a_truncated_end_is_not_held_against_it():
    sample = "import os\nx = 1\ndef f(a, b):\n    return (a +\n            b)\ny = foo(1,\n  2"
    assert metrics.python_validity(sample) == 1.0
    assert metrics.python_validity(sample, unit="sample") == 0.0  # a whole-sample parse fails


def test_invalid_statements_are_counted_one_by_one():
    sample = textwrap.dedent(
        """\
        x = 1
        y = (2 +
            3)
        def f(a):
            return a ]
        z = = 4
        w = 5
        v = 6"""
    )
    # judged: y = (...), def f(a):, return a ], z = = 4, w = 5; x = 1 is the first (skipped)
    # and "v = 6" is unfinished (no newline after it)
    assert metrics.python_validity(sample) == pytest.approx(3 / 5)
    assert metrics.python_validity([sample, "a = 1\nb = 2\nc = 3\n"]) == pytest.approx(5 / 7)


def test_compound_headers_and_indentation_are_judged_fairly():
    sample = textwrap.dedent(
        """\
                return x
            @functools.cache
            def g(self):  # a comment
                if x:
                    y = 1
                elif z:
                    pass
                else:
                    pass
                try:
                    pass
                except ValueError as err:
                    raise
                finally:
                    pass
                for i in range(3):
                    with open(p) as f:
                        yield i
        class A(B):
            x: int = 3
        """
    )
    assert metrics.python_validity(sample) == 1.0


def test_a_sample_may_start_inside_a_docstring():
    sample = 'the end of a docstring, in prose:\n    more prose.\n    """\n    x = 1\n    y = 2\n'
    assert metrics.python_validity(sample) == 1.0
    # but prose is not code when nothing says it is inside a string
    assert metrics.python_validity("x = 1\nthe end of a docstring, in prose\ny = 2\n") == 0.5


def test_real_code_scores_high_and_shuffled_code_scores_low():
    """Windows of the course's validation code (from line starts, like a sample that follows a
    newline) are nearly all valid; the misses are docstring prose whose quotes lie outside the
    window. The same characters shuffled are nearly all invalid."""
    val = data.load_corpus("pystdlib").val
    line_starts = [i + 1 for i, ch in enumerate(val) if ch == "\n"][:-20]
    rng = random.Random(0)
    windows = [val[s : s + 256] for s in rng.sample(line_starts, 100)]
    shuffled = ["".join(rng.sample(w, len(w))) for w in windows]
    assert metrics.python_validity(windows) > 0.85
    assert metrics.python_validity(shuffled) < 0.25


@pytest.mark.parametrize(
    ("texts", "kwargs", "message"),
    [
        ([], {}, "non-empty"),
        ([torch.tensor([1, 2])], {}, "decode"),
        ("x = 1\n", {}, "no sample holds"),
        ("x = 1\ny = 2\n", {"unit": "line"}, "unit"),
    ],
)
def test_python_validity_rejects_bad_input(texts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        metrics.python_validity(texts, **kwargs)


def test_whole_sample_unit():
    assert metrics.python_validity(["x = 1\ny = 2\n", "x = (\n"], unit="sample") == 0.5


# -- held_out_bits --------------------------------------------------------------------------


def test_held_out_bits_of_a_causal_model_is_bits_per_char_on_disjoint_windows():
    model = successor_model(0.9)
    ids = counting(16 * 7 + 5)  # seven windows of 16 and a partial one, dropped
    score = metrics.held_out_bits(model, ids)
    assert (score.n_windows, score.n_chars) == (7, 112)
    # every prediction is a successor: -log2 0.9 bits each (float32 logits)
    assert score.bits_per_char == pytest.approx(-math.log2(0.9), rel=1e-6)
    assert score.bits_per_char == pytest.approx(
        metrics.bits_per_char(model, ids[:112], stride=16), rel=1e-12
    )
    assert score.standard_error < 1e-7  # every window costs the same
    assert "causal" in score.method
    assert metrics.held_out_bits(model, ids, max_windows=3).n_chars == 48


def test_held_out_bits_of_a_diffusion_model_is_its_elbo_on_the_same_windows():
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(
            vocab_size=V, context_len=8, n_layer=1, n_head=1, d_model=8, attention="bidirectional"
        )
    )
    ids = torch.randint(0, V, (8 * 5,), generator=torch.Generator().manual_seed(1))
    score = metrics.held_out_bits(model, ids, n_samples=3, seed=4)
    bits, se = diffusion.elbo(
        model,
        ids.view(5, 8),
        "loglinear",
        n_samples=3,
        generator=torch.Generator().manual_seed(4),
    )
    assert (score.bits_per_char, score.standard_error) == (bits, se)
    assert score.method.startswith("ELBO (MDLM), 3 samples, seed 4")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(window=1), "window must be"),
        (dict(window=17), "window must be"),
        (dict(max_windows=1), "max_windows"),
    ],
)
def test_held_out_bits_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.held_out_bits(uniform_model(), counting(64), **kwargs)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.held_out_bits(uniform_model(), counting(20))
