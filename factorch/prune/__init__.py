"""Pruning: unstructured weight masks (:class:`~factorch.PruneConfig`, :class:`~factorch.layers.PrunedLayer`)
and structured removal of channels / filters / neurons (:class:`ChannelPruneConfig`, :func:`prune_channels`)."""

from factorch.prune.channels import ChannelPruneResult as ChannelPruneResult
from factorch.prune.channels import apply_channel_record_ as apply_channel_record_
from factorch.prune.channels import prune_channels as prune_channels
from factorch.prune.config import ChannelPruneConfig as ChannelPruneConfig
from factorch.prune.graph import ChannelMapShortcut as ChannelMapShortcut
from factorch.prune.graph import ChannelTraceError as ChannelTraceError
from factorch.prune.graph import analyze_channels as analyze_channels
from factorch.prune.sensitivity import SensitivityCurves as SensitivityCurves
from factorch.prune.sensitivity import prune_sensitivity as prune_sensitivity

__all__ = [
    "ChannelMapShortcut",
    "ChannelPruneConfig",
    "ChannelPruneResult",
    "ChannelTraceError",
    "SensitivityCurves",
    "analyze_channels",
    "apply_channel_record_",
    "prune_channels",
    "prune_sensitivity",
]
