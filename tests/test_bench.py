"""course_lib.bench: warm-up, synchronisation and medians, checked with a fake clock."""

import pytest
import torch

from course_lib import bench, env
from course_lib.model import ModelConfig, Transformer


class FakeWork:
    """A function whose calls "take" the given durations on a fake clock, logging events."""

    def __init__(self, durations, monkeypatch):
        self.now = 0.0
        self.durations = list(durations)
        self.events = []  # "f": a call, "s": a synchronisation, "c": a clock read
        self.synced = []
        monkeypatch.setattr(env, "synchronize", self.synchronize)

    def __call__(self):
        self.events.append("f")
        self.now += self.durations.pop(0)

    def clock(self):
        self.events.append("c")
        return self.now

    def synchronize(self, device):
        self.events.append("s")
        self.synced.append(torch.device(device))


def test_time_fn_warms_up_synchronises_and_takes_the_median(monkeypatch):
    # two slow warm-up calls (first-call costs), then five timed ones
    work = FakeWork([100.0, 50.0, 3.0, 1.0, 2.0, 5.0, 4.0], monkeypatch)
    timing = bench.time_fn(work, warmup=2, repeats=5, device="cuda", clock=work.clock)
    assert timing.median_s == 3.0 and timing.min_s == 1.0 and timing.max_s == 5.0
    assert (timing.repeats, timing.warmup, timing.device) == (5, 2, "cuda")
    # warm-up, then a synchronisation before the first clock read, and each timed call is
    # synchronised before the clock is read again
    assert "".join(work.events) == "ffs" + "cfsc" * 5
    assert set(work.synced) == {torch.device("cuda")}
    assert work.durations == []


def test_time_fn_median_of_an_even_number_of_runs(monkeypatch):
    work = FakeWork([1.0, 2.0, 9.0, 4.0], monkeypatch)
    timing = bench.time_fn(work, warmup=0, repeats=4, clock=work.clock)
    assert timing.median_s == 3.0  # the mean of the middle two, not the mean of all (4.0)


def test_time_fn_repeats_short_calls_to_last_min_time(monkeypatch):
    # a calibration call of 0.5 s against min_time_s=2 -> 4 calls per timed run
    durations = [7.0, 0.5] + [1.0, 1.0, 1.0, 1.0] + [2.0, 2.0, 2.0, 2.0] + [0.5, 0.5, 0.5, 0.5]
    work = FakeWork(durations, monkeypatch)
    timing = bench.time_fn(work, warmup=1, repeats=3, min_time_s=2.0, clock=work.clock)
    assert timing.median_s == 1.0 and timing.min_s == 0.5 and timing.max_s == 2.0  # per call
    assert "".join(work.events) == "fs" + "cfsc" + "cffffsc" * 3
    assert work.durations == []


@pytest.mark.parametrize(("warmup", "repeats"), [(-1, 5), (0, 0)])
def test_time_fn_rejects_bad_counts(warmup, repeats):
    with pytest.raises(ValueError, match="warmup >= 0 and repeats >= 1"):
        bench.time_fn(lambda: None, warmup=warmup, repeats=repeats)


def test_timing_prints_and_saves_its_protocol():
    timing = bench.Timing(
        median_s=0.0015, min_s=0.001, max_s=0.002, repeats=7, warmup=3, device="cpu"
    )
    assert str(timing) == "1.500 ms (median of 7, range 1.000-2.000 ms, 3 warm-up, cpu)"
    assert timing.to_dict() == {
        "median_s": 0.0015,
        "min_s": 0.001,
        "max_s": 0.002,
        "repeats": 7,
        "warmup": 3,
        "device": "cpu",
    }


def test_time_fn_on_a_real_clock_measures_real_work():
    timing = bench.time_fn(lambda: sum(range(20_000)), warmup=1, repeats=3)
    assert 0 < timing.min_s <= timing.median_s <= timing.max_s < 1.0


def test_forward_time_vs_tokens_times_each_count_and_restores_the_mode(monkeypatch):
    model = Transformer(ModelConfig(context_len=16, n_layer=1, n_head=2, d_model=16))
    model.train()
    seen = []
    real_forward = model.forward

    def forward(idx, **kwargs):
        seen.append((tuple(idx.shape), model.training, torch.is_inference_mode_enabled()))
        return real_forward(idx, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    results = bench.forward_time_vs_tokens(model, [1, 16], batch_size=2, warmup=1, repeats=2)
    assert sorted(results) == [1, 16]
    assert all(isinstance(t, bench.Timing) and t.repeats == 2 for t in results.values())
    assert seen == [((2, 1), False, True)] * 3 + [((2, 16), False, True)] * 3
    assert model.training  # put back as it was
