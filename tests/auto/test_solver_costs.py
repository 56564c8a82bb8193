"""The budget solver's use of costs, on hand-made score tables (no model is analysed)."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from factorch.auto.scoring import ScoreTable, monotone
from factorch.auto.search import AutoSearch, Candidate, LayerChoices, _spend_leftover
from factorch.rank.knapsack import solve_mckp


def total(costs, picks):
    return sum(c[p] for c, p in zip(costs, picks))


def exhaustive(costs, damages, budget):
    fits = [p for p in itertools.product(*(range(len(c)) for c in costs)) if total(costs, p) <= budget]
    return min((total(damages, p) for p in fits), default=None)


tables = st.lists(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 20)), min_size=1, max_size=4),
    min_size=1,
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(table=tables, slack=st.integers(0, 60))
def test_spend_leftover_never_exceeds_the_budget_nor_adds_damage(table, slack):
    costs = [[float(c) for c, _ in g] for g in table]
    damages = [[d / 10 for _, d in g] for g in table]
    start = [min(range(len(c)), key=c.__getitem__) for c in costs]  # the cheapest choice
    budget = total(costs, start) + slack
    picks = _spend_leftover(start, costs, damages, budget)
    assert total(costs, picks) <= budget
    for g, (o, p) in enumerate(zip(start, picks)):
        assert costs[g][p] >= costs[g][o] and damages[g][p] <= damages[g][o]
    # nothing left to spend: no single move to a costlier option that does no more damage still fits
    leftover = budget - total(costs, picks)
    for g, p in enumerate(picks):
        for k in range(len(costs[g])):
            if costs[g][k] > costs[g][p] and damages[g][k] <= damages[g][p]:
                assert costs[g][k] - costs[g][p] > leftover


def test_spend_leftover_moves_to_the_option_whose_damage_falls_most():
    costs = [[1.0, 5.0, 9.0], [1.0, 5.0]]
    damages = [[1.0, 0.5, 0.5], [1.0, 0.2]]
    # 6 units to spend: layer 1's move (damage -0.8, +4) comes before layer 0's (-0.5, +4); then 2 are left
    assert _spend_leftover([0, 0], costs, damages, 8.0) == [0, 1]
    assert _spend_leftover([0, 0], costs, damages, 10.0) == [1, 1]  # both fit
    # among equal damages the costlier option is taken (the cost is spent, not the damage)
    assert _spend_leftover([0, 1], costs, damages, 14.0) == [2, 1]
    assert _spend_leftover([0, 0], costs, damages, 2.0) == [0, 0]  # exactly spent: nothing moves


def search_over(kind: str, layers: list[tuple[float, list[tuple[float, float]]]]) -> AutoSearch:
    """An :class:`AutoSearch` whose analysis is the given table: per layer its dense cost and the
    ``(cost, damage)`` of its candidates."""
    search = object.__new__(AutoSearch)
    search.kind = kind
    search.layers = []
    damages = {}
    for i, (dense, options) in enumerate(layers):
        candidates = [
            Candidate("svd", (r + 1,), params=int(cost), macs=int(cost)) for r, (cost, _) in enumerate(options)
        ]
        damages.update({(f"l{i}", c.key): d for c, (_, d) in zip(candidates, options)})
        search.layers.append(
            LayerChoices(
                name=f"l{i}",
                layer=nn.Identity(),
                input_shape=(1,),
                input_size=None,
                per_position=1,
                dense_params=int(dense),
                dense_macs=int(dense),
                candidates=candidates,
            )
        )
    search._scores = ScoreTable.of({lc.name: lc.candidates for lc in search.layers}, damages)
    return search


layer_tables = st.lists(
    st.tuples(
        st.integers(10, 40),
        st.lists(st.tuples(st.integers(1, 9), st.integers(0, 50)), min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=4,
)


@pytest.mark.parametrize("kind", ["params", "macs"])
@settings(max_examples=80, deadline=None)
@given(layers=layer_tables, fixed=st.integers(0, 30), fraction=st.floats(0.05, 1.0))
def test_solve_meets_the_budget_after_the_fixed_cost_with_least_damage(kind, layers, fixed, fraction):
    search = search_over(kind, [(d, [(c, dmg / 10) for c, dmg in opts]) for d, opts in layers])
    dense_total = fixed + sum(d for d, _ in layers)
    costs = [[d, *(c for c, _ in opts)] for d, opts in layers]
    damages = [[0.0, *(dmg / 10 for _, dmg in opts)] for _, opts in layers]
    budget = fraction * dense_total - fixed  # what the candidate layers may cost together
    best = exhaustive(costs, damages, budget)
    if best is None:
        with pytest.raises(ValueError, match="out of reach"):
            search.solve(fraction, dense_total, fixed)
        return
    choice, predicted = search.solve(fraction, dense_total, fixed)
    spent = fixed + sum(
        (c.params if kind == "params" else c.macs) if c is not None else d
        for c, (d, _) in zip((choice[f"l{i}"] for i in range(len(layers))), layers)
    )
    assert spent <= fraction * dense_total
    assert predicted == pytest.approx(best, abs=1e-9)
    assert predicted == pytest.approx(search.scores.total(choice), abs=1e-9)


def test_solve_picks_the_cheap_layer_to_compress_and_keeps_fixed_costs_out_of_the_budget():
    # two layers of cost 10; compressing l0 to 4 costs damage 1, l1 to 4 costs damage 5
    search = search_over("params", [(10.0, [(4.0, 1.0)]), (10.0, [(4.0, 5.0)])])
    choice, predicted = search.solve(0.6, 30.0, 10.0)  # 18 in all, 10 of them fixed: 8 left for the layers
    assert choice["l0"] is not None and choice["l1"] is not None and predicted == 6.0
    choice, predicted = search.solve(0.8, 30.0, 10.0)  # 14 left: one layer stays dense
    assert choice["l0"] is not None and choice["l1"] is None and predicted == 1.0
    with pytest.raises(ValueError, match="out of reach"):
        search.solve(0.5, 30.0, 10.0)  # 5 left, the smallest choice costs 8
    assert solve_mckp([[10, 4], [10, 4]], [[0, 1], [0, 5]], 8) == [1, 1]


def test_score_tables_are_read_only_and_complete():
    a, b = Candidate("svd", (1,), 4, 4), Candidate("svd", (2,), 8, 8)
    table = ScoreTable.of({"l0": [a, b]}, {("l0", a.key): 2.0, ("l0", b.key): 0.5})
    assert table.damage("l0", None) == 0.0 and table.total({"l0": b}) == 0.5
    with pytest.raises(TypeError):
        table.damages[("l0", a.key)] = 0.0
    with pytest.raises(AttributeError):
        table.options = {}
    with pytest.raises(ValueError, match="no damage"):
        ScoreTable.of({"l0": [a, b]}, {("l0", a.key): 2.0})


def test_monotone_damages_never_rise_with_cost_per_method():
    cands = [Candidate(m, (r,), params=r, macs=r) for m in ("svd", "cp") for r in (1, 2, 3)]
    raw = {"svd|1": 5.0, "svd|2": 6.0, "svd|3": 1.0, "cp|1": 3.0, "cp|2": 1.0, "cp|3": 2.0}
    out = monotone(cands, lambda c: raw[c.key])
    # a score above a cheaper one is noise: it takes the cheaper one's; methods are settled apart
    assert out == {"svd|1": 5.0, "svd|2": 5.0, "svd|3": 1.0, "cp|1": 3.0, "cp|2": 1.0, "cp|3": 1.0}
