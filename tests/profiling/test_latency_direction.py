"""Latency numbers point the right way: a model known to be slower is reported slower, by about the right factor.

The models sleep (or repeat the same work) a fixed number of times, so which one is slower, and roughly by how
much, does not depend on the machine; the bounds leave room for a loaded machine.
"""

import time

import pytest
import torch
from torch import nn

from factorch.profiling import compare_latency, measure_latency


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Sleeper(nn.Module):
    """Sleeps ``seconds`` per call; logs its name to ``log`` when given one."""

    def __init__(self, seconds: float, name: str = "", log: list[str] | None = None) -> None:
        super().__init__()
        self.seconds, self.name, self.log = seconds, name, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log is not None:
            self.log.append(self.name)
        time.sleep(self.seconds)
        return x


class Repeated(nn.Module):
    """The same matrix product ``times`` times in a row."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times
        self.weight = nn.Parameter(torch.randn(128, 128) / 128**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.times):
            x = torch.tanh(x @ self.weight)
        return x


def test_a_model_that_sleeps_five_times_longer_has_a_ratio_near_five():
    fast, slow = Sleeper(0.004), Sleeper(0.020)
    x = torch.zeros(1, 4)
    comparison = compare_latency(fast, slow, x, batch_sizes=(1,), repeats=7, warmup=1, names=("fast", "slow"))
    (r,) = comparison.results
    # ratio is time_b / time_a: B (slow) takes about 5 times as long as A (fast)
    # (sleeping overshoots by up to a few ms on a loaded machine, which pulls the ratio towards 1)
    assert 2.0 < r.ratio < 5.5 and 1 / 5.5 < r.speedup < 1 / 2.0
    assert r.median_a_s >= 0.004 and r.median_b_s >= 0.020 and r.median_b_s > 1.5 * r.median_a_s
    assert comparison.ratio(1) == r.ratio
    row = comparison.to_dict()["results"][0]
    assert row["speedup"] == pytest.approx(1 / r.ratio) and row["median_b_s"] == r.median_b_s
    table = comparison.to_markdown()
    assert "| slow / fast (median of ratios) |" in table and f"| {r.ratio:.3f} |" in table

    swapped = compare_latency(slow, fast, x, batch_sizes=(1,), repeats=7, warmup=1)
    (s,) = swapped.results
    assert 1 / 5.5 < s.ratio < 1 / 2.0 and 2.0 < s.speedup < 5.5  # B faster: ratio below 1, speedup above 1
    assert s.median_a_s > 1.5 * s.median_b_s


def test_a_model_doing_the_same_work_eight_times_is_reported_slower():
    once, eight_times = Repeated(1), Repeated(8)
    x = torch.randn(64, 128)
    (r,) = compare_latency(once, eight_times, x, batch_sizes=(64,), repeats=9, warmup=2).results
    assert 2.0 < r.ratio < 25 and r.speedup < 0.5
    (s,) = compare_latency(eight_times, once, x, batch_sizes=(64,), repeats=9, warmup=2).results
    assert 1 / 25 < s.ratio < 1 / 2.0 and s.speedup > 2.0


def test_calls_alternate_abba_after_the_warmup():
    log: list[str] = []
    a, b = Sleeper(0.0, "A", log), Sleeper(0.0, "B", log)
    compare_latency(a, b, torch.zeros(1, 4), batch_sizes=(1,), repeats=4, warmup=1)
    assert log == ["A", "B"] + ["A", "B", "B", "A", "A", "B", "B", "A"]


def test_measure_latency_reports_at_least_the_time_slept():
    report = measure_latency(Sleeper(0.005), torch.zeros(1, 4), batch_sizes=(1, 8), repeats=3, warmup=0)
    for r in report.results:
        assert 0.005 <= r.min_s <= r.median_s < 0.05
        assert r.throughput == pytest.approx(r.batch_size / r.median_s)
    # a call costs the same at any batch size here, so throughput grows with the batch
    assert report.results[1].throughput > 4 * report.results[0].throughput
