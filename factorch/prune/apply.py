"""``compress(model, ChannelPruneConfig(...))``: structured pruning with factorch's report, whole-model
options (BatchNorm folding, calibration) and a record that ``factorch.save`` / ``load`` replay."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from factorch.apply import PLAN_ATTR, dense_layer_cost, model_storage, storage_totals
from factorch.auto.closed_loop import _copy_into as copy_into
from factorch.auto.sensitivity import OutputScorer, model_outputs
from factorch.calibrate.config import CalibrationConfig
from factorch.calibrate.reconstruct import capture, execution_order, fit_linear_
from factorch.data.calib import calibration_inputs
from factorch.layers import CompressedLayer
from factorch.layers.base import layer_geometry
from factorch.progress import progress_bar
from factorch.prune.channels import prune_channels
from factorch.prune.config import ChannelPruneConfig
from factorch.rank.bisect import largest_feasible
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
    if calibrate is not None and calib_data is None:
        raise ValueError("calibrate=... needs calib_data (inputs on which the pruned layers are refitted)")
    calib = calibration_inputs(calib_data, 1024) if calib_data is not None else None
    before_store = model_storage(model)
    dense = copy.deepcopy(model) if inplace and calibrate is not None else model
    ignored = tuple(config.ignored) + tuple(n for n, _ in compressed_layers(model))
    options = dict(
        criterion=config.criterion,
        calib_data=calib.split(128) if calib is not None else None,
        ignored=ignored,
        min_channels=config.min_channels,
        round_to=config.round_to,
    )

    def allocate(allocation: str, inplace: bool):
        if allocation == "global":
            pruned, result = prune_channels(model, inputs, target=config.target, inplace=inplace, **options)
        else:
            pruned, result = _uniform_allocation(model, inputs, config, inplace=inplace, **options)
        reconstruction = None
        if calibrate is not None:
            reconstruction = reconstruct_inputs_(
                pruned, dense, result.record, calibration_inputs(calib_data, calibrate.n_samples), calibrate
            )
        return pruned, result, reconstruction

    chosen = None
    if config.allocation != "auto":
        pruned, result, reconstruction = allocate(config.allocation, inplace)
    elif calib is None:
        pruned, result, reconstruction = allocate("global", inplace)
        chosen = {"allocation": "global", "why": "no calib_data to compare the allocations on"}
    else:
        built = {a: allocate(a, False) for a in ("global", "uniform")}
        damage = dict(zip(built, _output_damages(model, [b[0] for b in built.values()], calib)))
        best = min(damage, key=damage.get)
        chosen = {"allocation": best, "damage": damage}
        pruned, result, reconstruction = built[best]
        if inplace:  # the structure changed: the caller's object becomes the pruned model
            copy_into(model, pruned)
            pruned = model
    earlier = getattr(model, PLAN_ATTR, None) or {}
    extra = {"folded_bn": list(earlier.get("folded_bn", [])), "channels": [*earlier.get("channels", []), result.record]}
    folded = fold_batchnorms(pruned, conv_bn_pairs(pruned)) if fold_bn else []
    extra["folded_bn"] += [list(p) for p in folded]
    setattr(pruned, PLAN_ATTR, extra)
    report = _report(model, pruned, config, result, inputs, before_store)
    report.totals["folded_bn"] = [list(p) for p in folded]
    if chosen is not None:
        report.totals["allocation"] = chosen
    if reconstruction is not None:
        report.totals["reconstruction"] = reconstruction
        for row in report.layers:
            if row.name in reconstruction["layers"]:
                row.output_error = reconstruction["layers"][row.name]["after"]
    return pruned, report


def reconstruct_inputs_(
    pruned: nn.Module, dense: nn.Module, record: dict, inputs: Tensor, settings: CalibrationConfig
) -> dict[str, Any]:
    """Refit, in execution order, every conv / Linear of ``pruned`` that lost input channels so that it
    reproduces the dense layer's responses (on its kept outputs) from the pruned network's inputs: ridge least
    squares on calibration inputs, no labels (He et al. 2017; Luo et al. 2017). Depthwise and grouped layers,
    whose kept weights see exactly their own channels, are left as they are.

    References:
        He et al. 2017, "Channel pruning for accelerating very deep neural networks"; Luo et al. 2017 (ThiNet).
    """
    import time

    t0 = time.perf_counter()
    layers = record.get("layers", {})
    modules, dense_modules = dict(pruned.named_modules()), dict(dense.named_modules())
    flags = {m: m.training for m in (pruned, dense)}
    pruned.eval()
    dense.eval()
    batches = list(inputs.split(settings.batch_size))
    order = [n for n in execution_order(pruned, inputs[:1]) if "in" in layers.get(n, {})]
    done: dict[str, dict[str, float]] = {}
    try:
        with progress_bar("refitting pruned layers", len(order), enabled=settings.progress) as advance:
            for name in order:
                layer = modules[name]
                if type(layer) not in (nn.Conv1d, nn.Conv2d, nn.Linear) or getattr(layer, "groups", 1) != 1:
                    advance()
                    continue
                keep_out = layers[name].get("out")
                xs = [capture(pruned, layer, b, "input") for b in batches]
                ys = [capture(dense, dense_modules[name], b, "output") for b in batches]
                if keep_out is not None:
                    index = torch.as_tensor(keep_out, dtype=torch.long)
                    ys = [y.index_select(-1 if isinstance(layer, nn.Linear) else 1, index) for y in ys]
                before, after = fit_linear_(layer, xs, ys, settings.ridge)
                done[name] = {"before": before, "after": after}
                advance()
    finally:
        for m, flag in flags.items():
            m.train(flag)
    return {"n_samples": int(inputs.shape[0]), "seconds": round(time.perf_counter() - t0, 2), "layers": done}


def _output_damages(reference: nn.Module, models: list[nn.Module], inputs: Tensor) -> list[float]:
    """Each model's damage against ``reference`` on ``inputs``: the mean KL divergence of their softmax
    outputs (the search's label-free proxy of accuracy lost; relative squared error for other outputs)."""
    flags = {m: m.training for m in (reference, *models)}
    try:
        for m in flags:
            m.eval()
        scorer = OutputScorer(model_outputs(reference, inputs), "kl")
        return [scorer(model_outputs(m, inputs)) for m in models]
    finally:
        for m, flag in flags.items():
            m.train(flag)


def _uniform_allocation(model: nn.Module, inputs: tuple, config: ChannelPruneConfig, *, inplace: bool, **options):
    """The same share of channels removed from every prunable group: the largest share whose model meets the
    target (bisection), as Torch-Pruning's ``pruning_ratio`` and Li et al. 2017's uniform setting."""
    goal = config.parsed_target

    def build(share: float):
        return prune_channels(model, inputs, ratio=share, inplace=False, **options)

    def fits(built) -> bool:
        return getattr(built[1], f"{goal.kind}_ratio") <= goal.fraction

    found = largest_feasible(lambda keep: build(1.0 - keep), fits, lo=0.0, hi=1.0, steps=12)
    if found is None:
        raise ValueError(f"ChannelPruneConfig(allocation='uniform'): no channel share reaches {config.target}")
    pruned, result = found[1]
    if inplace:  # the structure changed: the caller's object becomes the pruned model
        copy_into(model, pruned)
        pruned = model
    return pruned, result


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
