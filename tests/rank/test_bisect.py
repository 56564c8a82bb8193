import pytest

from factorch.rank.bisect import largest_feasible


def test_largest_feasible_finds_the_threshold_and_returns_what_it_built():
    found = largest_feasible(lambda r: r * 10, lambda v: v <= 3.3, steps=20)
    assert found is not None and found[0] == pytest.approx(0.33, abs=1e-5) and found[1] == found[0] * 10
    assert found[0] <= 0.33  # never above the threshold


def test_largest_feasible_none_when_nothing_fits():
    assert largest_feasible(lambda r: r, lambda v: v < 0, steps=5) is None
    with pytest.raises(ValueError, match="steps"):
        largest_feasible(lambda r: r, lambda v: True, steps=0)
