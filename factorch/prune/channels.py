"""Structured pruning: remove whole channels / filters / neurons so that layers become physically smaller.

The steps, each a function:

1. :func:`~factorch.prune.graph.analyze_channels` finds the channel groups (slices removed together).
2. :func:`channel_importance` scores every channel of every prunable group with a criterion
   (``"l1"``, ``"bn-scale"``, ``"activation"``, or a callable), and :func:`normalize_importance` divides by
   the group's mean so that groups can be ranked together.
3. :func:`select_channels` chooses the channels to keep: either to a budget (``target="macs=0.5"``: a
   global threshold on the normalised importance, found by bisection on the estimated cost, so that the
   cost is at most the target fraction of the original model's and as close to it as one channel allows),
   or by an explicit fraction of channels to remove (``ratio=0.3`` or ``{"layer": 0.3, ...}``). Every group
   keeps at least ``min_channels`` (and at least 1), rounded up to a multiple of ``round_to``.
4. :func:`channel_record` writes the kept indices as JSON: ``{"layers": {name: {"out": [...], "in":
   [...]}}, "shortcuts": {name: ChannelMapShortcut arguments}}``.
5. :func:`apply_channel_record_` rebuilds that smaller structure on a model by replacing every listed
   conv / BatchNorm / Linear with an ordinary, smaller module holding the kept slices of its weights, and
   every listed option-A shortcut with a :class:`~factorch.prune.graph.ChannelMapShortcut`. The pruned
   model is the original with the record applied; a saved model loads back by applying the record to a
   fresh dense model and then ``load_state_dict`` (no pickling).

:func:`prune_channels` runs the five steps. Torch-Pruning is not used: its dependency graph mishandles the
zero-padding (option-A) shortcuts of factorch's ResNets and it saves by pickling whole models, where
factorch needs a JSON record (see :mod:`factorch.prune.graph`).

References: Li et al. 2017 (L1-norm filter pruning), Liu et al. 2017 (network slimming: BatchNorm scales),
Luo et al. 2017 (ThiNet: pruning by activations), Fang et al. 2023 (DepGraph: dependency groups).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from factorch.models.resnet import PadShortcut
from factorch.profiling import ProfileReport, profile
from factorch.prune.graph import (
    BATCHNORMS,
    CONVS,
    ChannelGraph,
    ChannelGroup,
    ChannelMapShortcut,
    LayerGeometry,
    analyze_channels,
    as_inputs,
)
from factorch.surgery import get_module, replace_module

RECORD_FORMAT = "factorch.prune.channels"
RECORD_VERSION = 1
METRICS = ("macs", "params")

Importance = Callable[[nn.Module, ChannelGraph, list[tuple[Tensor, ...]]], dict[str, Tensor]]
KeepMasks = dict[str, Tensor]


# importance ------------------------------------------------------------------------------------------------


def _weighted_layers(model: nn.Module, graph: ChannelGraph, kinds: tuple[str, ...]) -> dict[str, nn.Module]:
    return {name: model.get_submodule(name) for name, geo in graph.layers.items() if geo.kind in kinds}


def _sum_over_slices(group: ChannelGroup, role: str, per_layer: Mapping[str, Tensor]) -> Tensor:
    """Per channel of ``group``: the sum of ``per_layer[module][index]`` over its ``role`` slices."""
    scores = torch.zeros(group.size, dtype=torch.float64)
    for i, channel in enumerate(group.channels):
        values = [per_layer[s.module][s.index] for s in channel if s.role == role and s.module in per_layer]
        scores[i] = float(sum(values)) if values else 0.0
    return scores


def l1_importance(model: nn.Module, graph: ChannelGraph, batches: list[tuple[Tensor, ...]]) -> dict[str, Tensor]:
    """L1 norm of each output filter / neuron, summed over the producers of the channel (Li et al. 2017).

    Producers are the convs (depthwise included) and Linear layers whose output channel is the channel;
    BatchNorm and consumers do not count. A channel without a producer scores 0.
    """
    layers = _weighted_layers(model, graph, ("conv", "depthwise", "linear"))
    norms = {n: m.weight.detach().abs().flatten(1).sum(1).double().cpu() for n, m in layers.items()}
    return {g.name: _sum_over_slices(g, "out", norms) for g in graph.prunable_groups}


def bn_scale_importance(model: nn.Module, graph: ChannelGraph, batches: list[tuple[Tensor, ...]]) -> dict[str, Tensor]:
    """``|gamma|`` of the BatchNorm layers of the channel, summed (network slimming, Liu et al. 2017).

    A group without an affine BatchNorm (e.g. the hidden neurons of an MLP head) is scored by
    :func:`l1_importance` instead.
    """
    bns = {n: m for n, m in _weighted_layers(model, graph, ("bn",)).items() if m.affine}
    gammas = {n: m.weight.detach().abs().double().cpu() for n, m in bns.items()}
    fallback = l1_importance(model, graph, batches)
    scores = {}
    for g in graph.prunable_groups:
        has_bn = any(module in gammas for module, role in g.layers if role == "out")
        scores[g.name] = _sum_over_slices(g, "out", gammas) if has_bn else fallback[g.name]
    return scores


def _feature_magnitude(x: Tensor) -> Tensor:
    """Mean ``|x|`` of each channel (dim 1) over the batch and spatial positions."""
    return x.detach().abs().transpose(0, 1).reshape(x.shape[1], -1).double().mean(1).cpu()


def activation_importance(
    model: nn.Module, graph: ChannelGraph, batches: list[tuple[Tensor, ...]]
) -> dict[str, Tensor]:
    """Mean magnitude of each channel's feature map as read by the layers consuming it (ThiNet-style).

    Forward pre-hooks on every consumer (conv, Linear, channel map) record the mean ``|x|`` of each input
    channel / feature over ``batches``; a channel scores the sum over its consumers (a channel feeding a
    Linear after a flatten sums its ``H*W`` features). A group without consumers is scored by
    :func:`l1_importance`. The model runs in eval mode under ``torch.no_grad()``; its training flags are
    restored. References: Luo et al. 2017 (ThiNet).
    """
    consumers = {s.module for g in graph.prunable_groups for c in g.channels for s in c if s.role == "in"}
    sums: dict[str, Tensor] = {}

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: tuple) -> None:
            stat = _feature_magnitude(args[0])
            sums[name] = sums[name] + stat if name in sums else stat

        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in consumers]
    run_hooked(model, handles, batches)
    fallback = l1_importance(model, graph, batches)
    scores = {}
    for g in graph.prunable_groups:
        read = any(role == "in" and module in sums for module, role in g.layers)
        scores[g.name] = _sum_over_slices(g, "in", sums) / len(batches) if read else fallback[g.name]
    return scores


def run_hooked(model: nn.Module, handles: list, batches: Iterable[tuple[Tensor, ...]]) -> None:
    """Run ``model`` on ``batches`` in eval mode without gradients, then remove the hook ``handles`` and restore
    every module's training flag."""
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                model(*batch)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag


CRITERIA: dict[str, Importance] = {
    "l1": l1_importance,
    "bn-scale": bn_scale_importance,
    "activation": activation_importance,
}


def calibration_batches(
    calib_data: Tensor | Iterable[Any] | None, example_inputs: tuple[Tensor, ...]
) -> list[tuple[Tensor, ...]]:
    """The input tuples to run for data-driven criteria.

    Args:
        calib_data: ``None`` (use ``example_inputs``), one input tensor, or an iterable of batches, each a
            tensor or an ``(inputs, targets)`` pair as a data loader yields (its first element is used).
        example_inputs: the inputs of the analysis.

    Raises:
        TypeError: a batch that is neither a tensor nor a sequence starting with one.
        ValueError: an empty iterable.
    """
    if calib_data is None:
        return [example_inputs]
    if isinstance(calib_data, Tensor):
        return [(calib_data,)]
    batches = []
    for i, batch in enumerate(calib_data):
        if isinstance(batch, Tensor):
            batches.append((batch,))
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            batches.append((batch[0],))
        else:
            raise TypeError(f"calib_data batch {i} must be a tensor or an (inputs, targets) pair, got {type(batch)}")
    if not batches:
        raise ValueError("calib_data holds no batch")
    return batches


def channel_importance(
    model: nn.Module,
    graph: ChannelGraph,
    criterion: str | Importance = "l1",
    batches: list[tuple[Tensor, ...]] | None = None,
) -> dict[str, Tensor]:
    """Raw importance of every channel of every prunable group (float64, by group name).

    Args:
        model: the analyzed model (not modified).
        graph: its channel groups from :func:`~factorch.prune.graph.analyze_channels`.
        criterion: ``"l1"``, ``"bn-scale"``, ``"activation"`` (see :data:`CRITERIA`), or a callable
            ``(model, graph, batches) -> {group name: scores}``.
        batches: input tuples for data-driven criteria (needed by ``"activation"``).

    Raises:
        ValueError: an unknown criterion, no batches for ``"activation"``, or a callable that returns
            scores of the wrong shape.
    """
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ValueError(f"unknown pruning criterion {criterion!r}; choose one of {sorted(CRITERIA)}")
        if criterion == "activation" and not batches:
            raise ValueError("criterion 'activation' needs calibration batches")
        criterion = CRITERIA[criterion]
    scores = criterion(model, graph, batches or [])
    for g in graph.prunable_groups:
        s = scores.get(g.name)
        if not isinstance(s, Tensor) or s.shape != (g.size,):
            raise ValueError(f"importance of group {g.name!r} must be a tensor of shape ({g.size},), got {s!r}")
    return {name: s.double() for name, s in scores.items()}


def normalize_importance(scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Each group's scores divided by their mean (a group of all-zero scores stays zero)."""
    out = {}
    for name, s in scores.items():
        mean = s.mean()
        out[name] = s / mean if mean > 0 else torch.zeros_like(s)
    return out


# cost ------------------------------------------------------------------------------------------------------


class PruneCost(NamedTuple):
    """MACs and parameters of one forward pass."""

    macs: int
    params: int

    def get(self, metric: str) -> int:
        """``macs`` or ``params``."""
        return self.macs if metric == "macs" else self.params


def layer_cost(geo: LayerGeometry, out_kept: int, in_kept: int) -> PruneCost:
    """MACs and parameters of a layer of geometry ``geo`` with ``out_kept`` / ``in_kept`` channels."""
    bias = out_kept if geo.bias else 0
    if geo.kind in ("conv", "linear"):
        return PruneCost(geo.macs_unit * out_kept * in_kept, geo.params_unit * out_kept * in_kept + bias)
    return PruneCost(geo.macs_unit * out_kept, geo.params_unit * out_kept + bias)


@dataclass(frozen=True)
class CostModel:
    """Estimated cost of the model for given keep masks: the profiled total, minus what the sliced layers
    cost in full, plus what they cost with the kept channels (exact for conv, Linear and BatchNorm)."""

    graph: ChannelGraph
    base: PruneCost
    incidence: dict[str, tuple[list[tuple[str, str]], Tensor]] = field(default_factory=dict)

    @classmethod
    def build(cls, graph: ChannelGraph, report: ProfileReport) -> CostModel:
        """The cost model of ``graph`` for the model profiled in ``report``."""
        incidence = {}
        for g in graph.groups:
            roles = list(g.layers)
            where = {r: i for i, r in enumerate(roles)}
            counts = torch.zeros(len(roles), g.size, dtype=torch.float64)
            for j, channel in enumerate(g.channels):
                for s in channel:
                    counts[where[(s.module, s.role)], j] += 1
            incidence[g.name] = (roles, counts)
        return cls(graph, PruneCost(report.total_macs, report.total_params), incidence)

    def kept_counts(self, keep: Mapping[str, Tensor]) -> dict[tuple[str, str], int]:
        """Number of kept slices of every (module, role)."""
        counts: dict[tuple[str, str], int] = {}
        for g in self.graph.groups:
            roles, matrix = self.incidence[g.name]
            mask = keep.get(g.name)
            kept = matrix.sum(1) if mask is None else matrix @ mask.double()
            for role, n in zip(roles, kept.round().long().tolist()):
                counts[role] = counts.get(role, 0) + n
        return counts

    def __call__(self, keep: Mapping[str, Tensor]) -> PruneCost:
        counts = self.kept_counts(keep)
        macs, params = self.base
        for name, geo in self.graph.layers.items():
            full = layer_cost(geo, geo.out_size, geo.in_size)
            out_k = counts.get((name, "out"), geo.out_size)
            in_k = counts.get((name, "in"), geo.in_size)
            now = layer_cost(geo, out_k, in_k)
            macs, params = macs - full.macs + now.macs, params - full.params + now.params
        return PruneCost(macs, params)


# selection -------------------------------------------------------------------------------------------------


def parse_target(target: str) -> tuple[str, float]:
    """``"macs=0.5"`` -> ``("macs", 0.5)``: the metric and the fraction of the original model to keep.

    Raises:
        ValueError: not ``"<macs|params>=<fraction in (0, 1]>"``.
    """
    metric, sep, value = str(target).partition("=")
    try:
        fraction = float(value)
    except ValueError:
        fraction = math.nan
    if not sep or metric.strip() not in METRICS or not 0 < fraction <= 1:
        raise ValueError(f"target must look like 'macs=0.5' or 'params=0.5' (fraction in (0, 1]), got {target!r}")
    return metric.strip(), fraction


def _kept_count(n: int, wanted: int, min_channels: int, round_to: int) -> int:
    k = max(wanted, min(n, max(1, min_channels)))
    return min(n, math.ceil(k / round_to) * round_to)


def _top(scores: Tensor, k: int) -> Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(scores, descending=True, stable=True)[:k]] = True
    return mask


def _keep_counts(
    graph: ChannelGraph, scores: Mapping[str, Tensor], removed: Mapping[str, int], min_channels: int, round_to: int
) -> KeepMasks:
    """Per group, the ``size - removed`` most important channels (within the group's minimum and rounding)."""
    keep = {}
    for g in graph.prunable_groups:
        wanted = g.size - removed.get(g.name, 0)
        keep[g.name] = _top(scores[g.name], _kept_count(g.size, wanted, min_channels, round_to))
    return keep


def global_order(graph: ChannelGraph, scores: Mapping[str, Tensor]) -> list[str]:
    """The group of every prunable channel, from the least to the most important channel overall.

    Channels are ranked by score; ties (e.g. identical BatchNorm scales at initialisation) are broken by
    the channel's relative rank inside its group, so equally scored groups are pruned in proportion.
    """
    entries = []
    for g in graph.prunable_groups:
        ranked = torch.sort(scores[g.name], stable=True).values.tolist()
        entries += [(value, (pos + 0.5) / g.size, g.name) for pos, value in enumerate(ranked)]
    entries.sort(key=lambda e: e[:2])
    return [name for _, _, name in entries]


def select_to_target(
    graph: ChannelGraph,
    scores: Mapping[str, Tensor],
    cost: CostModel,
    target: str,
    *,
    min_channels: int = 1,
    round_to: int = 1,
    max_refill: int = 256,
) -> KeepMasks:
    """Keep masks whose estimated cost is at most the target and as close to it as the channels allow.

    All channels of all prunable groups are ranked by (normalised) importance (:func:`global_order`); the
    shortest prefix of least important channels whose removal meets the target is found by bisection, each
    group keeping its minimum. Then, most important first, up to ``max_refill`` removed channels are put
    back wherever the budget still holds (this closes the gap left by removing one expensive channel).

    Raises:
        ValueError: a malformed target, or one below what pruning every group to its minimum reaches.
    """
    metric, fraction = parse_target(target)
    budget = fraction * cost.base.get(metric)
    order = global_order(graph, scores)

    def removed_by(prefix: Sequence[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name in prefix:
            counts[name] = counts.get(name, 0) + 1
        return counts

    def fits(removed: Mapping[str, int]) -> bool:
        return cost(_keep_counts(graph, scores, removed, min_channels, round_to)).get(metric) <= budget

    if fits({}):
        return _keep_counts(graph, scores, {}, min_channels, round_to)
    if not fits(removed_by(order)):
        least = cost(_keep_counts(graph, scores, removed_by(order), min_channels, round_to)).get(metric)
        raise ValueError(
            f"target {target!r} is out of reach for {graph.model_name}: pruning every prunable group to its "
            f"minimum (min_channels={min_channels}, round_to={round_to}) keeps "
            f"{least / cost.base.get(metric):.3f} of the {metric}"
        )
    lo, hi = 0, len(order)  # invariant: removing order[:lo] does not fit, removing order[:hi] does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(removed_by(order[:mid])) else (mid, hi)
    removed = removed_by(order[:hi])
    for name in reversed(order[max(0, hi - max_refill) : hi]):
        removed[name] -= 1
        if not fits(removed):
            removed[name] += 1
    return _keep_counts(graph, scores, removed, min_channels, round_to)


def _group_ratios(graph: ChannelGraph, ratio: float | Mapping[str, float]) -> dict[str, float]:
    """The fraction of channels to remove from each prunable group (exact name > ``re:`` > ``_default``)."""
    if not isinstance(ratio, Mapping):
        return {g.name: float(ratio) for g in graph.prunable_groups}
    exact = {k: float(v) for k, v in ratio.items() if not k.startswith("re:") and k != "_default"}
    patterns = [(re.compile(k[3:]), float(v)) for k, v in ratio.items() if k.startswith("re:")]
    known = {module for g in graph.prunable_groups for module, role in g.layers if role == "out"}
    for name in exact:
        if name not in known:
            raise ValueError(_unknown_layer(graph, name, known))
    result = {}
    for g in graph.prunable_groups:
        producers = [module for module, role in g.layers if role == "out"]
        named = {exact[p] for p in producers if p in exact}
        if len(named) > 1:
            raise ValueError(f"layers of channel group {g.name!r} ({producers}) got different ratios {sorted(named)}")
        matched = [v for p in producers for rx, v in patterns if rx.fullmatch(p)]
        result[g.name] = named.pop() if named else matched[0] if matched else float(ratio.get("_default", 0.0))
    return result


def _unknown_layer(graph: ChannelGraph, name: str, known: set[str]) -> str:
    for g in graph.groups:
        if not g.prunable and ((name, "out") in g.layers or g.name == name):
            return f"layer {name!r} of {graph.model_name} cannot be pruned ({'; '.join(g.reasons)})"
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"{name!r} is not a prunable layer of {graph.model_name}.{hint}"


def select_by_ratio(
    graph: ChannelGraph,
    scores: Mapping[str, Tensor],
    ratio: float | Mapping[str, float],
    *,
    min_channels: int = 1,
    round_to: int = 1,
) -> KeepMasks:
    """Keep masks that remove ``floor(ratio * size)`` of the least important channels of each group.

    Args:
        graph: the channel groups.
        scores: importance per group.
        ratio: the fraction of channels to remove, one for all groups or per layer: keys are producer
            layer names (any conv / Linear / BatchNorm whose output the group is), ``"re:<pattern>"``, or
            ``"_default"`` (else 0); exact names win over patterns.
        min_channels: channels each group keeps at least (and at least 1).
        round_to: kept counts are rounded up to a multiple of this.

    Raises:
        ValueError: a ratio outside [0, 1), an unknown or unprunable layer name, or two layers of one group
            with different ratios.
    """
    ratios = _group_ratios(graph, ratio)
    for name, r in ratios.items():
        if not 0 <= r < 1:
            raise ValueError(f"pruning ratio of {name!r} must be in [0, 1), got {r}")
    keep = {}
    for g in graph.prunable_groups:
        wanted = g.size - int(ratios[g.name] * g.size)
        keep[g.name] = _top(scores[g.name], _kept_count(g.size, wanted, min_channels, round_to))
    return keep


# the record and its replay ---------------------------------------------------------------------------------


def _kept_indices(graph: ChannelGraph, keep: Mapping[str, Tensor]) -> dict[tuple[str, str], list[int]]:
    kept: dict[tuple[str, str], list[int]] = {}
    for g in graph.groups:
        mask = keep.get(g.name)
        for j, channel in enumerate(g.channels):
            for s in channel:
                if mask is None or bool(mask[j]):
                    kept.setdefault((s.module, s.role), []).append(s.index)
                else:
                    kept.setdefault((s.module, s.role), [])
    return {k: sorted(v) for k, v in kept.items()}


def _shortcut_entry(cmap: Any, kept_in: list[int], kept_out: list[int]) -> dict[str, Any]:
    pos_in = {c: i for i, c in enumerate(kept_in)}
    pos_out = {c: i for i, c in enumerate(kept_out)}
    pairs = [(pos_in[s], pos_out[d]) for s, d in zip(cmap.src, cmap.dst) if s in pos_in and d in pos_out]
    return {
        "stride": cmap.stride,
        "src_index": [s for s, _ in pairs],
        "dst_index": [d for _, d in pairs],
        "out_channels": len(kept_out),
    }


def channel_record(graph: ChannelGraph, keep: Mapping[str, Tensor]) -> dict[str, Any]:
    """The JSON record of the channels kept by ``keep`` (missing groups keep everything).

    Returns:
        ``{"format", "version", "layers": {name: {"out": [...], "in": [...]}}, "shortcuts": {name:
        {"stride", "src_index", "dst_index", "out_channels"}}}``: sorted kept indices of every role that
        loses channels (``"in"`` of a Linear after a flatten lists input *features*), and the arguments of
        the :class:`~factorch.prune.graph.ChannelMapShortcut` that replaces every changed channel map.
    """
    kept = _kept_indices(graph, keep)
    layers: dict[str, dict[str, list[int]]] = {}
    for name, geo in graph.layers.items():
        sizes = {"out": geo.out_size} if geo.kind == "bn" else {"out": geo.out_size, "in": geo.in_size}
        entry = {r: kept[(name, r)] for r, n in sizes.items() if len(kept.get((name, r), range(n))) != n}
        if entry:
            layers[name] = entry
    shortcuts = {}
    for name, cmap in graph.channel_maps.items():
        kept_in = kept.get((name, "in"), list(range(cmap.in_channels)))
        kept_out = kept.get((name, "out"), list(range(cmap.out_channels)))
        if len(kept_in) != cmap.in_channels or len(kept_out) != cmap.out_channels:
            shortcuts[name] = _shortcut_entry(cmap, kept_in, kept_out)
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "layers": layers, "shortcuts": shortcuts}


def _check_indices(name: str, role: str, indices: Any, size: int) -> Tensor:
    ok = isinstance(indices, list) and indices and all(isinstance(i, int) and not isinstance(i, bool) for i in indices)
    if not ok or indices != sorted(set(indices)) or indices[0] < 0 or indices[-1] >= size:
        raise ValueError(
            f"channel record: {role!r} of layer {name!r} must be a non-empty increasing list of indices in "
            f"[0, {size}), got {indices!r}"
        )
    return torch.tensor(indices, dtype=torch.long)


def _copy_into(new: nn.Module, old: nn.Module, tensors: dict[str, Tensor | None]) -> nn.Module:
    with torch.no_grad():
        for attr, value in tensors.items():
            if value is None:
                continue
            target = getattr(new, attr)
            target.copy_(value)
            if isinstance(target, nn.Parameter):
                target.requires_grad_(getattr(old, attr).requires_grad)
    return new.train(old.training)


def shrink_conv(conv: nn.Module, out_index: Tensor, in_index: Tensor, name: str = "conv") -> nn.Module:
    """A new conv of the same class with the kept output / input channels; every attribute copied whole.

    A depthwise conv (``groups == in == out``) needs ``out_index == in_index`` and keeps ``groups`` equal
    to its channels.

    Raises:
        ValueError: a grouped conv that is not depthwise, or a depthwise conv with different in / out lists.
    """
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if conv.groups > 1 and not depthwise:
        raise ValueError(f"layer {name!r}: grouped conv (groups={conv.groups}) cannot be pruned")
    if depthwise and not torch.equal(out_index, in_index):
        raise ValueError(f"layer {name!r}: a depthwise conv needs the same 'out' and 'in' channels")
    n_out, n_in = len(out_index), len(in_index)
    new = skip_init(
        type(conv),
        n_in,
        n_out,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=n_out if depthwise else 1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    weight = conv.weight[out_index] if depthwise else conv.weight[out_index][:, in_index]
    bias = None if conv.bias is None else conv.bias[out_index]
    return _copy_into(new, conv, {"weight": weight, "bias": bias})


def shrink_linear(linear: nn.Linear, out_index: Tensor, in_index: Tensor) -> nn.Linear:
    """A new Linear with the kept output neurons and input features."""
    w = linear.weight
    new = skip_init(nn.Linear, len(in_index), len(out_index), linear.bias is not None, device=w.device, dtype=w.dtype)
    bias = None if linear.bias is None else linear.bias[out_index]
    return _copy_into(new, linear, {"weight": w[out_index][:, in_index], "bias": bias})


def shrink_batchnorm(bn: nn.Module, index: Tensor) -> nn.Module:
    """A new BatchNorm of the same class with the kept features (affine parameters and running stats)."""
    ref = bn.weight if bn.affine else bn.running_mean
    kwargs = {"device": ref.device if ref is not None else None, "dtype": ref.dtype if ref is not None else None}
    new = type(bn)(len(index), bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **kwargs)  # cheap init
    tensors: dict[str, Tensor | None] = {}
    if bn.affine:
        tensors.update(weight=bn.weight[index], bias=bn.bias[index])
    if bn.track_running_stats and bn.running_mean is not None:
        tensors.update(running_mean=bn.running_mean[index], running_var=bn.running_var[index])
        tensors["num_batches_tracked"] = bn.num_batches_tracked
    return _copy_into(new, bn, tensors)


def _shrink_layer(module: nn.Module, name: str, entry: Mapping[str, Any]) -> nn.Module:
    if not isinstance(entry, Mapping) or not set(entry) <= {"out", "in"} or not entry:
        raise ValueError(f"channel record: layer {name!r} needs 'out' and/or 'in' index lists, got {entry!r}")
    if type(module) in BATCHNORMS:
        if "in" in entry:
            raise ValueError(f"channel record: BatchNorm {name!r} takes 'out' only")
        return shrink_batchnorm(module, _check_indices(name, "out", entry["out"], module.num_features))
    if type(module) in CONVS:
        out_size, in_size = module.out_channels, module.in_channels
    elif type(module) is nn.Linear:
        out_size, in_size = module.out_features, module.in_features
    else:
        raise ValueError(
            f"channel record names {name!r}, a {type(module).__name__}; only Conv1d/2d/3d, Linear and "
            "BatchNorm1d/2d/3d can be pruned"
        )
    depthwise = type(module) in CONVS and 1 < module.groups == in_size == out_size
    out_list = entry.get("out", entry.get("in") if depthwise else list(range(out_size)))
    in_list = entry.get("in", entry.get("out") if depthwise else list(range(in_size)))
    out_index = _check_indices(name, "out", out_list, out_size)
    in_index = _check_indices(name, "in", in_list, in_size)
    if type(module) is nn.Linear:
        return shrink_linear(module, out_index, in_index)
    return shrink_conv(module, out_index, in_index, name)


def _check_record(record: Any) -> None:
    if not isinstance(record, Mapping) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f"not a channel record (expected 'format': {RECORD_FORMAT!r}): {str(record)[:200]}")
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"channel record version {record.get('version')!r}; this factorch reads {RECORD_VERSION}")
    for key in ("layers", "shortcuts"):
        if not isinstance(record.get(key), Mapping):
            raise ValueError(f"channel record needs a {key!r} mapping, got {record.get(key)!r}")


def _model_device(model: nn.Module) -> torch.device | None:
    tensor = next(iter(model.parameters()), None)
    return None if tensor is None else tensor.device


def apply_channel_record_(model: nn.Module, record: Mapping[str, Any]) -> nn.Module:
    """Rebuild the pruned structure described by ``record`` on ``model``, in place; returns ``model``.

    Every listed conv / BatchNorm / Linear is replaced by a smaller module of the same class holding the
    kept slices of *this* model's tensors, and every listed shortcut (a
    :class:`~factorch.models.resnet.PadShortcut` or :class:`~factorch.prune.graph.ChannelMapShortcut`)
    by a :class:`~factorch.prune.graph.ChannelMapShortcut`. Applied to the original model it yields the
    pruned model; applied to a freshly built dense model it yields the structure that the pruned model's
    ``state_dict`` loads into strictly.

    Raises:
        ValueError: not a channel record of this version; a name that is not a module of ``model`` (with
            close matches); a module of another kind; indices out of range or not increasing.
    """
    _check_record(record)
    for name, entry in record["layers"].items():
        replace_module(model, name, _shrink_layer(get_module(model, name), name, entry))
    for name, entry in record["shortcuts"].items():
        old = get_module(model, name)
        if type(old) not in (PadShortcut, ChannelMapShortcut):
            raise ValueError(f"channel record: shortcut {name!r} is a {type(old).__name__}, not a PadShortcut")
        try:
            new = ChannelMapShortcut(**entry)
        except TypeError as err:
            raise ValueError(f"channel record: shortcut {name!r} has bad arguments {entry!r}") from err
        replace_module(model, name, new.to(_model_device(model)).train(old.training))
    return model


# the whole thing -------------------------------------------------------------------------------------------


class LayerChannels(NamedTuple):
    """Channels of one layer before and after pruning (BatchNorm: ``in_*`` equal ``out_*``)."""

    out_before: int
    out_after: int
    in_before: int
    in_after: int


@dataclass(frozen=True)
class ChannelPruneResult:
    """What :func:`prune_channels` did.

    Attributes:
        record: the JSON record (see :func:`channel_record`); save it with the ``state_dict``.
        layers: channels before / after of every conv, Linear and BatchNorm the analysis saw.
        unprunable: groups that could not be pruned, with the reasons.
        criterion: name of the importance criterion.
        target: the budget string, or ``None`` when pruned by ``ratio``.
        before: cost of the original model (profiled).
        after: cost of the pruned model (profiled).
    """

    record: dict[str, Any]
    layers: dict[str, LayerChannels]
    unprunable: dict[str, tuple[str, ...]]
    criterion: str
    target: str | None
    before: PruneCost
    after: PruneCost

    @property
    def macs_ratio(self) -> float:
        """MACs of the pruned model over those of the original."""
        return self.after.macs / self.before.macs if self.before.macs else 1.0

    @property
    def params_ratio(self) -> float:
        """Parameters of the pruned model over those of the original."""
        return self.after.params / self.before.params if self.before.params else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "record": self.record,
            "layers": {k: v._asdict() for k, v in self.layers.items()},
            "unprunable": {k: list(v) for k, v in self.unprunable.items()},
            "criterion": self.criterion,
            "target": self.target,
            "before": self.before._asdict(),
            "after": self.after._asdict(),
        }


def _layer_channels(graph: ChannelGraph, record: Mapping[str, Any]) -> dict[str, LayerChannels]:
    out = {}
    for name, geo in graph.layers.items():
        entry = record["layers"].get(name, {})
        out_after = len(entry.get("out", range(geo.out_size)))
        in_after = out_after if geo.kind in ("bn", "depthwise") else len(entry.get("in", range(geo.in_size)))
        out[name] = LayerChannels(geo.out_size, out_after, geo.in_size, in_after)
    return out


def _check_options(target: str | None, ratio: Any, min_channels: int, round_to: int) -> None:
    if (target is None) == (ratio is None):
        raise ValueError("pass exactly one of target (e.g. 'macs=0.5') and ratio (e.g. 0.3 or {layer: 0.3})")
    if target is not None:
        parse_target(target)
    for label, value in (("min_channels", min_channels), ("round_to", round_to)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")


def _cost(report: ProfileReport) -> PruneCost:
    return PruneCost(report.total_macs, report.total_params)


def prune_channels(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    *,
    target: str | None = None,
    ratio: float | Mapping[str, float] | None = None,
    criterion: str | Importance = "l1",
    calib_data: Tensor | Iterable[Any] | None = None,
    ignored: Iterable[str] = (),
    min_channels: int = 1,
    round_to: int = 1,
    inplace: bool = False,
) -> tuple[nn.Module, ChannelPruneResult]:
    """Remove the least important channels so that layers become physically smaller.

    Args:
        model: the network; left unchanged unless ``inplace``.
        example_inputs: a tensor or a tuple of tensors passed positionally to ``model`` (tracing and costs).
        target: budget as a fraction of the original model, ``"macs=0.5"`` or ``"params=0.5"``: channels
            ranked globally by normalised importance are removed until the cost is at most the target.
        ratio: instead of ``target``, the fraction of channels to remove, one for every group or per layer
            (see :func:`select_by_ratio`).
        criterion: ``"l1"`` (filter L1 norm), ``"bn-scale"`` (BatchNorm ``|gamma|``), ``"activation"``
            (mean feature-map magnitude on ``calib_data``), or a callable (see :func:`channel_importance`).
        calib_data: inputs for ``"activation"`` (see :func:`calibration_batches`); default
            ``example_inputs``.
        ignored: names of modules never to prune.
        min_channels: channels each group keeps at least (and at least 1).
        round_to: kept channel counts are rounded up to a multiple of this (e.g. 8 for fast kernels).
        inplace: prune ``model`` itself instead of a deep copy.

    Returns:
        The pruned model and a :class:`ChannelPruneResult` (record, channels per layer, costs before and
        after as profiled, reasons of unprunable groups).

    Raises:
        ValueError: not exactly one of ``target`` and ``ratio``; a malformed or unreachable target; bad
            ratios, names, criterion or options; a :class:`~factorch.prune.graph.ChannelTraceError` when
            the model cannot be traced.
    """
    inputs = as_inputs(example_inputs)
    _check_options(target, ratio, min_channels, round_to)
    graph = analyze_channels(model, inputs, ignored=ignored)
    batches = calibration_batches(calib_data, inputs)
    scores = normalize_importance(channel_importance(model, graph, criterion, batches))
    if target is not None:
        before = profile(model, inputs)
        cost = CostModel.build(graph, before)
        keep = select_to_target(graph, scores, cost, target, min_channels=min_channels, round_to=round_to)
    else:
        keep = select_by_ratio(graph, scores, ratio, min_channels=min_channels, round_to=round_to)
        before = profile(model, inputs)
    record = channel_record(graph, keep)
    pruned = apply_channel_record_(model if inplace else copy.deepcopy(model), record)
    after = profile(pruned, inputs)
    label = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom")
    result = ChannelPruneResult(
        record, _layer_channels(graph, record), graph.unprunable, label, target, _cost(before), _cost(after)
    )
    return pruned, result
