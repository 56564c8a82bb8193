"""Channel allocation by resolution level: one kept share per feature-map size, chosen by measured damage and,
under a latency bound, measured speed.

Why levels. On a CPU a small conv's time is far from proportional to its MACs: at the widths of CIFAR-style
networks it grows about linearly with the channels (reading and writing feature maps), not with their square,
and oneDNN switches kernels at some widths (measured here, batch 64, 2 threads: a 3x3 conv on 28x28 maps
takes 1.6 ms at 14 channels and 6.1 ms at 16). So the same MACs cost very different times depending on *where*
channels go: on resnet20 at ``macs=0.5``, timed in one process, the global and uniform allocations ran at
0.66-0.83x dense, and keeping half the 28x28 channels, all the 14x14 ones and 40 % of the 7x7 ones at 0.55x
with less output damage (how far such ratios move between processes: ``benchmarks/latency_processes.py``).
Channels at one map size share a runtime regime, so a share per size is the few-parameter family
worth searching (NetAdapt, Yang et al. 2018, searches per layer with measured latency; MorphNet and
"network slimming" per layer by MACs; per-stage widths are how EfficientNet / RegNet scale networks).

The search (:func:`level_search`):

1. every prunable channel group gets the level of its producers' output size (``"28x28"``; ``"features"``
   for Linear neurons);
2. for each level and each share on a grid, only that level is pruned (channels ranked by the criterion
   within each group, as the uniform allocation does) and the model is measured: the damage (given by the
   caller: :func:`~factorch.prune.apply.channel_prune` re-estimates the BatchNorm statistics on the
   calibration inputs, then takes the KL divergence of the softmax outputs to the dense model's) and, under
   a latency bound, its latency against the dense model's (paired, alternating calls);
3. every combination of shares is priced exactly (MACs / parameters from the channels kept, vectorised over
   the whole grid) and predicted: damage as the sum of the levels' damages, latency as the dense one minus
   the sum of the levels' savings;
4. the combinations within the budget are built and measured together, the best predicted first, until
   ``verify`` of them hold the target; the least damaged of those is kept;
5. the kept combination is grown where the budget allows: each level's share raised half a grid step at a
   time, kept when it stays within the budget and the bound and measures less damage.

Nothing here is fitted to one model: the curves are measured on the model, the machine and the runtime.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from factorch.progress import progress_bar
from factorch.prune.channels import (
    ChannelGraph,
    ChannelGroup,
    CostModel,
    KeepMasks,
    _kept_count,
    _top,
    apply_channel_record_,
    channel_record,
    layer_cost,
    prune_channels,
    run_hooked,
)
from factorch.prune.graph import analyze_channels, as_inputs

SHARES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""Kept shares of each level's channels tried by the search (1.0: the level is left whole)."""

MAX_COMBINATIONS = 2_000_000  # shares ** levels beyond this: the grid is thinned (a deep stack of map sizes)


@dataclass
class LevelResult:
    """What :func:`level_search` found and measured.

    Attributes:
        levels: the level labels, largest maps first (``"28x28"``, ..., ``"features"``).
        shares: the kept share chosen for each level.
        ratios: ``{producer layer: fraction of channels removed}`` for :func:`prune_channels`'s ``ratio=``.
        damage: the chosen model's measured damage; ``latency``: its latency / the dense model's (``None``
            without a bound).
        curves: per level, ``{share: {"damage": d, "latency": l}}`` measured with only that level pruned.
        verified: every combination built and measured together, in the order tried.
        seconds: the wall time of the search.
    """

    levels: tuple[str, ...]
    shares: tuple[float, ...]
    ratios: dict[str, float]
    damage: float
    latency: float | None
    curves: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    verified: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (the report's ``totals["allocation"]["levels"]``)."""
        return {
            "levels": list(self.levels),
            "shares": list(self.shares),
            "damage": self.damage,
            "latency": self.latency,
            "curves": self.curves,
            "verified": self.verified,
            "seconds": round(self.seconds, 2),
        }


def group_levels(model: nn.Module, graph: ChannelGraph, inputs: tuple[Tensor, ...]) -> dict[str, str]:
    """``{prunable group: level}``: the spatial size of the group's first producer's output (``"28x28"``),
    or ``"features"`` for an output without spatial dims (Linear neurons)."""
    producers = {g.name: _producer(g) for g in graph.prunable_groups}
    wanted = set(producers.values())
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Callable:
        def hook(_module: nn.Module, _args: tuple, out: Any) -> None:  # returns None: the output is unchanged
            if isinstance(out, Tensor):
                shapes.setdefault(name, tuple(out.shape))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n in wanted]
    run_hooked(model, handles, [inputs])
    levels = {}
    for group, producer in producers.items():
        shape = shapes.get(producer, ())
        levels[group] = "x".join(map(str, shape[2:])) if len(shape) > 2 else "features"
    return levels


def _level_order(levels: Mapping[str, str]) -> tuple[str, ...]:
    def size(label: str) -> int:
        return -1 if label == "features" else math.prod(int(d) for d in label.split("x"))

    return tuple(sorted(set(levels.values()), key=size, reverse=True))


def level_masks(
    graph: ChannelGraph,
    scores: Mapping[str, Tensor],
    levels: Mapping[str, str],
    shares: Mapping[str, float],
    *,
    min_channels: int = 1,
    round_to: int = 1,
) -> KeepMasks:
    """Keep masks with ``shares[level]`` of every group of that level kept (the most important channels by
    ``scores``; at least ``min_channels``, rounded up to ``round_to``). A level missing from ``shares`` is kept
    whole. The count removed is ``floor((1 - share) * size)``, as :func:`select_by_ratio` removes."""
    return {
        g.name: _group_mask(g, scores[g.name], shares.get(levels[g.name], 1.0), min_channels, round_to)
        for g in graph.prunable_groups
    }


def level_ratios(graph: ChannelGraph, levels: Mapping[str, str], shares: Mapping[str, float]) -> dict[str, float]:
    """``{producer layer: fraction removed}`` (:func:`~factorch.prune.channels.prune_channels`'s ``ratio=``)
    for ``shares`` per level; the model it builds is the one :func:`level_masks` describes."""
    return {_producer(g): 1.0 - shares.get(levels[g.name], 1.0) for g in graph.prunable_groups}


def level_model(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    shares: Mapping[str, float],
    *,
    criterion: str = "l1",
    calib_data: Any = None,
    min_channels: int = 1,
    round_to: int = 1,
) -> nn.Module:
    """``model`` (a copy) with ``shares[level]`` of the channels of every group of that feature-map size kept,
    e.g. the shares a search reported (``{"28x28": 0.7, "14x14": 0.45, "7x7": 0.75}``).

    Raises:
        ValueError: a level that is not one of the model's (the message lists them).
    """
    inputs = as_inputs(example_inputs)
    graph = analyze_channels(model, inputs)
    levels = group_levels(model, graph, inputs)
    unknown = set(shares) - set(levels.values())
    if unknown:
        raise ValueError(
            f"{graph.model_name} has no feature-map size {sorted(unknown)}; its levels: {list(_level_order(levels))}"
        )
    ratio = level_ratios(graph, levels, shares)
    pruned, _ = prune_channels(
        model, inputs, ratio=ratio, criterion=criterion, calib_data=calib_data, min_channels=min_channels,
        round_to=round_to,
    )  # fmt: skip
    return pruned


def _producer(group: ChannelGroup) -> str:
    """The first layer whose outputs are the group's channels (the key ``prune_channels(ratio=)`` takes)."""
    return next(m for m, role in group.layers if role == "out")


def _group_mask(group: ChannelGroup, scores: Tensor, share: float, min_channels: int, round_to: int) -> Tensor:
    wanted = group.size - int((1.0 - share) * group.size)
    return _top(scores, _kept_count(group.size, wanted, min_channels, round_to))


def grid_costs(
    graph: ChannelGraph,
    scores: Mapping[str, Tensor],
    cost: CostModel,
    levels: Mapping[str, str],
    order: Sequence[str],
    grid: Sequence[float],
    *,
    metric: str,
    min_channels: int = 1,
    round_to: int = 1,
) -> tuple[Tensor, Tensor]:
    """Every combination of one share per level (``len(grid) ** len(order)``) and its exact ``metric``.

    Returns:
        ``(index, totals)``: ``index[i, l]`` is the grid position of level ``order[l]`` in combination ``i``;
        ``totals[i]`` is the whole model's MACs / parameters with those shares (what :class:`CostModel` gives
        for the same masks, computed for all combinations at once: a layer's kept outputs and inputs are sums
        over the groups that slice them, and its cost a product of the two).
    """
    keys: list[tuple[str, str]] = sorted({role for g in graph.groups for role in cost.incidence[g.name][0]})
    where = {k: i for i, k in enumerate(keys)}
    base = torch.zeros(len(keys), dtype=torch.float64)
    per_level = torch.zeros(len(order), len(grid), len(keys), dtype=torch.float64)
    prunable = {g.name for g in graph.prunable_groups}
    for g in graph.groups:
        roles, matrix = cost.incidence[g.name]
        rows = torch.tensor([where[r] for r in roles])
        if g.name not in prunable:
            base.index_add_(0, rows, matrix.sum(1))
            continue
        lvl = order.index(levels[g.name])
        for j, share in enumerate(grid):
            mask = _group_mask(g, scores[g.name], share, min_channels, round_to)
            per_level[lvl, j].index_add_(0, rows, matrix @ mask.double())
    index = torch.cartesian_prod(*[torch.arange(len(grid))] * len(order)).reshape(-1, len(order))
    counts = base.expand(index.shape[0], -1).clone()
    for lvl in range(len(order)):
        counts += per_level[lvl][index[:, lvl]]
    total = torch.full((index.shape[0],), float(cost.base.get(metric)), dtype=torch.float64)
    for name, geo in graph.layers.items():
        full = layer_cost(geo, geo.out_size, geo.in_size).get(metric)
        out_k = counts[:, where[(name, "out")]] if (name, "out") in where else torch.tensor(float(geo.out_size))
        in_k = counts[:, where[(name, "in")]] if (name, "in") in where else torch.tensor(float(geo.in_size))
        unit = geo.macs_unit if metric == "macs" else geo.params_unit
        bias = out_k if (metric == "params" and geo.bias) else 0.0
        now = unit * out_k * in_k + bias if geo.kind in ("conv", "linear") else unit * out_k + bias
        total = total - full + now
    return index, total


def level_search(
    model: nn.Module,
    graph: ChannelGraph,
    scores: Mapping[str, Tensor],
    cost: CostModel,
    inputs: tuple[Tensor, ...],
    *,
    damage: Callable[[nn.Module], float],
    metric: str | None,
    fraction: float | None,
    latency: Callable[[nn.Module], float] | None = None,
    max_latency: float | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    grid: Sequence[float] = SHARES,
    verify: int = 6,
    max_builds: int = 24,
    progress: bool = True,
) -> LevelResult:
    """The least damaged per-level shares whose model meets ``metric <= fraction`` of the dense model's and,
    when ``max_latency`` is given, measures at most ``max_latency`` times the dense latency.

    Args:
        model: the dense model (not modified).
        graph, scores, cost: its channel groups, their (normalised) importance, its cost model.
        inputs: example inputs (batch 1) for the level of each group.
        damage: ``model -> damage`` of a pruned model (lower is better).
        metric, fraction: the budget (``"macs"`` / ``"params"`` and the fraction kept); ``None``: no budget
            but the latency bound.
        latency: ``model -> its latency / the dense model's``, needed with ``max_latency``.
        max_latency: the latency bound, a fraction of the dense model's.
        grid: the shares tried per level (1.0 is always included).
        verify: stop after this many combinations built together met the target.
        max_builds: the most combinations built together before giving up.

    Raises:
        ValueError: no combination of the grid meets the budget, or none of those built meets the latency
            bound (the message gives the fastest measured).
    """
    if max_latency is not None and latency is None:
        raise ValueError("max_latency needs a latency function")
    if metric is None and max_latency is None:
        raise ValueError("level_search needs a budget (metric and fraction) or max_latency")
    t0 = time.perf_counter()
    grid = tuple(sorted({float(s) for s in grid} | {1.0}))
    levels = group_levels(model, graph, inputs)
    order = _level_order(levels)
    if len(grid) ** len(order) > MAX_COMBINATIONS:  # many map sizes: every other share, 1.0 kept
        grid = tuple(sorted(set(grid[::-2])))
    if len(grid) ** len(order) > MAX_COMBINATIONS:
        raise ValueError(
            f"{graph.model_name} has {len(order)} feature-map sizes: {len(grid)} shares each make too many "
            f"combinations ({len(grid) ** len(order)}); pass a shorter grid"
        )

    def build(shares: Mapping[str, float]) -> nn.Module:
        keep = level_masks(graph, scores, levels, shares, min_channels=min_channels, round_to=round_to)
        pruned = apply_channel_record_(copy.deepcopy(model), channel_record(graph, keep))
        return pruned.eval()

    probes = [(lvl, s) for lvl in order for s in grid if s < 1.0]
    curves: dict[str, dict[str, dict[str, float | None]]] = {
        lvl: {"1.0": {"damage": 0.0, "latency": 1.0}} for lvl in order
    }
    with progress_bar("channel levels: measuring each level", len(probes), enabled=progress) as advance:
        for lvl, share in probes:
            pruned = build({lvl: share})
            curves[lvl][str(share)] = {
                "damage": float(damage(pruned)),
                "latency": float(latency(pruned)) if max_latency is not None else None,
            }
            advance()
    d_table = torch.tensor([[curves[lvl][str(s)]["damage"] for s in grid] for lvl in order], dtype=torch.float64)
    metric_for_grid = metric or "macs"
    index, totals = grid_costs(graph, scores, cost, levels, order, grid, metric=metric_for_grid,
                               min_channels=min_channels, round_to=round_to)  # fmt: skip
    rows = torch.arange(len(order))
    predicted = d_table[rows, index].sum(1)
    budget = fraction * cost.base.get(metric) * (1 + 1e-12) if metric is not None else math.inf
    ok = totals <= budget
    if max_latency is not None:
        t_table = torch.tensor([[curves[lvl][str(s)]["latency"] for s in grid] for lvl in order], dtype=torch.float64)
        predicted_latency = 1.0 - (1.0 - t_table[rows, index]).sum(1)
        ok &= predicted_latency <= max_latency
    if not bool(ok.any()):
        reason = f"{metric}={fraction:g}" if metric is not None else ""
        if max_latency is not None:
            reason += (" and " if reason else "") + f"latency={max_latency:g} (predicted)"
        raise ValueError(
            f"no per-level channel shares in {list(grid)} reach {reason} on {graph.model_name} "
            f"(levels {', '.join(order)})"
        )
    # only the combinations on the budget's edge: none of their levels can take one more grid step and stay
    # within it (a combination below that edge is dominated: damage falls as shares grow)
    n = len(grid)
    strides = torch.tensor([n ** (len(order) - 1 - lvl) for lvl in range(len(order))])
    flat = (index * strides).sum(1)
    edge = ok.clone()
    for lvl in range(len(order)):
        up = index[:, lvl] < n - 1
        neighbour = torch.where(up, flat + strides[lvl], flat)
        edge &= ~(up & ok[neighbour])
    candidates = torch.nonzero(edge).flatten()
    candidates = candidates[torch.argsort(predicted[candidates], stable=True)]
    verified: list[dict[str, Any]] = []
    met: list[dict[str, Any]] = []

    def measure(shares: Mapping[str, float], spent: float, **extra: Any) -> dict[str, Any]:
        pruned = build(shares)
        entry = {
            "shares": [shares[lvl] for lvl in order],
            "cost_ratio": float(spent / cost.base.get(metric_for_grid)),
            **extra,
            "damage": float(damage(pruned)),
            "latency": float(latency(pruned)) if max_latency is not None else None,
        }
        verified.append(entry)
        return entry

    limit = min(max_builds, candidates.numel())
    with progress_bar("channel levels: checking combinations", limit, enabled=progress) as advance:
        for i in candidates[:limit].tolist():
            shares = {lvl: grid[int(j)] for lvl, j in zip(order, index[i].tolist())}
            entry = measure(shares, float(totals[i]), predicted_damage=float(predicted[i]))
            advance()
            if max_latency is None or entry["latency"] <= max_latency:
                met.append(entry)
                if len(met) >= verify:
                    break
    if not met:
        fastest = min(verified, key=lambda e: e["latency"])
        raise ValueError(
            f"latency={max_latency:g}: none of the {len(verified)} per-level channel allocations built on "
            f"{graph.model_name} measured that fast; the fastest ran at {fastest['latency']:.3f}x dense "
            f"(shares {dict(zip(order, fastest['shares']))})"
        )
    best = min(met, key=lambda e: e["damage"])
    shares = dict(zip(order, best["shares"]))
    step = min(b - a for a, b in zip(grid, grid[1:])) / 2 if len(grid) > 1 else 0.0
    with progress_bar("channel levels: growing the kept one", 2 * len(order), enabled=progress) as advance:
        for _ in range(2):
            for lvl in order:
                advance()
                share = round(shares[lvl] + step, 6)
                if step <= 0 or share > 1.0:
                    continue
                trial = {**shares, lvl: share}
                keep = level_masks(graph, scores, levels, trial, min_channels=min_channels, round_to=round_to)
                now = level_masks(graph, scores, levels, shares, min_channels=min_channels, round_to=round_to)
                if all(torch.equal(keep[g], now[g]) for g in keep):  # no channel more: the same model
                    shares = trial
                    continue
                spent = cost(keep).get(metric_for_grid)
                if spent > budget:
                    continue
                entry = measure(trial, spent, grown=True)
                fast = max_latency is None or entry["latency"] <= max_latency
                if fast and entry["damage"] < best["damage"]:
                    best, shares = entry, trial
    ratios = level_ratios(graph, levels, shares)
    return LevelResult(
        levels=order,
        shares=tuple(best["shares"]),
        ratios=ratios,
        damage=best["damage"],
        latency=best["latency"],
        curves=curves,
        verified=verified,
        seconds=time.perf_counter() - t0,
    )


__all__ = [
    "SHARES",
    "LevelResult",
    "grid_costs",
    "group_levels",
    "level_masks",
    "level_model",
    "level_ratios",
    "level_search",
]
