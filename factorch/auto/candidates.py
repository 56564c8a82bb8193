"""Candidates of the search: one per (layer, method, option), with its cost in every budget unit (their damages
live in :class:`~factorch.auto.scoring.ScoreTable`); the probe layers built for scoring, kept once per process."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from factorch.cost import Cost

_BUILT_BYTES = 1 << 30  # probe layers kept across analyses in one process (a sweep, plain then calibrated)
_built_cache: OrderedDict[str, nn.Module] = OrderedDict()


def _module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _remember(key: str, module: nn.Module) -> None:
    """Keep ``module`` under ``key``, least recently used ones dropped beyond ``_BUILT_BYTES``."""
    _built_cache[key] = module
    _built_cache.move_to_end(key)
    total = sum(_module_bytes(m) for m in _built_cache.values())
    while total > _BUILT_BYTES and len(_built_cache) > 1:
        _, dropped = _built_cache.popitem(last=False)
        total -= _module_bytes(dropped)


@dataclass(frozen=True)
class Candidate:
    method: str
    ranks: tuple[int, ...]
    params: int
    macs: int
    measured: bool = True  # False: a rank between two scored neighbours, its damage interpolated
    latency_s: float | None = None
    size: int = 0  # bytes stored compactly (Cost.size_bytes)
    score: float = 0.0  # share of the complexity score under the search's rules (score= targets)

    @property
    def key(self) -> str:
        return f"{self.method}|{'x'.join(map(str, self.ranks))}"


@dataclass
class LayerChoices:
    name: str
    layer: nn.Module
    input_shape: tuple[int, ...]
    input_size: tuple[int, ...] | None
    per_position: int
    dense_params: int
    dense_macs: int
    dense_size: int = 0
    dense_score: float = 0.0
    candidates: list[Candidate] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    dense_latency_s: float | None = None


def _round_ranks(ranks: tuple[int, ...], max_ranks: tuple[int, ...], step: int) -> tuple[int, ...]:
    if step == 1:
        return ranks
    return tuple(
        m if m <= step else max(step, min((r // step) * step, (m // step) * step)) for r, m in zip(ranks, max_ranks)
    )


def _cost(kind: str, c: Candidate) -> float:
    """A candidate's cost in a budget's units (``params`` counts non-zero parameters)."""
    return float({"latency": c.latency_s, "params": c.params, "size": c.size, "score": c.score}.get(kind, c.macs))


def _dense_cost(kind: str, lc: LayerChoices) -> float:
    return float(
        {"latency": lc.dense_latency_s, "params": lc.dense_params, "size": lc.dense_size, "score": lc.dense_score}.get(
            kind, lc.dense_macs
        )
    )


def _cheaper(kind: str, cost: Cost, lc: LayerChoices, score: float = 0.0) -> bool:
    """A candidate worth offering: cheaper than the dense layer in the budget's units, dearer in none.

    Under a latency budget, MACs stand in until the candidates are timed; under a score budget, ``score`` is
    the candidate's share (fewer bits can pay for more MACs, and the reverse).
    """
    if kind == "score":
        return score < lc.dense_score
    unit = "macs" if kind == "latency" else kind
    dense = {"macs": lc.dense_macs, "params": lc.dense_params, "size": lc.dense_size}
    return cost.of(unit) < dense[unit] and cost.macs <= lc.dense_macs and cost.nonzero_params <= lc.dense_params


def _random_like(module: nn.Module) -> nn.Module:
    """``module`` with finite random weights (timing must not see uninitialised memory or denormals)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    return module.eval()
