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
from factorch.auto.timing import time_pair
from factorch.calibrate.config import CalibrationConfig
from factorch.calibrate.reconstruct import capture, execution_order, fit_linear_
from factorch.data.calib import calibration_inputs
from factorch.layers import CompressedLayer
from factorch.layers.base import layer_geometry
from factorch.profiling import profile
from factorch.progress import progress_bar
from factorch.prune.channels import (
    CostModel,
    calibration_batches,
    channel_importance,
    normalize_importance,
    prune_channels,
)
from factorch.prune.config import ChannelPruneConfig
from factorch.prune.graph import analyze_channels
from factorch.prune.levels import LevelResult, level_search
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

    bound = config.latency_bound
    if (config.allocation == "levels" or bound is not None) and calib is None:
        raise ValueError(
            "ChannelPruneConfig(allocation='levels') and latency bounds need calib_data (the per-level shares "
            "are chosen by the damage measured on it)"
        )
    searched = bound is not None or config.allocation == "levels"
    reference = copy.deepcopy(model).eval() if searched else None  # the dense model the search measures against
    latency = None if bound is None else _latency_ratio(reference, inputs, config)
    levels = None

    def allocate(allocation: str, inplace: bool):
        nonlocal levels
        if allocation == "global":
            pruned, result = prune_channels(model, inputs, target=config.target, inplace=inplace, **options)
        elif allocation == "uniform":
            pruned, result = _uniform_allocation(model, inputs, config, inplace=inplace, **options)
        else:
            levels = _level_allocation(reference, inputs, config, calib, latency, options)
            pruned, result = prune_channels(model, inputs, ratio=levels.ratios, inplace=inplace, **options)
        reconstruction = None
        if calibrate is not None:
            reconstruction = reconstruct_inputs_(
                pruned, dense, result.record, calibration_inputs(calib_data, calibrate.n_samples), calibrate
            )
        return pruned, result, reconstruction

    chosen = None
    if config.allocation != "auto":
        pruned, result, reconstruction = allocate(config.allocation, inplace)
        if levels is not None:
            chosen = {"allocation": "levels", "damage": {"levels": levels.damage}, "levels": levels.to_dict()}
            if bound is not None:
                chosen["latency"] = {"levels": levels.latency}
    elif calib is None:
        pruned, result, reconstruction = allocate("global", inplace)
        chosen = {"allocation": "global", "why": "no calib_data to compare the allocations on"}
    else:
        names = ("global", "uniform", "levels") if bound is not None else ("global", "uniform")
        if config.parsed_target.kind == "latency":
            names = ("levels",)  # the other two need a MACs / parameter budget
        built = {a: allocate(a, False) for a in names}
        damage = dict(zip(built, _output_damages(model, [b[0] for b in built.values()], calib)))
        chosen = {"allocation": None, "damage": damage}
        eligible = list(built)
        if bound is not None:
            speed = {a: (levels.latency if a == "levels" else latency(built[a][0])) for a in built}
            chosen["latency"] = speed
            eligible = [a for a in built if a == "levels" or speed[a] <= bound]
        best = min(eligible, key=damage.get)
        chosen["allocation"] = best
        if levels is not None:
            chosen["levels"] = levels.to_dict()
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


def _latency_ratio(reference: nn.Module, inputs: tuple, config: ChannelPruneConfig):
    """``model -> its latency / reference's`` on ``config.runtime`` at ``config.batch_size`` (paired calls)."""

    def ratio(candidate: nn.Module) -> float:
        dense_s, candidate_s = time_pair(
            reference, candidate.eval(), inputs, batch_sizes=(config.batch_size,), runtime=config.runtime, repeats=9
        )[config.batch_size]
        return candidate_s / dense_s

    return ratio


def _level_allocation(
    reference: nn.Module, inputs: tuple, config: ChannelPruneConfig, calib: Tensor, latency, options
) -> LevelResult:
    """The per-level shares of :func:`~factorch.prune.levels.level_search` for ``config`` on ``reference`` (an
    eval-mode copy of the dense model), damage measured on (at most 512 of) the calibration inputs."""
    graph = analyze_channels(reference, inputs, ignored=options["ignored"])
    batches = calibration_batches(options["calib_data"], inputs)
    scores = normalize_importance(channel_importance(reference, graph, options["criterion"], batches))
    cost = CostModel.build(graph, profile(reference, inputs))
    probe = calib[:512]
    scorer = OutputScorer(model_outputs(reference, probe), "kl")

    def damage(candidate: nn.Module) -> float:
        reestimate_batchnorm_(candidate, probe)
        with torch.no_grad():
            return scorer(model_outputs(candidate.eval(), probe))

    goal = config.parsed_target
    budget = (goal.kind, goal.fraction) if goal.kind in ("macs", "params") else (None, None)
    return level_search(
        reference,
        graph,
        scores,
        cost,
        inputs,
        damage=damage,
        metric=budget[0],
        fraction=budget[1],
        latency=latency,
        max_latency=config.latency_bound,
        min_channels=options["min_channels"],
        round_to=options["round_to"],
    )


def reestimate_batchnorm_(model: nn.Module, inputs: Tensor, batch_size: int = 128) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics of ``model`` on ``inputs`` (a cumulative average over
    the batches, no gradients, no labels); the model is left in eval mode.

    Removing channels shifts the statistics the following BatchNorms see, so a pruned model judged with the
    dense model's statistics looks far worse than it is after any training. Judging candidates after this
    cheap re-estimation ranks them as fine-tuning later does ("adaptive BN", Li et al. 2020, EagleEye).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches
    model.train()
    try:
        with torch.no_grad():
            for batch in inputs.split(batch_size):
                model(batch)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return model


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
