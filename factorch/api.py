"""``compress`` / ``compress_``: compress a model by one config, a per-layer plan, a whole-network target
(``AutoConfig``), structured pruning (``ChannelPruneConfig``), or a list of these applied in order."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from factorch.apply import PLAN_ATTR, apply_plan, as_inputs, as_plan, model_storage, note_calibration, storage_totals
from factorch.auto.config import AutoConfig, Target
from factorch.calibrate.config import CalibrationConfig, as_calibration
from factorch.config import MethodConfig, Plan
from factorch.report import CompressionReport

ConfigLike = MethodConfig | Plan | AutoConfig


def compress(
    model: nn.Module,
    config: ConfigLike | Sequence[ConfigLike],
    *,
    example_inputs: Tensor | tuple | None = None,
    inplace: bool = False,
    keep_edges: bool = True,
    calib_data: Any = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    fold_bn: bool | None = None,
    calibrate: CalibrationConfig | int | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """Compress the layers of ``model``.

    Args:
        model: the network (left untouched unless ``inplace=True``).
        config: one method config for every layer (``Tucker2Config``, ``PruneConfig``...), a :class:`Plan` of
            per-layer configs, an :class:`~factorch.AutoConfig` (a whole-network target; methods and options
            are chosen per layer), a :class:`~factorch.ChannelPruneConfig` (structured pruning), or a list of
            these applied in order, each target relative to the original model.
        example_inputs: inputs of one forward pass; used for the execution order, each layer's input size
            (MACs-based ranks) and whole-model totals. Without them, MACs assume 32x32 inputs.
        inplace: modify ``model`` itself.
        keep_edges: leave the first conv and the final classifier dense unless a Plan names them exactly
            (for an AutoConfig, its own ``keep_edges`` decides).
        calib_data: calibration inputs (a tensor, or a DataLoader yielding ``(inputs, targets)`` or inputs): on
            them an AutoConfig scores candidate layers, ``ChannelPruneConfig(criterion="activation")`` ranks
            channels, and ``calibrate`` refits the compressed layers.
        eval_fn: AutoConfig only: ``eval_fn(model) -> score`` (higher is better, e.g. accuracy in %), used to
            score candidates (objective ``"accuracy"``), to check ``max_accuracy_drop`` and to report the drop.
        fold_bn: fold every conv -> BatchNorm pair into the conv first (a whole-model action; ``None``: as the
            configs say).
        calibrate: a :class:`~factorch.CalibrationConfig` (or a number of samples): after compressing, refit
            the factorized layers (with a ``ChannelPruneConfig``: every layer that lost input channels) to the
            dense network's responses on ``calib_data`` (a whole-model action; a config's own ``calibrate``
            field does the same for the layers it compresses).

    Returns:
        ``(compressed model, report)``.

    References:
        See each layer class (Kim et al. 2016; Lebedev et al. 2015; Jaderberg et al. 2014; Novikov et al. 2015;
        Han et al. 2015; Li et al. 2017).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    calibrate = as_calibration(calibrate)
    if isinstance(config, (list, tuple)):
        return compress_sequence(
            model, list(config), example_inputs=example_inputs, inplace=inplace, keep_edges=keep_edges,
            calib_data=calib_data, eval_fn=eval_fn, fold_bn=fold_bn, calibrate=calibrate,
        )  # fmt: skip
    from factorch.prune.config import ChannelPruneConfig

    if isinstance(config, ChannelPruneConfig):
        if eval_fn is not None:
            raise ValueError("eval_fn is used by AutoConfig only; ChannelPruneConfig does not take it")
        from factorch.prune.apply import channel_prune

        return channel_prune(
            model, config, example_inputs=as_inputs(example_inputs), calib_data=calib_data, inplace=inplace,
            fold_bn=fold_bn, calibrate=calibrate,
        )  # fmt: skip
    if isinstance(config, AutoConfig):
        from factorch.auto.closed_loop import auto_compress

        if fold_bn is not None and fold_bn != config.fold_bn:
            config = copy.copy(config)
            config.fold_bn = fold_bn
        if calibrate is not None:
            config = copy.copy(config)
            config.calibrate = calibrate
        return auto_compress(
            model, config, inputs=as_inputs(example_inputs), calib_data=calib_data, eval_fn=eval_fn, inplace=inplace
        )
    if eval_fn is not None:
        raise ValueError("eval_fn is used by AutoConfig only; this config does not take it")
    return _compress_by_plan(
        model, as_plan(config), example_inputs=example_inputs, inplace=inplace, keep_edges=keep_edges,
        calib_data=calib_data, fold_bn=fold_bn, calibrate=calibrate,
    )  # fmt: skip


def _compress_by_plan(
    model: nn.Module,
    plan: Plan,
    *,
    example_inputs: Any,
    inplace: bool,
    keep_edges: bool,
    calib_data: Any,
    fold_bn: bool | None,
    calibrate: CalibrationConfig | None,
) -> tuple[nn.Module, CompressionReport]:
    """:func:`apply_plan`, then calibration of the layers whose config (or the model-level argument) asks."""
    configs = [c for c in plan.layers.values() if c is not None]
    per_layer = [c for c in configs if c.calibrate is not None]
    settings = calibrate if calibrate is not None else (per_layer[0].calibrate if per_layer else None)
    readers = [c for c in configs if c.uses_calib_data]  # e.g. activation ranges of quantized layers
    if calib_data is not None and settings is None and not readers:
        raise ValueError(
            "calib_data is used for calibration: pass calibrate=factorch.CalibrationConfig(...) "
            "(or use an AutoConfig / ChannelPruneConfig)"
        )
    if settings is not None and calib_data is None:
        raise ValueError("calibrate=... needs calib_data (a tensor or DataLoader of calibration inputs)")
    if readers and calib_data is None:
        raise ValueError(
            f"{type(readers[0]).__name__}(act_bits={getattr(readers[0], 'act_bits', '?')}) needs calib_data: the "
            "activation ranges are set on calibration inputs (or act_bits=32 to quantize the weights only)"
        )
    _refuse_requantizing(model, configs)
    if any(c.keeps_pruned_zeros for c in configs):  # pruned weights: zeros that k-means keeps (Deep Compression)
        model = _pruned_as_dense(model, inplace=inplace)
    original = copy.deepcopy(model) if settings is not None and inplace else model
    work, report = apply_plan(
        model, plan, example_inputs=example_inputs, inplace=inplace, keep_edges=keep_edges, fold_bn=fold_bn
    )
    if settings is not None:
        names = [
            r.name
            for r in report.layers
            if r.skipped is None and (calibrate is not None or (c := plan.resolve(r.name)[0]) and c.calibrate)
        ]
        calibrate_layers(work, original, calib_data, settings, names, report)
    if readers:
        from factorch.data.calib import calibration_inputs
        from factorch.layers.quantized import calibrate_activations

        n = max(getattr(c, "calib_samples", 512) for c in readers)
        inputs = calibration_inputs(calib_data, n)
        done = calibrate_activations(work, inputs)
        report.totals["activation_calibration"] = {"n_samples": int(inputs.shape[0]), "layers": len(done)}
    return work, report


def _refuse_requantizing(model: nn.Module, configs: list) -> None:
    """Quantizing a quantized layer again would stack two grids: an error naming the layer."""
    from factorch.config import QuantConfig
    from factorch.layers.quantized import QuantizedLayer

    if any(isinstance(c, QuantConfig) for c in configs):
        done = [n for n, m in model.named_modules() if isinstance(m, QuantizedLayer)]
        if done:
            raise ValueError(
                f"layer {done[0]!r} is already quantized ({len(done)} such layers): quantize the float model "
                "once, with the bit widths wanted (its to_dense() gives the dequantized float layer)"
            )


def calibrate_layers(
    work: nn.Module,
    original: nn.Module,
    calib_data: Any,
    settings: CalibrationConfig,
    names: list[str],
    report: CompressionReport,
) -> None:
    """Refit the factorized layers ``names`` of ``work`` to the responses of ``original`` (its BatchNorms
    folded as ``work``'s were), and note the result in ``report``."""
    from factorch.calibrate import calibrate_
    from factorch.layers import FactorizedLayer
    from factorch.surgery import fold_batchnorms

    reference = copy.deepcopy(original)
    done = {tuple(p) for p in (getattr(original, PLAN_ATTR, None) or {}).get("folded_bn", [])}
    fold_batchnorms(reference, [tuple(p) for p in report.totals.get("folded_bn", []) if tuple(p) not in done])
    modules = dict(work.named_modules())
    names = [n for n in names if isinstance(modules.get(n), FactorizedLayer)]
    result = calibrate_(work, reference, calib_data, config=settings, layers=names)
    report.totals["calibration"] = result.to_dict()
    note_calibration(report, result)


def _relative(config: Any, totals: dict[str, float]) -> Any:
    """``config`` with its fraction target rescaled from the original model to the current one."""
    from factorch.prune.config import ChannelPruneConfig

    if not isinstance(config, (AutoConfig, ChannelPruneConfig)) or config.target is None:
        return config
    goal = Target.parse(config.target)
    if goal.fraction is None or goal.kind == "latency":
        return config
    now = totals.get(goal.kind, 1.0)
    fraction = goal.fraction / now
    if fraction > 1:
        return None  # already within this target
    new = copy.copy(config)
    new.target = f"{goal.kind}={fraction:.6g}"
    return new


def compress_sequence(
    model: nn.Module, configs: list[Any], *, example_inputs: Any, inplace: bool, eval_fn, **kwargs
) -> tuple[nn.Module, CompressionReport]:
    """See :func:`factorch.compress` (a list of configs). The report is the last stage's, with totals and
    ratios relative to ``model`` and one entry per stage in ``report.stages``."""
    from factorch.profiling import profile
    from factorch.prune.config import ChannelPruneConfig

    if not configs:
        raise ValueError("compress: the list of configs is empty")
    inputs = as_inputs(example_inputs)
    if inputs is None:
        raise ValueError("compress with a list of configs needs example_inputs (targets are relative to the model)")
    first = profile(model, inputs)
    store = model_storage(model)
    base = {"params": first.total_params, "macs": first.total_macs, "nonzero": store["nonzero_params"]}
    base_size = store["size_bytes"]
    ratios = {"macs": 1.0, "params": 1.0, "size": 1.0}
    work, stages, report = model, [], None
    for i, config in enumerate(configs):
        stage_config = _relative(config, ratios)
        if stage_config is None:
            stages.append({"stage": i + 1, "config": _describe(config), "status": "target already met"})
            continue
        own = inplace or work is not model  # never the caller's model unless inplace=True
        if isinstance(stage_config, AutoConfig) and i > 0:
            work = _pruned_as_dense(work, inplace=own)
        stage_kwargs = dict(kwargs)
        if isinstance(stage_config, ChannelPruneConfig):
            stage_kwargs["calibrate"] = None  # calibration refits the factorizing steps' layers
        if not _takes_calib_data(stage_config, stage_kwargs.get("calibrate")):
            stage_kwargs["calib_data"] = None
        stage_eval = eval_fn if isinstance(stage_config, AutoConfig) else None
        work, report = compress(
            work, stage_config, example_inputs=inputs, inplace=own, eval_fn=stage_eval, **stage_kwargs
        )
        p = profile(work, inputs)
        s = model_storage(work)
        ratios = {
            "macs": p.total_macs / base["macs"],
            "params": s["nonzero_params"] / base["nonzero"],
            "size": s["size_bytes"] / base_size,
        }
        stages.append(
            {
                "stage": i + 1,
                "config": _describe(config),
                "applied_as": _describe(stage_config),
                "macs_ratio": ratios["macs"],
                "params_ratio": p.total_params / base["params"],
                "nonzero_params_ratio": ratios["params"],
                "status": "done",
            }
        )
    if report is None:
        work = model if inplace else copy.deepcopy(model)
        report = CompressionReport()
    p = profile(work, inputs)
    report.totals.update(
        params_before=base["params"],
        params_after=p.total_params,
        macs_before=base["macs"],
        macs_after=p.total_macs,
        params_ratio=p.total_params / base["params"],
        macs_ratio=p.total_macs / base["macs"],
        scope="model",
        **storage_totals(base["nonzero"], base_size, work),
    )
    report.stages = stages
    report.config = {"type": "sequence", "configs": [_describe(c) for c in configs]}
    return work, report


def _pruned_as_dense(model: nn.Module, *, inplace: bool) -> nn.Module:
    """``model`` with its pruned layers as dense layers holding the zeros, so a search after a pruning step
    may choose any method (or a higher sparsity) for them; factorized layers stay as they are."""
    from factorch.layers import PrunedLayer
    from factorch.surgery import compressed_layers, replace_module

    pruned = [(n, m) for n, m in compressed_layers(model) if isinstance(m, PrunedLayer)]
    if pruned and not inplace:
        model = copy.deepcopy(model)
        pruned = [(n, model.get_submodule(n)) for n, _ in pruned]
    for name, layer in pruned:
        replace_module(model, name, layer.to_dense())
    return model


def _takes_calib_data(config: Any, calibrate: Any) -> bool:
    """Whether a step of a list uses calibration data (a search, channel ranking, or calibration)."""
    from factorch.prune.config import ChannelPruneConfig

    if isinstance(config, (AutoConfig, ChannelPruneConfig)) or calibrate is not None:
        return True
    layers = config.layers.values() if isinstance(config, Plan) else [config]
    return any(c is not None and (c.calibrate is not None or c.uses_calib_data) for c in layers)


def _describe(config: Any) -> Any:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return repr(config)


def compress_(model: nn.Module, config: ConfigLike | Sequence[ConfigLike], **kwargs) -> CompressionReport:
    """In-place :func:`compress`; returns the report."""
    _, report = compress(model, config, inplace=True, **kwargs)
    return report
