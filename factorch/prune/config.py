"""``ChannelPruneConfig``: structured pruning of a whole network to a MACs or parameter target."""

from __future__ import annotations

import numbers
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from factorch.auto.config import Target

CHANNEL_CRITERIA = ("l1", "bn-scale", "activation")
ALLOCATIONS = ("auto", "global", "uniform", "levels")
RUNTIMES = ("torch", "onnxruntime")
CHANNEL_PRUNE_VERSION = 1


@dataclass
class ChannelPruneConfig:
    """Remove whole filters / channels / neurons so that layers become physically smaller.

    Channels that must go together (across residual additions, concatenations, depthwise convolutions and
    BatchNorms) are found by tracing the model; they are ranked by ``criterion`` globally and the least
    important are removed until the whole model's ``target`` is met. The final classifier's outputs are never
    removed.

    Args:
        target: ``"macs=F"`` or ``"params=F"``: keep at most fraction ``F`` of the model's MACs / parameters;
            ``"latency=F"``: run in at most ``F`` times the dense model's measured latency, whatever the MACs
            (the same as ``max_latency=F`` without a MACs budget; allocation ``"levels"``).
        criterion: ``"l1"`` (filter L1 norms, Li et al. 2017), ``"bn-scale"`` (|gamma| of the following
            BatchNorm, network slimming, Liu et al. 2017) or ``"activation"`` (mean magnitude of each channel's
            feature map on ``calib_data``, ThiNet-style, Luo et al. 2017).
        round_to: keep channel counts at multiples of this where the layer allows (vector units like 8).
        ignored: module names whose channels are never pruned.
        min_channels: the fewest channels any pruned group keeps.
        allocation: ``"global"``: channels ranked across the whole network (importance normalised by its
            group's mean), so layers lose different shares; ``"uniform"``: every group loses the same share,
            the largest that meets the target (bisection), ranked by ``criterion`` within each group;
            ``"auto"`` (default): both built (and refitted, with ``calibrate=``), the one whose outputs stay
            closest to the unpruned model's on the calibration inputs kept (KL divergence of the softmax
            outputs; neither wins everywhere: on our vgg uniform does, on resnet20 global); ``"global"`` when
            no ``calib_data`` is given. ``"levels"``: one kept share per feature-map size, the combination
            least damaged on the calibration inputs among those within the target (and ``max_latency``),
            measured (see :mod:`factorch.prune.levels`); needs ``calib_data``. With ``max_latency``, ``"auto"``
            builds all three and keeps the least damaged of those measured within the bound.
        max_latency: also run in at most this fraction of the dense model's latency, measured on ``runtime`` at
            ``batch_size`` on this machine (paired, alternating calls). Small convs' time follows channels and
            map sizes more than MACs, so where channels go decides the speed at a given MACs.
        runtime: ``"torch"`` (eager) or ``"onnxruntime"``: where ``max_latency`` is measured.
        batch_size: the batch size ``max_latency`` is measured at.
    """

    target: str = "macs=0.5"
    _: KW_ONLY
    criterion: str = "l1"
    round_to: int = 1
    ignored: tuple[str, ...] = field(default=())
    min_channels: int = 1
    allocation: str = "auto"
    max_latency: float | None = None
    runtime: str = "torch"
    batch_size: int = 64

    def __post_init__(self) -> None:
        goal = Target.parse(self.target)
        if goal.kind not in ("macs", "params", "latency") or goal.fraction is None:
            raise ValueError(
                f"ChannelPruneConfig(target=...) must be 'macs=F', 'params=F' or 'latency=F', got {self.target!r}"
            )
        if self.criterion not in CHANNEL_CRITERIA:
            raise ValueError(
                f"ChannelPruneConfig(criterion=...) must be one of {', '.join(CHANNEL_CRITERIA)}, "
                f"got {self.criterion!r}"
            )
        if self.allocation not in ALLOCATIONS:
            raise ValueError(
                f"ChannelPruneConfig(allocation=...) must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}"
            )
        for name in ("round_to", "min_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"ChannelPruneConfig({name}=...) must be an int >= 1, got {value!r}")
        if self.max_latency is not None:
            if isinstance(self.max_latency, bool) or not isinstance(self.max_latency, numbers.Real):
                raise ValueError(
                    f"ChannelPruneConfig(max_latency=...) must be a fraction in (0, 1], got {self.max_latency!r}"
                )
            if not 0 < self.max_latency <= 1:
                raise ValueError(
                    f"ChannelPruneConfig(max_latency=...) must be a fraction in (0, 1], got {self.max_latency!r}"
                )
            self.max_latency = float(self.max_latency)
        if self.runtime not in RUNTIMES:
            raise ValueError(
                f"ChannelPruneConfig(runtime=...) must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}"
            )
        if (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, numbers.Integral)
            or self.batch_size < 1
        ):
            raise ValueError(f"ChannelPruneConfig(batch_size=...) must be an int >= 1, got {self.batch_size!r}")
        if self.latency_bound is not None and self.allocation in ("global", "uniform"):
            raise ValueError(
                f"ChannelPruneConfig(allocation={self.allocation!r}) cannot meet a latency bound "
                f"(target={self.target!r}, max_latency={self.max_latency!r}); use allocation='levels' or 'auto'"
            )
        if isinstance(self.ignored, str):
            self.ignored = (self.ignored,)
        self.ignored = tuple(self.ignored)

    @property
    def parsed_target(self) -> Target:
        return Target.parse(self.target)

    @property
    def latency_bound(self) -> float | None:
        """The latency fraction to meet: ``max_latency``, or the target's with ``target="latency=F"`` (the
        lower of the two when both are given)."""
        goal = self.parsed_target
        bounds = [b for b in (self.max_latency, goal.fraction if goal.kind == "latency" else None) if b is not None]
        return min(bounds) if bounds else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "ChannelPruneConfig",
            "version": CHANNEL_PRUNE_VERSION,
            "target": self.target,
            "criterion": self.criterion,
            "round_to": self.round_to,
            "ignored": list(self.ignored),
            "min_channels": self.min_channels,
            "allocation": self.allocation,
            "max_latency": self.max_latency,
            "runtime": self.runtime,
            "batch_size": self.batch_size,
        }
