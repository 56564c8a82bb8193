"""Rank selectors: callables that turn a layer's :class:`RankProblem` into ranks (one per mode).

A rank may be given as an int or per-mode tuple, a fraction of full rank in (0, 1], a string
(``"vbmf"``, ``"energy:0.95"``, ``"params:0.25"``, ``"macs:0.33"``), or a selector object.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import Tensor

from factorch.rank.vbmf import evbmf_rank


class Spectrum(NamedTuple):
    """Singular values of one matrix (an unfolding of one group's kernel) and the matrix shape."""

    values: Tensor
    shape: tuple[int, int]


@dataclass
class RankProblem:
    """What a selector needs to know about one layer.

    Attributes:
        method: decomposition method (``"svd"``, ``"tucker2"``, ...).
        max_ranks: the largest meaningful rank of each mode (full rank: exact reconstruction).
        spectra: per mode, the :class:`Spectrum` of every matrix whose rank that mode is (one per group,
            or several unfoldings): selectors take the largest rank any of them asks for.
        cost: ``ranks -> (params, macs)`` of the factorized layer.
        dense_cost: ``(params, macs)`` of the dense layer.
    """

    method: str
    max_ranks: tuple[int, ...]
    spectra: tuple[tuple[Spectrum, ...], ...] = ()
    cost: Callable[[tuple[int, ...]], tuple[int, int]] | None = None
    dense_cost: tuple[int, int] = (0, 0)
    name: str = ""


class RankSelector:
    """Base class: ``selector(problem) -> tuple of ranks``."""

    def __call__(self, problem: RankProblem) -> tuple[int, ...]:  # pragma: no cover - interface
        raise NotImplementedError

    def to_json(self) -> str:
        raise NotImplementedError


@dataclass
class FixedRank(RankSelector):
    """An int (same rank for every mode) or one int per mode."""

    rank: int | tuple[int, ...]

    def __call__(self, problem: RankProblem) -> tuple[int, ...]:
        n = len(problem.max_ranks)
        ranks = (self.rank,) * n if isinstance(self.rank, int) else tuple(self.rank)
        if len(ranks) != n:
            raise ValueError(f"{problem.name}: {problem.method} takes {n} rank(s), got {self.rank!r}")
        for r, m in zip(ranks, problem.max_ranks):
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise ValueError(f"{problem.name}: rank must be a positive integer, got {r!r}")
            if r > m:
                raise ValueError(
                    f"{problem.name}: rank {r} is above the maximum {m} of {problem.method} for this "
                    f"layer (max ranks {problem.max_ranks})"
                )
        return ranks

    def to_json(self) -> object:
        return self.rank


@dataclass
class FractionRank(RankSelector):
    """A fraction ``f`` in (0, 1] of each mode's full rank (rounded up, at least 1)."""

    fraction: float

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"a fractional rank must be in (0, 1], got {self.fraction}")

    def __call__(self, problem: RankProblem) -> tuple[int, ...]:
        return tuple(max(1, min(m, math.ceil(self.fraction * m - 1e-9))) for m in problem.max_ranks)

    def to_json(self) -> object:
        return self.fraction


@dataclass
class EnergyRank(RankSelector):
    """Smallest rank keeping a fraction ``keep`` of the squared singular values of each mode's unfolding
    (the largest over groups)."""

    keep: float = 0.95

    def __post_init__(self) -> None:
        if not 0 < self.keep <= 1:
            raise ValueError(f"EnergyRank(keep=...) must be in (0, 1], got {self.keep}")

    def __call__(self, problem: RankProblem) -> tuple[int, ...]:
        ranks = []
        for spectra, m in zip(problem.spectra, problem.max_ranks):
            r = 1
            for s, _ in spectra:
                e = (s.double() ** 2).cumsum(0)
                if float(e[-1]) > 0:
                    r = max(r, int((e < self.keep * e[-1] * (1 - 1e-12)).sum()) + 1)
            ranks.append(min(r, m))
        return tuple(ranks)

    def to_json(self) -> object:
        return f"energy:{self.keep}"


@dataclass
class VBMFRank(RankSelector):
    """Analytic empirical VBMF on each mode's unfolding (Kim et al. 2016); ``weaken`` in [0, 1) moves the
    rank toward full rank (the "weakened" VBMF of Gusak et al. 2019)."""

    weaken: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.weaken < 1:
            raise ValueError(f"VBMFRank(weaken=...) must be in [0, 1), got {self.weaken}")

    def __call__(self, problem: RankProblem) -> tuple[int, ...]:
        ranks = []
        for spectra, m in zip(problem.spectra, problem.max_ranks):
            r = max(max(evbmf_rank(s, shape) for s, shape in spectra), 1)
            r = r + math.floor(self.weaken * (m - r))
            ranks.append(min(r, m))
        return tuple(ranks)

    def to_json(self) -> object:
        return "vbmf" if not self.weaken else f"vbmf:{self.weaken}"


@dataclass
class _CostRatioRank(RankSelector):
    ratio: float
    _index: int = field(default=0, init=False, repr=False)
    _label: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"{type(self).__name__}(ratio) must be in (0, 1], got {self.ratio}")

    def __call__(self, problem: RankProblem) -> tuple[int, ...]:
        """Largest uniform fraction of full rank whose cost is at most ``ratio`` of the dense layer's."""
        if problem.cost is None:
            raise ValueError(f"{problem.name}: {type(self).__name__} needs the layer's cost model")
        budget = self.ratio * problem.dense_cost[self._index]
        top = max(problem.max_ranks)
        ranks_at = lambda k: tuple(max(1, min(m, math.ceil(k * m / top))) for m in problem.max_ranks)  # noqa: E731
        lo, hi = 1, top  # find the largest k with cost(ranks_at(k)) <= budget
        if problem.cost(ranks_at(1))[self._index] > budget:
            return ranks_at(1)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if problem.cost(ranks_at(mid))[self._index] <= budget:
                lo = mid
            else:
                hi = mid - 1
        return ranks_at(lo)


@dataclass
class ParamRatioRank(_CostRatioRank):
    """Ranks whose factorized layer keeps at most ``ratio`` of the dense layer's parameters."""

    def to_json(self) -> object:
        return f"params:{self.ratio}"


@dataclass
class MACRatioRank(_CostRatioRank):
    """Ranks whose factorized layer keeps at most ``ratio`` of the dense layer's MACs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._index = 1

    def to_json(self) -> object:
        return f"macs:{self.ratio}"


RankLike = int | float | str | Sequence[int] | RankSelector


def as_selector(rank: RankLike) -> RankSelector:
    """Turn any accepted rank form into a selector; ``ValueError`` names what is allowed."""
    if isinstance(rank, RankSelector):
        return rank
    if isinstance(rank, bool):
        raise TypeError(f"rank must not be a bool, got {rank!r}")
    if isinstance(rank, int):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        return FixedRank(rank)
    if isinstance(rank, float):
        return FractionRank(rank)
    if isinstance(rank, str):
        text = rank.strip().lower()
        head, _, arg = text.partition(":")
        try:
            if head == "vbmf":
                return VBMFRank(float(arg) if arg else 0.0)
            if head == "energy":
                return EnergyRank(float(arg) if arg else 0.95)
            if head == "params":
                return ParamRatioRank(float(arg))
            if head == "macs":
                return MACRatioRank(float(arg))
            if text.isdigit():
                return as_selector(int(text))
            return FractionRank(float(text))
        except ValueError as err:
            if "must" in str(err):
                raise
        raise ValueError(
            f"cannot read rank {rank!r}: use an int, a fraction in (0, 1], 'vbmf', 'energy:0.95', "
            "'params:0.25' or 'macs:0.33'"
        )
    if isinstance(rank, (tuple, list)):
        if not rank or not all(isinstance(r, int) and not isinstance(r, bool) for r in rank):
            raise ValueError(f"a per-mode rank must be a non-empty tuple of ints, got {rank!r}")
        if min(rank) < 1:
            raise ValueError(f"every rank must be >= 1, got {tuple(rank)}")
        return FixedRank(tuple(rank))
    raise TypeError(f"rank must be an int, tuple, float, string or RankSelector, got {type(rank).__name__}")
