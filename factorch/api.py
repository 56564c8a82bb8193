"""``compress`` / ``compress_``: factorize the layers of a model by config or per-layer plan."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from factorch.auto.config import AutoConfig
from factorch.config import MethodConfig, Plan
from factorch.layers import FactorizedLayer, NotFactorizable, layer_class
from factorch.layers._spec import spec_of
from factorch.layers.base import count_params, layer_geometry
from factorch.report import CompressionReport, LayerReport
from factorch.surgery import (
    candidate_layers,
    conv_bn_pairs,
    factorized_layers,
    fold_batchnorms,
    get_module,
    replace_module,
    trace_layers,
)

PLAN_ATTR = "_factorch_plan"  # on a compressed model: the folds applied (the layers describe themselves)


def _as_inputs(example_inputs: Any) -> tuple | None:
    if example_inputs is None:
        return None
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def _as_plan(config: MethodConfig | Plan) -> Plan:
    if isinstance(config, Plan):
        return config
    if isinstance(config, MethodConfig):
        return Plan({"_default": config})
    raise TypeError(
        f"config must be a method config (SVDConfig, SpatialSVDConfig, Tucker2Config, CPConfig, "
        f"TTConfig), a Plan or an AutoConfig, got {type(config).__name__}"
    )


def _edge_layers(names: Sequence[str], model: nn.Module) -> set[str]:
    """The first conv and the last Linear (in execution order when known) stay dense by default."""
    modules = dict(model.named_modules())
    convs = [n for n in names if isinstance(modules[n], (nn.Conv1d, nn.Conv2d))]
    linears = [n for n in names if isinstance(modules[n], nn.Linear)]
    return {x for x in (convs[:1] + linears[-1:])}


def factorized_row(name: str, layer: FactorizedLayer, input_shape: tuple[int, ...] | None) -> LayerReport:
    """The report row of a layer that is already factorized: its dense layer's cost before, its own after."""
    dense = layer.spec.dense(device="meta")
    input_size, per_position = layer_geometry(dense, input_shape)
    dense_params, dense_macs = FactorizedLayer.dense_cost(dense, input_size)
    params, macs = type(layer).cost(layer.spec, layer.ranks, input_size, **layer.options)
    return LayerReport(
        name=name,
        type=type(dense).__name__,
        method=layer.method,
        ranks=tuple(layer.ranks),
        params_before=dense_params,
        params_after=params,
        macs_before=dense_macs * per_position,
        macs_after=macs * per_position,
    )


ALREADY_FACTORIZED = "already factorized ({method} at ranks {ranks}): shrink it with compress_in_stages or recompress"


def _weight_error(dense: nn.Module, layer: FactorizedLayer) -> float:
    w = dense.weight.detach().double()
    with torch.no_grad():
        return float((layer.reconstruct_weight().to(w.device) - w).norm() / w.norm().clamp_min(1e-300))


def compress(
    model: nn.Module,
    config: MethodConfig | Plan | AutoConfig,
    *,
    example_inputs: Tensor | tuple | None = None,
    inplace: bool = False,
    keep_edges: bool = True,
    calib_data: Any = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """Factorize the layers of ``model``.

    Args:
        model: the network (left untouched unless ``inplace=True``).
        config: one method config for every layer, a :class:`Plan` of per-layer configs, or an
            :class:`~factorch.AutoConfig` (a whole-network target; methods and ranks are chosen per layer).
        example_inputs: inputs of one forward pass; used for the execution order, each layer's input size
            (MACs-based ranks) and whole-model totals. Without them, MACs assume 32x32 inputs.
        inplace: modify ``model`` itself.
        keep_edges: leave the first conv and the final classifier dense unless a Plan names them exactly
            (for an AutoConfig, its own ``keep_edges`` decides).
        calib_data: AutoConfig only: calibration inputs (a tensor, or a DataLoader yielding ``(inputs,
            targets)`` or inputs) on which candidate layers are scored.
        eval_fn: AutoConfig only: ``eval_fn(model) -> score`` (higher is better, e.g. accuracy in %), used to
            score candidates (objective ``"accuracy"``), to check ``max_accuracy_drop`` and to report the drop.

    Returns:
        ``(compressed model, report)``.

    References:
        See each layer class (Kim et al. 2016; Lebedev et al. 2015; Jaderberg et al. 2014; Novikov et al. 2015).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(config, AutoConfig):
        from factorch.auto.search import auto_compress

        return auto_compress(
            model, config, inputs=_as_inputs(example_inputs), calib_data=calib_data, eval_fn=eval_fn, inplace=inplace
        )
    if eval_fn is not None:
        raise ValueError("eval_fn is used by AutoConfig only; this config does not take it")
    return _compress_plan(
        model,
        _as_plan(config),
        inputs=_as_inputs(example_inputs),
        inplace=inplace,
        keep_edges=keep_edges,
        calib_data=calib_data,
    )


def _compress_plan(
    model: nn.Module,
    plan: Plan,
    *,
    inputs: tuple | None,
    inplace: bool,
    keep_edges: bool,
    calib_data: Any,
    prebuilt: Mapping[str, FactorizedLayer] | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """:func:`compress` for a plan. ``prebuilt``: layers already factorized from exactly the dense layer the
    plan names, with its method and ranks (AutoConfig's search made them); used (copied) instead of
    decomposing again."""
    calibrating = [c for c in plan.layers.values() if c is not None and c.calibrate is not None]
    if calib_data is not None and not calibrating:
        raise ValueError(
            "calib_data is used for calibration: set calibrate=factorch.CalibrationConfig(...) on the config "
            "(or use an AutoConfig)"
        )
    if calibrating and calib_data is None:
        raise ValueError("calibrate=... needs calib_data (a tensor or DataLoader of calibration inputs)")
    names_in_model = {n for n, _ in model.named_modules() if n}
    units = {n + ".": n for n, _ in factorized_layers(model)}
    for name in plan.exact_names():
        if name not in names_in_model:
            get_module(model, name)  # raises with close matches
        for prefix, outer in units.items():
            if name.startswith(prefix):
                raise ValueError(
                    f"Plan names {name!r}, a stage inside the factorized layer {outer!r}: a factorized layer is "
                    "shrunk as a unit (compress_in_stages, or its recompress method)"
                )
    work = model if inplace else copy.deepcopy(model)

    before_totals = None
    if inputs is not None:
        from factorch.profiling import profile

        p = profile(work, inputs)
        before_totals = {"params_before": p.total_params, "macs_before": p.total_macs}

    fold = any(cfg is not None and cfg.fold_bn for cfg in plan.layers.values())
    folded: list[tuple[str, str]] = []
    if fold:
        folded = fold_batchnorms(work, conv_bn_pairs(work))

    reference = copy.deepcopy(work) if calibrating else None  # the dense responses to reconstruct
    shapes = trace_layers(work, inputs) if inputs is not None else {}
    layers = list(candidate_layers(work))
    edges = _edge_layers([n for n, _ in layers if n in shapes or not shapes], work) if keep_edges else set()
    for pattern_key, _ in plan._patterns:
        if not any(_.fullmatch(n) for n, _m in layers):
            raise ValueError(f"Plan pattern {pattern_key!r} matches no factorizable layer of the model")
    layers += factorized_layers(work)  # reported as they are; their inner stages are never factorized alone
    if shapes:
        order = {n: i for i, n in enumerate(shapes)}
        layers.sort(key=lambda item: order.get(item[0], len(order)))

    report = CompressionReport(config=plan.to_dict())
    for name, layer in layers:
        if isinstance(layer, FactorizedLayer):
            row = factorized_row(name, layer, shapes.get(name))
            row.params_before, row.macs_before = row.params_after, row.macs_after  # left as it is
            row.skipped = ALREADY_FACTORIZED.format(method=layer.method, ranks="x".join(map(str, layer.ranks)))
            row.method = row.ranks = None
            report.layers.append(row)
            continue
        cfg, key = plan.resolve(name)
        row = LayerReport(name=name, type=type(layer).__name__)
        shape = shapes.get(name)
        input_size, per_position = layer_geometry(layer, shape)
        dense_params, dense_macs = FactorizedLayer.dense_cost(layer, input_size)
        dense_macs *= per_position
        row.params_before, row.macs_before = dense_params, dense_macs
        report.layers.append(row)
        if cfg is None:
            row.skipped = "left dense by the plan" if key is not None else "not named in the plan"
            continue
        if name in edges and key != name:
            row.skipped = "first conv / final classifier kept dense (name it in a Plan to compress it)"
            continue
        method = cfg.method
        try:
            cls = layer_class(method, layer)
            options = cfg.options()
            ranks = cls.resolve_ranks(layer, cfg.rank, input_size=input_size, name=name, **options)
            params, macs = cls.cost(spec_of(layer), ranks, input_size, **options)
        except NotFactorizable as err:
            row.skipped = str(err)
            continue
        except ValueError as err:
            if key == name or "above the maximum" not in str(err):
                raise ValueError(f"layer {name!r} ({type(layer).__name__}): {err}") from err
            row.skipped = str(err)  # a model-wide rank that this particular layer cannot take
            continue
        macs *= per_position
        # a lookup (Embedding) has no MACs to shrink: judge it by its parameters
        if not cfg.allow_larger and (params >= dense_params or (dense_macs > 0 and macs >= dense_macs)):
            row.skipped = (
                f"{method} at ranks {ranks} would not be smaller (params {params} vs {dense_params}, "
                f"MACs {macs} vs {dense_macs}); allow_larger=True keeps it anyway"
            )
            continue
        ready = (prebuilt or {}).get(name)
        if ready is not None and (ready.method, tuple(ready.ranks)) == (method, tuple(ranks)):
            new = copy.deepcopy(ready)
        else:
            new = cls.from_dense(layer, ranks, **options)
        row.method, row.ranks = method, tuple(ranks)
        row.params_after, row.macs_after = params, macs
        row.rel_error = _weight_error(layer, new)
        replace_module(work, name, new)

    if calibrating:
        from factorch.calibrate import calibrate_

        names = [
            r.name
            for r in report.layers
            if r.skipped is None and (cfg := plan.resolve(r.name)[0]) is not None and cfg.calibrate is not None
        ]
        result = calibrate_(work, reference, calib_data, config=calibrating[0].calibrate, layers=names)
        report.totals["calibration"] = result.to_dict()
        _note_calibration(report, result)
    earlier = (getattr(work, PLAN_ATTR, None) or {}).get("folded_bn", [])  # a model compressed before
    setattr(work, PLAN_ATTR, {"folded_bn": [list(p) for p in (*earlier, *folded)]})
    whole = None
    if inputs is not None:
        from factorch.profiling import profile

        p = profile(work, inputs)
        whole = {**before_totals, "params_after": p.total_params, "macs_after": p.total_macs}
    report.finalize(whole)
    if inputs is None:  # parameters are known for the whole model even without inputs
        report.totals.update(
            params_before=count_params(model),
            params_after=count_params(work),
            scope="model params; MACs of the listed layers (no example inputs)",
        )
        report.totals["params_ratio"] = report.totals["params_after"] / max(1, report.totals["params_before"])
    return work, report


def _note_calibration(report: CompressionReport, result) -> None:
    """Copy each layer's final relative output error into its report row."""
    by_name = {c.name: c for c in result.layers}
    for row in report.layers:
        c = by_name.get(row.name)
        if c is not None and c.skipped is None:
            row.output_error = c.act_error_after if c.act_error_after is not None else c.rel_error_linear


def compress_(model: nn.Module, config: MethodConfig | Plan | AutoConfig, **kwargs) -> CompressionReport:
    """In-place :func:`compress`; returns the report."""
    _, report = compress(model, config, inplace=True, **kwargs)
    return report
