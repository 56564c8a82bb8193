"""``ChannelPruneConfig``: structured pruning of a whole network to a MACs or parameter target."""

from __future__ import annotations

import numbers
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from factorch.auto.config import Target

CHANNEL_CRITERIA = ("l1", "bn-scale", "activation")
ALLOCATIONS = ("auto", "global", "uniform")
CHANNEL_PRUNE_VERSION = 1


@dataclass
class ChannelPruneConfig:
    """Remove whole filters / channels / neurons so that layers become physically smaller.

    Channels that must go together (across residual additions, concatenations, depthwise convolutions and
    BatchNorms) are found by tracing the model; they are ranked by ``criterion`` globally and the least
    important are removed until the whole model's ``target`` is met. The final classifier's outputs are never
    removed.

    Args:
        target: ``"macs=F"`` or ``"params=F"``: keep at most fraction ``F`` of the model's MACs / parameters.
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
            no ``calib_data`` is given.
    """

    target: str = "macs=0.5"
    _: KW_ONLY
    criterion: str = "l1"
    round_to: int = 1
    ignored: tuple[str, ...] = field(default=())
    min_channels: int = 1
    allocation: str = "auto"

    def __post_init__(self) -> None:
        goal = Target.parse(self.target)
        if goal.kind not in ("macs", "params") or goal.fraction is None:
            raise ValueError(f"ChannelPruneConfig(target=...) must be 'macs=F' or 'params=F', got {self.target!r}")
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
        if isinstance(self.ignored, str):
            self.ignored = (self.ignored,)
        self.ignored = tuple(self.ignored)

    @property
    def parsed_target(self) -> Target:
        return Target.parse(self.target)

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
        }
