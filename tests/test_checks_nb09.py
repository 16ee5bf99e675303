"""Notebook 09's exercise checks: right answers pass, stubs are "not attempted", and each
typical mistake is refused with the hint a TA would give."""

import math

import pytest
import torch
from exercise_helpers import assert_correct, assert_not_attempted, right

from course_lib import checks
from course_lib.checks import CheckFailed
from course_lib.checks.nb09_fast_sampler import commit_reference

# -- exercise 1: Amdahl's law -------------------------------------------------------------------


def amdahl_right(fraction, factor):
    return 1 / ((1 - fraction) + fraction / factor)


def amdahl_right_tensor(fraction, factor):
    new_time = torch.tensor(1 - fraction, dtype=torch.float64) + fraction / factor
    return 1 / new_time


def test_amdahl_accepts_right_answers(capsys):
    assert_correct(checks.check_amdahl_speedup, amdahl_right, capsys)
    assert_correct(checks.check_amdahl_speedup, amdahl_right_tensor, capsys)


def test_amdahl_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_amdahl_speedup, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda f, s: (1 - f) + f / s, "reciprocal"),
        (lambda f, s: 1 / ((1 - f) / s + f), "OTHER part"),
        (lambda f, s: f * s + (1 - f), "add up the new TIMES"),
        (lambda f, s: s / f, "left out the part that was not sped up"),
        (lambda f, s: 1 / (1 - f) if f < 1 else math.inf, "only the limit"),
        (lambda f, s: s, "fraction = 1"),
        (lambda f, s: s / ((1 - f) * s + f), "nan"),
        (lambda f, s: 1 / ((1 - f) + f / s) ** 2, "the ratio"),
        (lambda f, s: torch.tensor([f, s]), "one number"),
        (lambda f, s: "fast", "should be a number"),
    ],
)
def test_amdahl_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_amdahl_speedup(answer)


# -- exercise 2: the vectorized commit -----------------------------------------------------------


def commit_sort_scatter(conf, masked, quota):
    """The library's way: sort, rank < quota, scatter back to positions."""
    ranked = conf.masked_fill(~masked, float("-inf"))
    order = torch.sort(ranked, dim=1, descending=True).indices
    ranks = torch.arange(conf.shape[1])
    return torch.zeros_like(masked).scatter(1, order, ranks < quota[:, None])


def commit_double_argsort(conf, masked, quota):
    """Right, differently: each position's rank is the argsort of the argsort."""
    ranked = conf.masked_fill(~masked, float("-inf"))
    rank = ranked.argsort(dim=1, descending=True).argsort(dim=1)
    return rank < quota[:, None]


def commit_kth_value(conf, masked, quota):
    """Right for distinct confidences: everything at least as confident as the quota-th."""
    ranked = conf.masked_fill(~masked, float("-inf"))
    ordered = torch.sort(ranked, dim=1, descending=True).values
    kth = ordered.gather(1, (quota - 1)[:, None])
    return masked & (ranked >= kth)


def commit_row_loop(conf, masked, quota):
    """Right tokens, but one Python iteration (and one host read) per row."""
    commit = torch.zeros_like(masked)
    for row in range(conf.shape[0]):
        ranked = conf[row].masked_fill(~masked[row], float("-inf"))
        commit[row, ranked.topk(int(quota[row])).indices] = True
    return commit


def commit_row_loop_no_reads(conf, masked, quota):
    """A loop over rows that reads nothing back, still one set of calls per row."""
    rows = []
    for c, m, q in zip(conf, masked, quota, strict=True):
        ranked = c.masked_fill(~m, float("-inf"))
        rank = ranked.argsort(descending=True).argsort()
        rows.append(rank < q)
    return torch.stack(rows)


def commit_max_quota(conf, masked, quota):
    """One topk for all rows, with the largest quota read back to the host."""
    ranked = conf.masked_fill(~masked, float("-inf"))
    k = int(quota.max())
    top = ranked.topk(k, dim=1).indices
    keep = torch.arange(k)[None, :] < quota[:, None]
    return torch.zeros_like(masked).scatter(1, top, keep)


def commit_ignores_masked(conf, masked, quota):
    order = torch.sort(conf, dim=1, descending=True).indices
    return torch.zeros_like(masked).scatter(1, order, torch.arange(conf.shape[1]) < quota[:, None])


def commit_least_confident(conf, masked, quota):
    return commit_sort_scatter(-conf, masked, quota)


def commit_rank_le(conf, masked, quota):
    return commit_sort_scatter(conf, masked, quota + 1)


def commit_rank_minus_one(conf, masked, quota):
    return commit_sort_scatter(conf, masked, quota - 1)


def commit_first_quota_everywhere(conf, masked, quota):
    return commit_sort_scatter(conf, masked, quota[:1].expand_as(quota))


def commit_in_place(conf, masked, quota):
    conf.masked_fill_(~masked, float("-inf"))
    return commit_sort_scatter(conf, masked, quota)


def test_vectorized_commit_accepts_right_answers(capsys):
    for answer in (commit_reference, commit_sort_scatter, commit_double_argsort, commit_kth_value):
        assert_correct(checks.check_vectorized_commit, answer, capsys)


def test_vectorized_commit_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_vectorized_commit, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (commit_row_loop, "reads tensor values back"),
        (commit_max_quota, "reads tensor values back"),
        (commit_row_loop_no_reads, "loops over the rows"),
        (commit_ignores_masked, "which is not masked"),
        (commit_least_confident, "LEAST confident"),
        (commit_rank_le, "one position more"),
        (commit_rank_minus_one, "one position fewer"),
        (commit_first_quota_everywhere, "quota\\[:, None\\]"),
        (commit_in_place, "in place"),
        (lambda conf, masked, quota: commit_sort_scatter(conf, masked, quota).long(), "bool"),
        (lambda conf, masked, quota: commit_sort_scatter(conf, masked, quota)[0], "shape"),
        (lambda conf, masked, quota: commit_sort_scatter(conf, masked, quota).tolist(), "list"),
    ],
)
def test_vectorized_commit_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_vectorized_commit(answer)


def test_the_commit_cases_reach_what_the_hints_test():
    """The fixed case must make the typical mistakes visible (else a hint could never fire)."""
    from course_lib.checks.nb09_fast_sampler import _fixed_commit_case

    conf, masked, quota = _fixed_commit_case()
    right = commit_reference(conf, masked, quota)
    assert torch.equal(right.sum(1), quota) and not (right & ~masked).any()
    assert conf[~masked].max() > conf[masked].max()  # ignoring `masked` changes the answer
    assert not torch.equal(commit_least_confident(conf, masked, quota), right)
    assert len(set(quota.tolist())) > 1


# -- exercise 3: the static cache write -----------------------------------------------------------


def write_index_copy(cache, new, positions):
    cache.index_copy_(2, positions, new)


def write_index_put(cache, new, positions):
    cache[:, :, positions] = new


def write_cat(cache, new, positions):
    return torch.cat([cache, new], dim=2)  # a new, longer tensor: the cache is untouched


def write_rebinds(cache, new, positions):
    cache = cache.clone()
    cache[:, :, positions] = new
    return cache


def write_python_slice(cache, new, positions):
    start = int(positions[0])
    cache[:, :, start : start + len(positions)] = new


def write_tensor_slice(cache, new, positions):
    cache[:, :, positions[0] : positions[-1] + 1] = new


def write_erases(cache, new, positions):
    cache.zero_()
    cache.index_copy_(2, positions, new)


def write_one_later(cache, new, positions):
    cache.index_copy_(2, (positions + 1) % cache.shape[2], new)


def write_heads_swapped(cache, new, positions):
    cache.index_copy_(2, positions, new.flip(1))


def write_changes_new(cache, new, positions):
    new.mul_(1.0)
    new.add_(1.0)
    cache.index_copy_(2, positions, new)


def test_static_cache_write_accepts_right_answers(capsys):
    assert_correct(checks.check_static_cache_write, write_index_copy, capsys)
    assert_correct(checks.check_static_cache_write, write_index_put, capsys)


def test_static_cache_write_stub_is_not_attempted(capsys):
    assert_not_attempted(checks.check_static_cache_write, capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (write_rebinds, "left the cache unchanged"),
        (write_cat, "torch.cat"),
        (write_python_slice, "turned the positions into Python numbers"),
        (write_tensor_slice, "turned the positions into Python numbers"),
        (write_erases, "erased"),
        (write_one_later, "changed slots outside"),
        (write_heads_swapped, "not the values of `new`"),
        (write_changes_new, "only the cache may change"),
    ],
)
def test_static_cache_write_mistakes_get_their_hint(answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.check_static_cache_write(answer)


def test_the_kv_cache_prediction_is_judged_against_the_measurement(capsys):
    assert right(checks.check_kv_cache_prediction(2.2, 1.98, 4.27))
    assert "x1.98" in capsys.readouterr().out
    assert not checks.check_kv_cache_prediction(..., 1.98, 4.27)
    for guess, hint in (
        (4.0, "do not shrink with the positions"),
        (1.1, "too low"),
        (3.0, "too high"),
    ):
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_kv_cache_prediction(guess, 1.98, 4.27)


def test_the_fixed_timer_passes_and_each_planted_flaw_is_named(capsys):
    import statistics

    def fixed(fn, repeats, clock):
        fn()
        times = []
        for _ in range(repeats):
            start = clock()
            fn()
            times.append(clock() - start)
        return statistics.median(times)

    def colleagues(fn, repeats, clock):
        start = clock()
        for _ in range(repeats):
            fn()
        return (clock() - start) / repeats

    def warm_mean(fn, repeats, clock):
        fn()
        start = clock()
        for _ in range(repeats):
            fn()
        return (clock() - start) / repeats

    assert right(checks.check_timer_fix(fixed))
    assert "bench.time_fn" in capsys.readouterr().out
    assert not checks.check_timer_fix(lambda *a: (_ for _ in ()).throw(NotImplementedError))
    with pytest.raises(CheckFailed, match="first call"):
        checks.check_timer_fix(colleagues)
    with pytest.raises(CheckFailed, match="median"):
        checks.check_timer_fix(warm_mean)
