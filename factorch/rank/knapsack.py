"""Multiple-choice knapsack: pick one option per layer, minimising total damage under a cost budget."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def solve_mckp(
    costs: Sequence[Sequence[float]],
    damages: Sequence[Sequence[float]],
    budget: float,
    *,
    resolution: int = 4000,
) -> list[int] | None:
    """Choose exactly one option per group so that the total cost is at most ``budget`` and the total damage
    is least (the multiple-choice knapsack problem), by dynamic programming over discretised costs.

    Costs are measured in units of ``budget / resolution`` and rounded *up*, so a returned choice never
    exceeds the budget in the original costs; it is the exact optimum when every cost is already a multiple
    of the unit (e.g. integer costs with ``budget <= resolution``, where the unit is 1), and otherwise optimal
    up to the rounding (at most one unit per group). Ties go to the lower total cost, then to the option
    listed first.

    Args:
        costs: per group, the cost of each option (non-negative).
        damages: per group, the damage of each option (same shape as ``costs``).
        budget: the largest allowed total cost.
        resolution: number of cost units the budget is divided into (time and memory grow linearly).

    Returns:
        The index of the chosen option of each group, or ``None`` when no choice fits the budget.

    Raises:
        ValueError: mismatched shapes, an empty group, a negative or non-finite cost or damage, a negative
            budget or a resolution below 1.
    """
    if len(costs) != len(damages):
        raise ValueError(f"costs has {len(costs)} groups but damages has {len(damages)}")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ValueError(f"resolution must be an int >= 1, got {resolution!r}")
    if not math.isfinite(budget) or budget < 0:
        raise ValueError(f"budget must be a finite number >= 0, got {budget!r}")
    groups = []
    for g, (c, d) in enumerate(zip(costs, damages, strict=True)):
        c, d = np.asarray(c, dtype=np.float64), np.asarray(d, dtype=np.float64)
        if c.ndim != 1 or c.shape != d.shape or c.size == 0:
            raise ValueError(f"group {g}: costs and damages must be equal-length, non-empty lists")
        if not (np.isfinite(c).all() and np.isfinite(d).all()) or (c < 0).any():
            raise ValueError(f"group {g}: costs must be finite and >= 0, damages finite")
        groups.append((c, d))

    exact = budget <= resolution and all(np.all(c == np.round(c)) for c, _ in groups)
    if exact:
        units, scale = int(math.floor(budget)), 1.0
    else:
        units, scale = resolution, resolution / budget if budget > 0 else math.inf
    best = np.full(units + 1, np.inf)  # best[b]: least damage of the groups so far at total cost exactly b
    best[0] = 0.0
    choice = np.zeros((len(groups), units + 1), dtype=np.int64)
    for g, (c, d) in enumerate(groups):
        with np.errstate(invalid="ignore"):
            int_costs = np.where(c > 0, np.ceil(c * scale - 1e-9), 0).astype(np.float64)
        new = np.full(units + 1, np.inf)
        for o in range(c.size):
            k = int_costs[o]
            if not k <= units:
                continue
            k = int(k)
            shifted = best[: units + 1 - k] + d[o]
            better = shifted < new[k:]
            new[k:][better] = shifted[better]
            choice[g, k:][better] = o
        best = new
        if not np.isfinite(best).any():
            return None
        groups[g] = (int_costs, d)
    finite = np.flatnonzero(np.isfinite(best))
    b = int(finite[np.argmin(best[finite])])  # argmin returns the first (cheapest) of equal minima
    picks = [0] * len(groups)
    for g in range(len(groups) - 1, -1, -1):
        o = int(choice[g, b])
        picks[g] = o
        b -= int(groups[g][0][o])
    return picks
