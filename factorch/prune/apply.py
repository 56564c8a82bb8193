"""``compress(model, ChannelPruneConfig(...))``: structured pruning with factorch's report, whole-model
options (BatchNorm folding, calibration) and a record that ``factorch.save`` / ``load`` replay."""

from __future__ import annotations

from typing import Any

from torch import nn

from factorch.apply import PLAN_ATTR, dense_layer_cost, model_storage, storage_totals
from factorch.calibrate.config import CalibrationConfig
from factorch.data.calib import calibration_inputs
from factorch.layers import CompressedLayer
from factorch.layers.base import layer_geometry
from factorch.prune.channels import prune_channels
from factorch.prune.config import ChannelPruneConfig
from factorch.report import CompressionReport, LayerReport
from factorch.surgery import compressed_layers, conv_bn_pairs, fold_batchnorms, trace_layers

METHOD = "channels"  # the report's method name for a layer made smaller by structured pruning


def channel_prune(
    model: nn.Module,
    config: ChannelPruneConfig,
    *,
    example_inputs: tuple | None,
    calib_data: Any = None,
    inplace: bool = False,
    fold_bn: bool | None = None,
    calibrate: CalibrationConfig | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """See :func:`factorch.compress` with a :class:`ChannelPruneConfig`.

    Compressed layers (factorized, pruned) already in ``model`` are left as they are: their channels are not
    removed. BatchNorms are folded after pruning, so ``criterion="bn-scale"`` still reads them.
    """
    if not isinstance(config, ChannelPruneConfig):
        raise TypeError(f"config must be a ChannelPruneConfig, got {type(config).__name__}")
    if example_inputs is None:
        raise ValueError("ChannelPruneConfig needs example_inputs (the model is traced to find coupled channels)")
    inputs = tuple(t[:1] for t in example_inputs)
    if config.criterion == "activation" and calib_data is None:
        raise ValueError("ChannelPruneConfig(criterion='activation') needs calib_data (inputs to measure channels on)")
    if calibrate is not None:
        raise ValueError(
            "calibrate=... refits factorized layers, and structured pruning makes none: calibrate the step that "
            "factorizes (e.g. an AutoConfig after the ChannelPruneConfig)"
        )
    calib = calibration_inputs(calib_data, 1024) if calib_data is not None else None
    before_store = model_storage(model)
    ignored = tuple(config.ignored) + tuple(n for n, _ in compressed_layers(model))
    pruned, result = prune_channels(
        model,
        inputs,
        target=config.target,
        criterion=config.criterion,
        calib_data=calib.split(128) if calib is not None else None,
        ignored=ignored,
        min_channels=config.min_channels,
        round_to=config.round_to,
        inplace=inplace,
    )
    earlier = getattr(model, PLAN_ATTR, None) or {}
    extra = {"folded_bn": list(earlier.get("folded_bn", [])), "channels": [*earlier.get("channels", []), result.record]}
    folded = fold_batchnorms(pruned, conv_bn_pairs(pruned)) if fold_bn else []
    extra["folded_bn"] += [list(p) for p in folded]
    setattr(pruned, PLAN_ATTR, extra)
    report = _report(model, pruned, config, result, inputs, before_store)
    report.totals["folded_bn"] = [list(p) for p in folded]
    return pruned, report


def _report(
    model: nn.Module,
    pruned: nn.Module,
    config: ChannelPruneConfig,
    result,
    inputs: tuple,
    before_store: dict[str, int],
) -> CompressionReport:
    """One row per conv / Linear, its cost before and after; whole-model totals as ``apply_plan`` gives them."""
    report = CompressionReport(config=config.to_dict())
    shapes_before = trace_layers(model, inputs)
    shapes_after = trace_layers(pruned, inputs)
    modules_before, modules_after = dict(model.named_modules()), dict(pruned.named_modules())
    for name, channels in result.layers.items():
        old, new = modules_before.get(name), modules_after.get(name)
        if type(old) not in (nn.Conv1d, nn.Conv2d, nn.Linear) or isinstance(old, CompressedLayer):
            continue
        size_b, per_b = layer_geometry(old, shapes_before.get(name))
        size_a, per_a = layer_geometry(new, shapes_after.get(name))
        before, after = dense_layer_cost(old, size_b, per_b), dense_layer_cost(new, size_a, per_a)
        row = LayerReport(name=name, type=type(old).__name__)
        row.params_before, row.macs_before, row.size_before = before.params, before.macs, before.size_bytes
        if (channels.out_after, channels.in_after) == (channels.out_before, channels.in_before):
            row.skipped = _why_kept(name, result)
        else:
            row.method, row.ranks = METHOD, (channels.out_after, channels.in_after)
            row.params_after, row.macs_after, row.size_after = after.params, after.macs, after.size_bytes
            row.nonzero_after = after.nonzero_params
        report.layers.append(row)
    order = {n: i for i, n in enumerate(shapes_before)}
    report.layers.sort(key=lambda r: order.get(r.name, len(order)))
    b, a = result.before, result.after
    report.finalize({"params_before": b.params, "params_after": a.params, "macs_before": b.macs, "macs_after": a.macs})
    report.totals.update(storage_totals(before_store["nonzero_params"], before_store["size_bytes"], pruned))
    report.totals.update(
        criterion=result.criterion,
        unprunable={k: list(v) for k, v in result.unprunable.items()},
        target=config.target,
    )
    return report


def _why_kept(name: str, result) -> str:
    for group, reasons in result.unprunable.items():
        if name in group or any(name in r for r in reasons):
            return "channels kept: " + "; ".join(reasons)
    return "channels kept (all its channels ranked above the threshold, or the network's input / output)"


__all__ = ["channel_prune"]
