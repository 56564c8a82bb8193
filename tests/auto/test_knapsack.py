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


def true_cost(costs, picks):
    return sum(c[p] for c, p in zip(costs, picks))


def test_costs_between_units_are_rounded_up_so_a_tight_budget_holds():
    # unit = budget / resolution = 0.1. 0.54 and 0.46 are not multiples of it; 0.54 + 0.46 meets the budget
    # exactly and 0.54 + 0.54 = 1.08 exceeds it. Rounding to the nearest unit (5 + 5 = 10 units) would wrongly
    # let the damage-free pair through; rounding up (6 + 6 = 12 > 10 units) keeps the choice within budget.
    costs = [[0.54, 0.46], [0.54, 0.46]]
    damages = [[0.0, 0.5], [0.0, 0.5]]
    picks = solve_mckp(costs, damages, 1.0, resolution=10)
    assert picks is not None
    assert true_cost(costs, picks) <= 1.0
    assert picks == [1, 1]  # 0.54 + 0.46 rounds up to 11 units: excluded, as documented (one unit per group)
    # at a fine resolution the combination that meets the budget exactly is found
    picks = solve_mckp(costs, damages, 1.0, resolution=1000)
    assert picks in ([0, 1], [1, 0]) and true_cost(costs, picks) <= 1.0


def test_a_single_over_budget_option_is_never_chosen():
    # 1.04 is 10.4 units of 0.1: rounded to the nearest unit it would look like exactly the budget
    assert solve_mckp([[1.04, 2.0]], [[0.0, 1.0]], 1.0, resolution=10) is None
    assert solve_mckp([[1.04, 0.96]], [[0.0, 1.0]], 1.0, resolution=10) == [1]


real_groups = st.lists(
    st.lists(
        st.tuples(st.floats(0, 10, allow_nan=False, allow_subnormal=False), st.floats(0, 10, allow_nan=False)),
        min_size=1,
        max_size=4,
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(groups=real_groups, budget=st.floats(0.5, 40), resolution=st.integers(1, 60))
def test_real_costs_match_the_exhaustive_optimum_up_to_one_unit_per_group(groups, budget, resolution):
    costs = [[c for c, _ in g] for g in groups]
    damages = [[d for _, d in g] for g in groups]
    picks = solve_mckp(costs, damages, budget, resolution=resolution)
    unit = budget / resolution
    # feasible in the original costs; the solver forgives float noise of 1e-9 unit per cost
    limit = budget + len(groups) * 1e-9 * unit
    best = exhaustive(costs, damages, limit)
    # every choice that fits ``budget - len(groups) units`` still fits after each cost is rounded up
    slack = exhaustive(costs, damages, budget - len(groups) * unit)
    if picks is None:
        assert slack is None
        return
    assert true_cost(costs, picks) <= limit
    damage = sum(d[p] for d, p in zip(damages, picks))
    assert best is not None and damage >= best[0] - 1e-9  # nothing feasible beats the true optimum
    if slack is not None:
        assert damage <= slack[0] + 1e-9
