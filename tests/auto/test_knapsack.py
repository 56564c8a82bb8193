import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factorch.rank.knapsack import solve_mckp


def exhaustive(costs, damages, budget):
    best = None
    for picks in itertools.product(*(range(len(c)) for c in costs)):
        cost = sum(c[p] for c, p in zip(costs, picks))
        if cost > budget:
            continue
        dmg = sum(d[p] for d, p in zip(damages, picks))
        if best is None or dmg < best[0] - 1e-12:
            best = (dmg, picks)
    return best


groups = st.lists(
    st.lists(st.tuples(st.integers(0, 30), st.floats(0, 10, allow_nan=False)), min_size=1, max_size=4),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(groups=groups, budget=st.integers(0, 120))
def test_integer_costs_match_the_exhaustive_optimum(groups, budget):
    costs = [[c for c, _ in g] for g in groups]
    damages = [[d for _, d in g] for g in groups]
    picks = solve_mckp(costs, damages, budget)
    best = exhaustive(costs, damages, budget)
    if best is None:
        assert picks is None
        return
    assert picks is not None
    assert sum(c[p] for c, p in zip(costs, picks)) <= budget
    assert sum(d[p] for d, p in zip(damages, picks)) == pytest.approx(best[0], abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_real_costs_never_exceed_the_budget_and_are_near_optimal(seed):
    rng = np.random.default_rng(seed)
    costs = [list(rng.uniform(1e5, 1e7, size=rng.integers(1, 5))) for _ in range(4)]
    damages = [list(rng.uniform(0, 1, size=len(c))) for c in costs]
    budget = float(sum(min(c) for c in costs) * rng.uniform(1.0, 2.0))
    picks = solve_mckp(costs, damages, budget, resolution=20000)
    best = exhaustive(costs, damages, budget)
    assert picks is not None and best is not None
    assert sum(c[p] for c, p in zip(costs, picks)) <= budget
    # rounding costs up can only exclude choices within len(groups) units of the budget
    slack = exhaustive(costs, damages, budget * (1 - 4 / 20000))
    assert sum(d[p] for d, p in zip(damages, picks)) <= (slack or best)[0] + 1e-9


def test_infeasible_budget_returns_none():
    assert solve_mckp([[5, 6], [3]], [[0, 0], [0]], 7) is None


@pytest.mark.parametrize(
    "costs, damages, budget, match",
    [
        ([[1]], [[0], [1]], 3, "groups"),
        ([[]], [[]], 3, "non-empty"),
        ([[-1]], [[0]], 3, ">= 0"),
        ([[1]], [[float("nan")]], 3, "finite"),
        ([[1]], [[0]], -1, "budget"),
    ],
)
def test_bad_input_is_named(costs, damages, budget, match):
    with pytest.raises(ValueError, match=match):
        solve_mckp(costs, damages, budget)
