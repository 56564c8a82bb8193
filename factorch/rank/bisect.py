"""``largest_feasible``: the one bisection over a uniform ratio that factorch uses (uniform baselines, staged
compression, AutoConfig's uniform proposal, structured-pruning ratios)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def largest_feasible(
    build: Callable[[float], T], fits: Callable[[T], bool], *, lo: float = 0.0, hi: float = 1.0, steps: int = 12
) -> tuple[float, T] | None:
    """The largest ``r`` in ``[lo, hi]`` found by ``steps`` halvings with ``fits(build(r))``, and ``build(r)``.

    ``fits`` must be monotone (true below some ratio, false above it). ``None`` when no tried ratio fits.
    """
    if steps < 1:
        raise ValueError(f"largest_feasible: steps must be >= 1, got {steps}")
    best: tuple[float, T] | None = None
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        built = build(mid)
        if fits(built):
            lo, best = mid, (mid, built)
        else:
            hi = mid
    return best
