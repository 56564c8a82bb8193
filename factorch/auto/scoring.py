"""Score tables: what the budget solvers read. Per layer, the options on offer (the scored candidates and the
ranks interpolated between them) and each one's damage.

A table is made whole by :func:`settle` from measured scores and never changes afterwards: the in-context
re-scoring of a refinement round makes a new table beside the single-layer one, so no solver's answer depends
on which other solver ran before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from factorch.auto.candidates import Candidate


@dataclass(frozen=True)
class ScoreTable:
    options: Mapping[str, tuple[Candidate, ...]]  # layer name -> its options, dense excluded
    damages: Mapping[tuple[str, str], float]  # (layer name, candidate key) -> damage

    @classmethod
    def of(cls, options: Mapping[str, Iterable[Candidate]], damages: Mapping[tuple[str, str], float]) -> ScoreTable:
        """A read-only table (copies of ``options`` and ``damages``); every option must have a damage."""
        opts = {name: tuple(cands) for name, cands in options.items()}
        missing = [(n, c.key) for n, cands in opts.items() for c in cands if (n, c.key) not in damages]
        if missing:
            raise ValueError(f"score table: no damage for {missing[:3]}")
        return cls(MappingProxyType(opts), MappingProxyType(dict(damages)))

    def damage(self, layer: str, c: Candidate | None) -> float:
        """The damage of ``c`` at ``layer`` (0 for the dense layer, ``None``)."""
        return 0.0 if c is None else self.damages[(layer, c.key)]

    def total(self, choice: Mapping[str, Candidate | None]) -> float:
        """The predicted damage of a whole choice: the sum of its layers' damages."""
        return sum(self.damage(name, c) for name, c in choice.items())


def monotone(candidates: Iterable[Candidate], raw: Callable[[Candidate], float]) -> dict[str, float]:
    """Per method, each candidate's damage as the least raw score of it and every cheaper candidate (by MACs,
    then parameters): more rank never hurts in expectation, so a score above that of a smaller rank is noise.
    Returns ``{candidate key: damage}``."""
    out: dict[str, float] = {}
    by_method: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_method.setdefault(c.method, []).append(c)
    for cands in by_method.values():
        lowest = math.inf
        for c in sorted(cands, key=lambda c: (c.macs, c.params)):
            lowest = min(lowest, raw(c))
            out[c.key] = lowest
    return out
