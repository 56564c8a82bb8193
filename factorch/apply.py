"""``apply_plan``: the one function that compresses a model by a :class:`~factorch.Plan` of per-layer
configs, whatever their methods. ``factorch.compress``, ``AutoConfig``'s search and the multi-stage loop all
end here; this module imports none of them."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from factorch.config import MethodConfig, Plan, PruneConfig
from factorch.cost import Cost
from factorch.layers import CompressedLayer, FactorizedLayer, NotFactorizable, layer_class
from factorch.layers._spec import spec_of
from factorch.layers.base import count_params, layer_geometry
from factorch.registry import NotCompressible
from factorch.report import CompressionReport, LayerReport
from factorch.surgery import (
    candidate_layers,
    chain_stages,
    compressed_layers,
    conv_bn_pairs,
    fold_batchnorms,
    get_module,
    replace_module,
    trace_layers,
)

PLAN_ATTR = "_factorch_plan"  # on a compressed model: the folds applied (the layers describe themselves)
ALREADY_COMPRESSED = "already {done} ({method} at {what} {ranks}): shrink it with compress_in_stages or recompress"
EDGE_REASON = "first conv / final classifier kept dense (name it in a Plan to compress it)"


def as_inputs(example_inputs: Any) -> tuple | None:
    """``example_inputs`` as a tuple of tensors (``None`` stays ``None``)."""
    if example_inputs is None:
        return None
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def as_plan(config: MethodConfig | Plan) -> Plan:
    if isinstance(config, Plan):
        return config
    if isinstance(config, MethodConfig):
        return Plan({"_default": config})
    from factorch.registry import list_methods

    raise TypeError(
        f"config must be a method config (one of the registered methods: {', '.join(list_methods())}), "
        f"a Plan, an AutoConfig or a ChannelPruneConfig, got {type(config).__name__}"
    )


def edge_layers(names: Sequence[str], model: nn.Module) -> set[str]:
    """The first conv and the last Linear (in execution order when known) stay dense by default."""
    modules = dict(model.named_modules())
    convs = [n for n in names if isinstance(modules[n], (nn.Conv1d, nn.Conv2d))]
    linears = [n for n in names if isinstance(modules[n], nn.Linear)]
    return {x for x in (convs[:1] + linears[-1:])}


def dense_layer_cost(layer: nn.Module, input_size: tuple[int, ...] | None, per_position: int = 1) -> Cost:
    params, macs = FactorizedLayer.dense_cost(layer, input_size)
    bits = torch.finfo(layer.weight.dtype).bits if layer.weight.is_floating_point() else 32
    zeros = sum(int(p.numel() - torch.count_nonzero(p.detach())) for p in layer.parameters() if not p.is_meta)
    return Cost(params, params - zeros, weight_bits=bits, macs=macs * per_position)


def _fill_row(row: LayerReport, before: Cost, after: Cost | None) -> LayerReport:
    row.params_before, row.macs_before, row.size_before = before.params, before.macs, before.size_bytes
    if after is not None:
        row.params_after, row.macs_after, row.size_after = after.params, after.macs, after.size_bytes
        row.nonzero_after = after.nonzero_params
    return row


def compressed_row(name: str, layer: CompressedLayer, input_shape: tuple[int, ...] | None) -> LayerReport:
    """The report row of a layer that is already compressed: its dense layer's cost before, its own after."""
    dense = layer.spec.dense(device="meta")
    input_size, per_position = layer_geometry(dense, input_shape)
    before = dense_layer_cost(dense, input_size, per_position)
    after = layer.layer_cost(input_size).scaled_macs(per_position)
    row = LayerReport(name=name, type=type(dense).__name__, method=layer.method, ranks=tuple(layer.ranks))
    return _fill_row(row, before, after)


def _weight_error(dense: nn.Module, layer: CompressedLayer) -> float:
    w = dense.weight.detach().double()
    with torch.no_grad():
        return float((layer.reconstruct_weight().to(w.device) - w).norm() / w.norm().clamp_min(1e-300))


def model_storage(model: nn.Module) -> dict[str, int]:
    """``params``, ``nonzero_params`` and ``size_bytes`` of a model's parameters, compressed layers counted by
    their own :class:`~factorch.cost.Cost` (a pruned layer: its non-zeros plus a 1-bit mask), other parameters
    stored dense (their exact zeros are not counted as non-zero)."""
    params = nonzero = bits = 0
    inside: set[int] = set()
    for _, layer in compressed_layers(model):  # a chain's Cost counts its stages compressed in place
        cost = layer.layer_cost()
        params, nonzero, bits = params + cost.params, nonzero + cost.nonzero_params, bits + cost.size_bits
        inside.update(id(p) for p in layer.parameters())
    for p in model.parameters():
        if id(p) not in inside:  # a plain tensor is stored dense; its zeros (e.g. torch's own pruning) still count
            params, nonzero = params + p.numel(), nonzero + int(torch.count_nonzero(p.detach()))
            bits += p.numel() * p.element_size() * 8
    return {"params": params, "nonzero_params": nonzero, "size_bytes": int(-(-bits // 8))}


def _nests(cfg: MethodConfig | None, stage: nn.Module) -> bool:
    """Whether ``cfg``'s method compresses ``stage``, a dense stage of a factorized layer, in place."""
    if cfg is None:
        return False
    try:
        return bool(getattr(layer_class(cfg.method, stage), "nests_in_chains", False))
    except NotCompressible:
        return False


def _resolve(plan: Plan, name: str, chains: Mapping[str, str]) -> tuple[MethodConfig | None, str | None]:
    """The config of layer ``name``: its own key; for a stage of a factorized layer (``chains``: stage ->
    chain name), then the chain's exact key (``Plan({"conv1": QuantConfig(8)})`` quantizes a factorized
    ``conv1``'s stages; ``None`` leaves them); then patterns and ``_default``."""
    chain = chains.get(name)
    if chain is not None and name not in plan.layers and chain in plan.layers:
        return plan.layers[chain], chain
    return plan.resolve(name)


def _nested_stages(model: nn.Module, plan: Plan) -> list[tuple[str, nn.Module, str]]:
    """``(name, stage, chain name)`` of the dense stages of factorized layers that the plan's config for
    them compresses in place."""
    stages = list(chain_stages(model))
    chains = {n: c for n, _, c in stages}
    return [(n, m, c) for n, m, c in stages if _nests(_resolve(plan, n, chains)[0], m)]


def _check_names(model: nn.Module, plan: Plan) -> None:
    names_in_model = {n for n, _ in model.named_modules() if n}
    units = {
        n + ".": (n, "factorized" if isinstance(m, FactorizedLayer) else "compressed")
        for n, m in compressed_layers(model)
    }
    nested = {n for n, _, _ in _nested_stages(model, plan)}
    for name in plan.exact_names():
        if name not in names_in_model:
            get_module(model, name)  # raises with close matches
        if name in nested:
            continue
        for prefix, (outer, kind) in units.items():
            if name.startswith(prefix):
                raise ValueError(
                    f"Plan names {name!r}, a stage inside the {kind} layer {outer!r}: a {kind} layer is "
                    "shrunk as a unit (compress_in_stages, or its recompress method)"
                )


def _ordered_layers(work: nn.Module, plan: Plan, shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, nn.Module]]:
    """Dense candidates then compressed layers, in execution order when traced; checks the plan's patterns."""
    layers = list(candidate_layers(work))
    stages = _nested_stages(work, plan)  # e.g. a factorized chain's convs, quantized in place
    layers += [(n, m) for n, m, _ in stages]
    for pattern_key, pattern in plan.patterns():
        if not any(pattern.fullmatch(n) for n, _ in layers):
            raise ValueError(f"Plan pattern {pattern_key!r} matches no compressible layer of the model")
    opened = {chain for _, _, chain in stages}
    # compressed layers are reported as they are, unless their stages are compressed now
    layers += [(n, m) for n, m in compressed_layers(work) if n not in opened]
    if shapes:
        order = {n: i for i, n in enumerate(shapes)}
        layers.sort(key=lambda item: order.get(item[0], len(order)))
    return layers


def _global_prune_counts(layers: list[tuple[str, nn.Module]], plan: Plan, edges: set[str]) -> dict[str, int]:
    """Weights kept per layer for every ``PruneConfig(scope="global")``: one magnitude threshold across the
    layers each such config applies to (the largest ``(1 - sparsity)`` share of all their weights is kept)."""
    groups: dict[int, tuple[PruneConfig, list[tuple[str, nn.Module]]]] = {}
    for name, layer in layers:
        if isinstance(layer, CompressedLayer):
            continue
        cfg, key = plan.resolve(name)
        if not isinstance(cfg, PruneConfig) or cfg.scope != "global" or (name in edges and key != name):
            continue
        if type(layer) not in (nn.Conv1d, nn.Conv2d, nn.Linear):
            continue
        groups.setdefault(id(cfg), (cfg, []))[1].append((name, layer))
    counts: dict[str, int] = {}
    for cfg, members in groups.values():
        sizes = [m.weight.numel() for _, m in members]
        total = sum(sizes)
        if isinstance(cfg.sparsity, float):
            keep = max(len(members), total - int(round(cfg.sparsity * total)))
        else:
            keep = min(int(cfg.sparsity), total)
        magnitudes = torch.cat([m.weight.detach().abs().flatten().float() for _, m in members])
        chosen = torch.zeros(total, dtype=torch.bool)
        chosen[torch.topk(magnitudes, keep, sorted=False).indices] = True
        for (name, _), part in zip(members, chosen.split(sizes)):
            counts[name] = max(1, int(part.sum()))  # a layer keeps at least one weight
    return counts


def _refused(cls, cfg: MethodConfig, method: str, ranks, before: Cost, after: Cost, row: LayerReport) -> bool:
    """Say in ``row`` why the compressed layer is not kept (not smaller, and no ``allow_larger``)."""
    why_not = cls.worth_it(before, after)
    if why_not is None or getattr(cfg, "allow_larger", False):
        return False
    row.skipped = f"{method} at {'/'.join(cls.rank_names)} {ranks} would not be smaller ({why_not})"
    if hasattr(cfg, "allow_larger"):
        row.skipped += "; allow_larger=True keeps it anyway"
    return True


def _compresses_edges(cfg: MethodConfig, layer: nn.Module) -> bool:
    """Whether ``cfg``'s method compresses the first conv / final classifier by default (quantization does)."""
    try:
        return bool(getattr(layer_class(cfg.method, layer), "compress_edges", False))
    except NotCompressible:
        return False


def _compress_layer(
    work: nn.Module,
    name: str,
    layer: nn.Module,
    cfg: MethodConfig,
    key: str | None,
    row: LayerReport,
    *,
    input_size: tuple[int, ...] | None,
    per_position: int,
    before: Cost,
    option: Any,
    prebuilt: Mapping[str, CompressedLayer] | None,
) -> None:
    """Replace ``layer`` by its compressed form per ``cfg`` (or say in ``row`` why not)."""
    method = cfg.method
    options = cfg.options()
    try:
        cls = layer_class(method, layer)
        ranks = cls.resolve_ranks(layer, option, input_size=input_size, name=name, **options)
        after = cls.option_cost(spec_of(layer), ranks, input_size, **options).scaled_macs(per_position)
    except (NotFactorizable, NotCompressible) as err:
        row.skipped = str(err)
        return
    except ValueError as err:
        if key == name or "above the maximum" not in str(err):
            raise ValueError(f"layer {name!r} ({type(layer).__name__}): {err}") from err
        row.skipped = str(err)  # a model-wide rank that this particular layer cannot take
        return
    priced_when_built = getattr(cls, "priced_when_built", False)  # its cost depends on the weights
    if not priced_when_built and _refused(cls, cfg, method, ranks, before, after, row):
        return
    ready = (prebuilt or {}).get(name)
    if ready is not None and (ready.method, tuple(ready.ranks)) == (method, tuple(ranks)):
        new = copy.deepcopy(ready)
    else:
        new = cls.from_dense(layer, ranks, **options)
    after = new.layer_cost(input_size).scaled_macs(per_position)  # as built (e.g. the zeros it keeps)
    if priced_when_built and _refused(cls, cfg, method, ranks, before, after, row):
        return
    row.method, row.ranks = method, tuple(ranks)
    _fill_row(row, before, after)
    row.rel_error = _weight_error(layer, new)
    replace_module(work, name, new)


def apply_plan(
    model: nn.Module,
    plan: Plan | MethodConfig,
    *,
    example_inputs: Tensor | tuple | None = None,
    inplace: bool = False,
    keep_edges: bool = True,
    fold_bn: bool | None = None,
    prebuilt: Mapping[str, CompressedLayer] | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """Compress the layers of ``model`` by ``plan`` (no calibration, no search: see ``factorch.compress``).

    Args:
        model: the network (left untouched unless ``inplace=True``).
        plan: per-layer configs of any registered methods (a single config applies to every layer).
        example_inputs: inputs of one forward pass (execution order, input sizes, whole-model totals).
        inplace: modify ``model`` itself.
        keep_edges: leave the first conv and the final classifier dense unless the plan names them exactly.
        fold_bn: fold every conv -> BatchNorm pair first (``None``: when any config of the plan says so).
        prebuilt: layers already compressed from exactly the dense layer the plan names, with its method and
            ranks (AutoConfig's search made and measured them); used (copied) instead of compressing again.

    Returns:
        ``(compressed model, report)``.
    """
    plan = as_plan(plan)
    inputs = as_inputs(example_inputs)
    _check_names(model, plan)
    work = model if inplace else copy.deepcopy(model)
    before_totals = _model_totals(work, inputs)
    if fold_bn is None:
        fold_bn = any(cfg is not None and cfg.fold_bn for cfg in plan.layers.values())
    folded = fold_batchnorms(work, conv_bn_pairs(work)) if fold_bn else []
    shapes = trace_layers(work, inputs) if inputs is not None else {}
    layers = _ordered_layers(work, plan, shapes)
    dense_names = [n for n, m in layers if not isinstance(m, CompressedLayer) and (n in shapes or not shapes)]
    edges = edge_layers(dense_names, work) if keep_edges else set()
    global_counts = _global_prune_counts(layers, plan, edges)

    chains = {n: c for n, _, c in chain_stages(work)}
    report = CompressionReport(config=plan.to_dict())
    for name, layer in layers:
        if isinstance(layer, CompressedLayer):
            row = compressed_row(name, layer, shapes.get(name))
            row.params_before, row.macs_before, row.size_before = row.params_after, row.macs_after, row.size_after
            row.skipped = ALREADY_COMPRESSED.format(
                done="factorized" if isinstance(layer, FactorizedLayer) else "compressed",
                method=layer.method,
                what="ranks" if isinstance(layer, FactorizedLayer) else "/".join(layer.rank_names),
                ranks="x".join(map(str, layer.ranks)),
            )
            row.method = row.ranks = row.nonzero_after = None
            report.layers.append(row)
            continue
        cfg, key = _resolve(plan, name, chains)
        row = LayerReport(name=name, type=type(layer).__name__)
        input_size, per_position = layer_geometry(layer, shapes.get(name))
        before = dense_layer_cost(layer, input_size, per_position)
        _fill_row(row, before, None)
        report.layers.append(row)
        if cfg is None:
            row.skipped = "left dense by the plan" if key is not None else "not named in the plan"
        elif name in edges and key != name and not _compresses_edges(cfg, layer):
            row.skipped = EDGE_REASON
        else:
            option = global_counts.get(name, cfg.option)
            _compress_layer(
                work, name, layer, cfg, key, row, input_size=input_size, per_position=per_position,
                before=before, option=option, prebuilt=prebuilt,
            )  # fmt: skip
    edits = dict(getattr(work, PLAN_ATTR, None) or {})  # a model compressed before keeps its edits
    edits["folded_bn"] = [list(p) for p in (*edits.get("folded_bn", []), *folded)]
    setattr(work, PLAN_ATTR, edits)
    report.totals["folded_bn"] = [list(p) for p in folded]
    _finish_totals(report, model, work, inputs, before_totals)
    return work, report


def _model_totals(model: nn.Module, inputs: tuple | None) -> dict[str, Any]:
    store = model_storage(model)
    totals = {"nonzero_params_before": store["nonzero_params"], "size_bytes_before": store["size_bytes"]}
    if inputs is not None:
        from factorch.profiling import profile

        p = profile(model, inputs)
        totals.update(params_before=p.total_params, macs_before=p.total_macs)
    return totals


def _finish_totals(
    report: CompressionReport, model: nn.Module, work: nn.Module, inputs: tuple | None, before: dict[str, Any]
) -> None:
    whole = None
    if inputs is not None:
        from factorch.profiling import profile

        p = profile(work, inputs)
        whole = {
            "params_before": before["params_before"],
            "macs_before": before["macs_before"],
            "params_after": p.total_params,
            "macs_after": p.total_macs,
        }
    report.finalize(whole)
    if inputs is None:  # parameters are known for the whole model even without inputs
        report.totals.update(
            params_before=count_params(model),
            params_after=count_params(work),
            scope="model params; MACs of the listed layers (no example inputs)",
        )
        report.totals["params_ratio"] = report.totals["params_after"] / max(1, report.totals["params_before"])
    report.totals.update(storage_totals(before["nonzero_params_before"], before["size_bytes_before"], work))


def storage_totals(nonzero_before: int, size_before: int, model: nn.Module) -> dict[str, Any]:
    """The report's non-zero parameter and stored-bytes totals of ``model`` against the figures before."""
    store = model_storage(model)
    return {
        "nonzero_params_before": nonzero_before,
        "nonzero_params_after": store["nonzero_params"],
        "nonzero_params_ratio": store["nonzero_params"] / max(1, nonzero_before),
        "size_bytes_before": size_before,
        "size_bytes": store["size_bytes"],
        "size_ratio": store["size_bytes"] / max(1, size_before),
        # stored bits per non-zero parameter, bookkeeping included (32 for a dense float32 model)
        "bits_per_weight_before": 8 * size_before / max(1, nonzero_before),
        "bits_per_weight": 8 * store["size_bytes"] / max(1, store["nonzero_params"]),
    }


def note_calibration(report: CompressionReport, result) -> None:
    """Copy each layer's final relative output error (after calibration) into its report row."""
    by_name = {c.name: c for c in result.layers}
    for row in report.layers:
        c = by_name.get(row.name)
        if c is not None and c.skipped is None:
            row.output_error = c.act_error_after if c.act_error_after is not None else c.rel_error_linear


__all__ = ["PLAN_ATTR", "apply_plan", "as_inputs", "as_plan", "model_storage", "note_calibration"]
