"""Pure helpers of the budget solvers: spending what a choice leaves of the budget, and the tags that key
whole choices in the score table."""

from __future__ import annotations

import hashlib

from factorch.auto.candidates import Candidate, LayerChoices

FILL = 0.98  # a proposal other than the knapsack optimum must use at least this share of the budget


def _spend_leftover(picks: list[int], costs: list[list[float]], damages: list[list[float]], budget: float) -> list[int]:
    """Spend what a choice leaves of the budget: move a layer to a costlier option that does no more damage,
    the one whose damage falls most first (then the costliest), until nothing fits."""
    picks = list(picks)
    spent = sum(costs[g][o] for g, o in enumerate(picks))
    while True:
        best = None
        for g, o in enumerate(picks):
            for k, (cost, dmg) in enumerate(zip(costs[g], damages[g])):
                if cost <= costs[g][o] or dmg > damages[g][o] or spent - costs[g][o] + cost > budget:
                    continue
                score = (damages[g][o] - dmg, cost - costs[g][o])
                if best is None or score > best[0]:
                    best = (score, g, k)
        if best is None:
            return picks
        _, g, k = best
        spent += costs[g][k] - costs[g][picks[g]]
        picks[g] = k


def _choice_tag(choice: dict[str, Candidate | None]) -> str:
    text = ";".join(f"{name}={c.key if c else '-'}" for name, c in sorted(choice.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _ctx_key(tag: str, lc: LayerChoices, c: Candidate | None) -> str:
    return f"ctx|{tag}|{lc.name}|{c.key if c is not None else 'dense'}"
