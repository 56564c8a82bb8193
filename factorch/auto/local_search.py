"""The local search that polishes the chosen allocation on the measured whole-network damage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from factorch.auto.candidates import Candidate, _cost
from factorch.auto.scoring import ScoreTable
from factorch.auto.solvers import FILL, _choice_tag
from factorch.layers import layer_class
from factorch.progress import progress_bar

if TYPE_CHECKING:
    from factorch.auto.search import AutoSearch


def polish(
    search: AutoSearch,
    start: dict[str, Candidate | None],
    fraction: float,
    total: float,
    fixed: float,
    scores: ScoreTable,
) -> tuple[float, str, dict[str, Candidate | None]] | None:
    """Local search on the measured whole-network damage, from ``start``, at most ``cfg.polish`` choices
    tried: a move takes one layer one step dearer on its ladder of options (dense, then its
    candidates from the costliest down) and, unless the budget allows it as is, another layer as few steps
    cheaper as bring the choice within the budget; the first move that lowers the measured damage is kept,
    until none does. Moves are tried in the order of their predicted change (the damages of ``scores``: the
    single-layer table, or the in-context one of the last refinement round). Only choices within
    ``[FILL, 1] * budget`` (or dearer than the current one) are considered. Returns
    ``(damage, "polished (n moves)", choice)``, or ``None`` if no move helped.

    Summed per-layer damages, even re-scored in context, miss how the errors of many strongly compressed
    layers compound; measuring whole choices does not (see benchmarks/README.md, auto_budget).
    """
    limit, low = fraction * total, FILL * fraction * total
    ladders: dict[str, list[Candidate | None]] = {}
    for lc in search.layers:
        # measured candidates, and interpolated ranks of the methods whose layers are cheap to build
        options = [
            c
            for c in scores.options[lc.name]
            if c.measured or getattr(layer_class(c.method, lc.layer), "cheap_to_build", True)
        ]
        if (c := start[lc.name]) is not None and all(o.key != c.key for o in options):
            options.append(c)
        ladders[lc.name] = [None, *sorted(options, key=lambda c: -_cost(search.kind, c))]

    def position(choice: dict[str, Candidate | None], name: str) -> int:
        c = choice[name]
        return 0 if c is None else next(i for i, o in enumerate(ladders[name]) if o is not None and o.key == c.key)

    current, value = dict(start), search._joint(start)
    # every choice tried counts against the cap, measured now or read from the table, so a repeat run (all
    # read) retraces the first run's path and stops where it stopped; a choice already tried is not retried
    tried, evals, fresh, moves_kept = {_choice_tag(start)}, 0, 0, 0
    names = [lc.name for lc in search.layers]
    with progress_bar("polishing", search.cfg.polish, enabled=search.cfg.progress) as advance:
        while evals < search.cfg.polish:
            moves, spent = [], search._total_cost(current, fixed)
            for b in names:  # b one step dearer
                ib = position(current, b)
                if ib == 0:
                    continue
                dearer = ladders[b][ib - 1]
                gain = scores.damage(b, dearer) - scores.damage(b, current[b])
                for a in [None, *names]:  # a cheaper, by as few steps as fit the budget (None: as is)
                    cand = dict(current)
                    cand[b] = dearer
                    cost = search._total_cost(cand, fixed)
                    if a is not None:
                        if a == b:
                            continue
                        ia = position(current, a)
                        for step in range(ia + 1, len(ladders[a])):
                            cand[a] = ladders[a][step]
                            cost = search._total_cost(cand, fixed)
                            if cost <= limit:
                                break
                        if cand[a] is current[a]:  # a is at its cheapest already
                            continue
                    if cost <= limit and (cost >= low or cost >= spent) and _choice_tag(cand) not in tried:
                        delta = gain + (0.0 if a is None else scores.damage(a, cand[a]) - scores.damage(a, current[a]))
                        moves.append((delta, len(moves), cand))
            moves.sort(key=lambda m: m[:2])
            improved = False
            for _, _, cand in moves:
                if evals >= search.cfg.polish:
                    break
                tag = _choice_tag(cand)
                if tag in tried:  # reached by two moves of this round
                    continue
                tried.add(tag)
                fresh += search._table.get(f"joint|{tag}") is None
                measured = search._joint(cand)
                evals += 1
                advance()
                if measured < value:
                    current, value, improved = cand, measured, True
                    moves_kept += 1
                    break
            if not improved:
                break
    search.stats["polished"] = {"tried": evals, "measurements": fresh, "moves": moves_kept}
    return (value, f"polished ({moves_kept} moves)", current) if moves_kept else None
