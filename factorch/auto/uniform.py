"""The baseline an AutoConfig must beat: one method, the same per-layer ratio everywhere, same whole-model target."""

from __future__ import annotations

from torch import Tensor, nn

from factorch.auto.config import Target
from factorch.config import MethodConfig, config_for_method
from factorch.rank import MACRatioRank, ParamRatioRank
from factorch.rank.bisect import largest_feasible
from factorch.report import CompressionReport


def uniform_compress(
    model: nn.Module,
    method: str,
    target: str,
    *,
    example_inputs: Tensor | tuple,
    steps: int = 12,
    **options,
) -> tuple[nn.Module, CompressionReport, MethodConfig]:
    """Compress every layer with ``method`` at one per-layer cost ratio, the largest whose whole-model
    ``macs`` or ``params`` ratio is at most the target's fraction (bisection over the ratio).

    Returns:
        ``(model, report, config)`` of the largest feasible uniform ratio.

    Raises:
        ValueError: a latency or fraction-less target, or no uniform ratio meets the target.
    """
    from factorch.apply import apply_plan

    goal = Target.parse(target)
    if goal.kind == "latency" or goal.fraction is None:
        raise ValueError(f"uniform_compress takes a 'macs=F' or 'params=F' target, got {target!r}")
    selector = ParamRatioRank if goal.kind == "params" else MACRatioRank

    def build(ratio: float) -> tuple[nn.Module, CompressionReport, MethodConfig]:
        cfg = config_for_method(method, rank=selector(ratio), **options)
        return (*apply_plan(model, cfg, example_inputs=example_inputs), cfg)

    found = largest_feasible(build, lambda b: b[1].totals[f"{goal.kind}_ratio"] <= goal.fraction, steps=steps)
    best = found[1] if found else None
    if best is None:
        raise ValueError(f"no uniform {method} ratio reaches {target} (the dense layers left over cost more)")
    return best
