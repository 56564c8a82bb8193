"""Multi-stage compression (MUSCO): compress, fine-tune, compress the factorized layers further, and so on.

Each stage shrinks the model a step toward the goal and recovers accuracy by distillation before the next, so
no single step has to remove as much as a one-shot compression. Already-factorized layers are shrunk as units
by their own method (:meth:`factorch.layers.FactorizedLayer.recompress`), never by factorizing their stages.

References:
    Gusak et al. 2019, "Automated multi-stage compression of neural networks" (MUSCO).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import numbers
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from factorch.api import compress
from factorch.apply import as_inputs, as_plan, compressed_row, edge_layers
from factorch.auto.config import AutoConfig, Target
from factorch.calibrate.config import CalibrationConfig
from factorch.config import MethodConfig, Plan, PruneConfig
from factorch.layers import CompressedLayer, PrunedLayer
from factorch.layers.base import layer_geometry
from factorch.progress import progress_bar
from factorch.prune.config import ChannelPruneConfig
from factorch.rank import FractionRank, MACRatioRank, ParamRatioRank, RankLike, RankProblem, as_selector
from factorch.rank.bisect import largest_feasible
from factorch.report import CompressionReport
from factorch.surgery import candidate_layers, compressed_layers, replace_module, trace_layers

STATE_FILE = "stages.json"
REPORT_FILE = "report.json"
STATE_FORMAT = "factorch-stages"
STATE_VERSION = 1
BISECTION_STEPS = 10
EDGE_REASON = "first conv / final classifier kept dense (name it in a Plan to compress it)"


def stage_fractions(fraction: float, stages: int) -> list[float]:
    """The geometric schedule ``fraction ** (i / stages)``, ``i = 1 .. stages`` (e.g. 0.33 in 2: 0.574, 0.33)."""
    return [fraction ** (i / stages) for i in range(1, stages + 1)]


def _totals(model: nn.Module, inputs: tuple) -> dict[str, int]:
    from factorch.profiling import profile

    p = profile(model, inputs)
    return {"params": p.total_params, "macs": p.total_macs}


def _relative_totals(report: CompressionReport, model: nn.Module, inputs: tuple, original: dict[str, int]) -> None:
    """Rewrite the report's whole-model totals relative to the original model (not the stage's input)."""
    now = _totals(model, inputs)
    report.totals.update(
        params_before=original["params"],
        params_after=now["params"],
        macs_before=original["macs"],
        macs_after=now["macs"],
        params_ratio=now["params"] / max(1, original["params"]),
        macs_ratio=now["macs"] / max(1, original["macs"]),
        scope="model (relative to the original)",
    )


def _option_text(cfg: MethodConfig, option: Any) -> str:
    if isinstance(cfg, PruneConfig):
        return f"sparsity {option:.4g}" if isinstance(option, float) else f"{option} weights kept"
    return _rank_text(option)


def _rank_text(rank: RankLike) -> str:
    selector = as_selector(rank)
    if isinstance(selector, (MACRatioRank, ParamRatioRank)):
        return f"{selector.to_json().partition(':')[0]}:{selector.ratio:.4g} per layer"
    if isinstance(selector, FractionRank):
        return f"{selector.fraction:.4g} of full rank"
    value = selector.to_json()
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


# -- one stage ---------------------------------------------------------------------------------------------
def _uniform_stage(
    current: nn.Module,
    plan: Plan,
    rank_for: Callable[[MethodConfig], RankLike],
    *,
    inputs: tuple,
    edges: set[str],
    calib_data: Any,
) -> tuple[nn.Module, CompressionReport, bool]:
    """Recompress the factorized layers and factorize the dense ones, each at ``rank_for(its config)``.

    Returns ``(model, report, changed)``; ``changed`` is False when no layer shrank.
    """
    work = copy.deepcopy(current)
    shapes = trace_layers(work, inputs)
    errors: dict[str, float] = {}
    for name, layer in list(compressed_layers(work)):
        cfg, _ = plan.resolve(name)
        if cfg is None or cfg.method != layer.method or name in edges:
            continue  # left as it is (the plan leaves it alone, or another method made it)
        if isinstance(layer, PrunedLayer):  # pruned again from its dense form: its zeros are the smallest weights
            replace_module(work, name, layer.to_dense())
            continue
        input_size, _ = layer_geometry(layer.spec.dense(device="meta"), shapes.get(name))
        rank = rank_for(cfg)
        if isinstance(as_selector(rank), FractionRank):  # a fraction of the dense layer's full rank
            full = type(layer).max_ranks(layer.spec, layer.options)
            rank = as_selector(rank)(RankProblem(layer.method, full, name=name))
        if isinstance(rank, (int, tuple, list)) and not isinstance(rank, bool):  # fixed ranks: never grow
            wanted = (rank,) * len(layer.ranks) if isinstance(rank, int) else tuple(rank)
            rank = tuple(min(r, c) for r, c in zip(wanted, layer.ranks))
        new = layer.recompress(rank, input_size=input_size, name=name)
        if new.ranks != layer.ranks:
            with torch.no_grad():
                old_w, new_w = layer.reconstruct_weight(), new.reconstruct_weight()
                errors[name] = float((new_w - old_w).norm() / old_w.norm().clamp_min(1e-300))
            replace_module(work, name, new)

    dense_names = [n for n, _ in candidate_layers(work)]
    layers: dict[str, MethodConfig | None] = {}
    patterns = dict(plan.patterns())
    for key, cfg in plan.layers.items():
        if key in patterns and not any(patterns[key].fullmatch(n) for n in dense_names):
            continue  # every layer it matched is factorized by now
        layers[key] = None if cfg is None else cfg.with_option(rank_for(cfg))
    layers.update({name: None for name in edges})
    stage_plan = Plan(layers)
    calibrating = any(c is not None and c.calibrate is not None for c in stage_plan.layers.values())
    work, report = compress(
        work,
        stage_plan,
        example_inputs=inputs,
        inplace=True,
        keep_edges=False,
        calib_data=calib_data if calibrating else None,
    )
    modules = dict(work.named_modules())
    changed = bool(errors)
    for i, row in enumerate(report.layers):
        layer = modules.get(row.name)
        if isinstance(layer, CompressedLayer) and row.skipped is not None:  # compressed in an earlier stage
            new_row = compressed_row(row.name, layer, shapes.get(row.name))
            new_row.rel_error = errors.get(row.name)  # the error this stage's recompression added
            report.layers[i] = new_row
        elif row.skipped is None:
            changed = True
        elif row.name in edges:
            row.skipped = EDGE_REASON
    done = sum(row.skipped is None for row in report.layers)
    report.totals.update(layers_compressed=done, layers_skipped=len(report.layers) - done)
    report.config = plan.to_dict()
    return work, report, changed


def _auto_stage(
    current: nn.Module, config: AutoConfig, fraction: float, *, inputs: tuple, original: dict[str, int], calib: Any
) -> tuple[nn.Module, CompressionReport, bool]:
    """AutoConfig at ``fraction`` of the original model, on the current model with its factorized layers made
    dense again (exactly, by ``to_dense``): the search sees every fine-tuned kernel and may pick any method
    and rank for it (Tucker-2 of such a kernel equals recompressing the Tucker-2 layer it came from)."""
    work = copy.deepcopy(current)
    for name, layer in list(compressed_layers(work)):
        replace_module(work, name, layer.to_dense())
    kind = config.parsed_target.kind
    goal = fraction
    if kind in ("macs", "params"):  # the search takes the target relative to the model it is given
        goal = min(1.0, fraction * original[kind] / max(1, _totals(work, inputs)[kind]))
    stage_config = dataclasses.replace(config, target=f"{kind}={goal!r}")
    built, report = compress(work, stage_config, example_inputs=inputs, calib_data=calib)
    return built, report, True


def _channel_stage(
    current: nn.Module,
    config: ChannelPruneConfig,
    fraction: float,
    *,
    inputs: tuple,
    original: dict[str, int],
    calib: Any,
    calibrate: CalibrationConfig | None,
) -> tuple[nn.Module, CompressionReport, bool]:
    """Structured pruning of the current model to ``fraction`` of the original model's MACs / parameters;
    with ``calibrate``, the layers that lost inputs are refitted to the current model's responses."""
    kind = config.parsed_target.kind
    goal = fraction * original[kind] / max(1, _totals(current, inputs)[kind])
    if goal >= 1.0:
        return copy.deepcopy(current), compress(current, Plan({}), example_inputs=inputs)[1], False
    stage_config = dataclasses.replace(config, target=f"{kind}={goal!r}")
    built, report = compress(current, stage_config, example_inputs=inputs, calib_data=calib, calibrate=calibrate)
    return built, report, True


# -- settings and checkpoints ------------------------------------------------------------------------------
def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def compress_in_stages(
    model: nn.Module,
    config: MethodConfig | Plan | AutoConfig,
    *,
    stages: int,
    train_data: DataLoader | Dataset | None,
    example_inputs: Tensor | tuple,
    target: str | None = None,
    calib_data: Any = None,
    finetune_epochs: int = 1,
    teacher: nn.Module | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    max_accuracy_drop: float | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    keep_edges: bool = True,
    lr: float = 0.01,
    temperature: float = 4.0,
    alpha: float = 0.9,
    batch_size: int | None = None,
    weight_decay: float = 5e-4,
    seed: int = 0,
    schedule: str = "polynomial",
    inplace: bool = False,
    show_progress: bool = True,
    on_stage_end: Callable[[int, dict[str, Any]], None] | None = None,
    calibrate: CalibrationConfig | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """Compress ``model`` in ``stages`` steps, fine-tuning with distillation from the original after each.

    What a stage compresses to depends on the config:

    * :class:`~factorch.AutoConfig` (``"macs=F"``, ``"params=F"``, ``"latency=F"``): stage ``i`` of ``K``
      meets ``F ** (i / K)`` of the *original* model (0.33 in 2 stages: 0.574, then 0.33). The factorized
      layers are made dense again (exactly, ``to_dense``) and the AutoConfig search runs on that model at the
      stage target converted to its totals, so it scores every fine-tuned kernel and may change a layer's
      method or rank. ``AutoConfig(max_accuracy_drop=...)`` acts as ``max_accuracy_drop`` here.
    * a method config or :class:`~factorch.Plan` with ``target="macs=F"`` (or ``"params=F"``): stage ``i``
      meets ``F ** (i / K)`` of the original model with one per-layer cost ratio (bisection), the configs'
      methods and options, and their rank rules replaced by that ratio.
    * a method config or Plan without ``target``: a cost ratio (``"macs:f"``, ``"params:f"``) or a fraction
      of full rank ``f`` is the final goal per layer, reached in the steps ``f ** (i / K)`` (of the dense
      layer's cost or full rank); ``"vbmf"`` and ``"energy:e"`` are applied again at every stage to each layer
      as it stands (VBMF on the fine-tuned factorized kernels, weakened VBMF moving toward their current
      ranks, as in MUSCO); fixed ranks are reached in the first stage. The run ends early when a stage
      shrinks no layer (``status`` ``"converged: ..."``).

    In every stage, layers already factorized by the config's method are shrunk as units
    (:meth:`~factorch.layers.FactorizedLayer.recompress`: Tucker-2 decomposes its core and merges the new
    factors into its 1x1 convs, SVD layers truncate their product); ranks never grow. Calibration settings on
    a method config apply to the layers newly factorized in a stage. When ``eval_fn`` and
    ``max_accuracy_drop`` are given and a stage's drop after fine-tuning exceeds it, the run stops and returns
    the previous stage's model (the original model when it is the first stage).

    Args:
        model: the trained network (left untouched unless ``inplace=True``).
        config: a method config, a :class:`~factorch.Plan` or an :class:`~factorch.AutoConfig` with a fraction.
        stages: number of stages ``K >= 1``.
        train_data: fine-tuning data, a DataLoader or Dataset of ``(input, label)`` (see
            :func:`factorch.finetune`); needed when ``stages > 1`` or ``finetune_epochs > 0``.
        example_inputs: inputs of one forward pass (execution order, layer input sizes, whole-model totals).
        target: a whole-model ``"macs=F"`` / ``"params=F"`` for a method config or Plan (see above).
        calib_data: calibration inputs for an AutoConfig (default: ``train_data``) or for calibration.
        finetune_epochs: epochs of distillation after each stage (0: none).
        teacher: the distillation teacher (default: the original ``model``).
        eval_fn: ``eval_fn(model) -> score``, higher is better (e.g. accuracy in %); scores each stage before
            and after fine-tuning. It never scores AutoConfig candidates here (those use ``calib_data``).
        max_accuracy_drop: the largest allowed drop of ``eval_fn``'s score below the original model's.
        checkpoint_dir: after each stage, ``stage-<i>/`` (:func:`factorch.save` of the model, ``report.json``)
            and ``stages.json`` (settings and history) are written here; fine-tuning checkpoints go to
            ``stage-<i>/finetune/``.
        resume: continue the run in ``checkpoint_dir`` from its last finished stage (and the interrupted
            stage's fine-tuning from its last epoch); started with the same settings, it ends with the same
            weights as an uninterrupted run.
        keep_edges: leave the first conv and the final classifier dense unless a Plan names them exactly (an
            AutoConfig's own ``keep_edges`` decides for it).
        lr, temperature, alpha, batch_size, weight_decay: fine-tuning settings (see :func:`factorch.finetune`).
        seed: stage ``i`` fine-tunes with seed ``seed + i - 1``.
        schedule: how a ``PruneConfig``'s sparsity grows over the stages: ``"polynomial"`` (Zhu & Gupta 2017)
            or ``"linear"`` (Han et al. 2015's prune / retrain loop); see :func:`prune_sparsity`. The masks stay
            fixed during each stage's fine-tuning, and each stage prunes the fine-tuned weights again.
        inplace: make ``model`` itself the result.
        show_progress: progress bars for the stages and the fine-tuning epochs.
        on_stage_end: called with ``(stage, record)`` after each stage's checkpoint is written.
        calibrate: for a :class:`~factorch.ChannelPruneConfig`: in every stage, the layers that lost input
            channels are refitted (least squares on ``calib_data``, no labels) to the responses of the model the
            stage started from, before its fine-tuning (see :func:`factorch.compress`).

    Returns:
        ``(model, report)``: the last accepted stage's model (eval mode) and its report, with whole-model totals
        relative to the original model and ``report.stages``, one record per stage run: ``stage``, ``target``
        (the stage's goal as text), ``target_fraction``, ``params_ratio``, ``macs_ratio``, ``methods`` and
        ``ranks`` of the factorized layers, ``score_compressed``, ``score_finetuned``, ``accuracy_drop``,
        ``finetune`` (per-epoch metrics), ``status`` (``"accepted"``, ``"rejected: ..."`` or
        ``"converged: ..."``) and ``wall_time_s``.

    Raises:
        ValueError: bad arguments (named in the message), a target no stage can reach, or a checkpoint_dir
            that holds another run.

    References:
        Gusak et al. 2019, "Automated multi-stage compression of neural networks" (MUSCO); Hinton et al. 2015
        (distillation).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    stages = _check_count(stages, "stages", 1)
    finetune_epochs = _check_count(finetune_epochs, "finetune_epochs", 0)
    if train_data is None and (stages > 1 or finetune_epochs > 0):
        raise ValueError(
            f"train_data is needed to fine-tune between stages (stages={stages}, finetune_epochs="
            f"{finetune_epochs}): pass a DataLoader or Dataset of (input, label)"
        )
    if example_inputs is None:
        raise ValueError("example_inputs is needed: the stage targets are fractions of the whole model's totals")
    inputs = tuple(t[:1] for t in as_inputs(example_inputs))
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable (model -> score), got {type(eval_fn).__name__}")
    if schedule not in ("polynomial", "linear"):
        raise ValueError(f"schedule must be 'polynomial' or 'linear', got {schedule!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (where the stages were saved)")

    channel, given = None, config
    if calibrate is not None and not isinstance(config, ChannelPruneConfig):
        raise ValueError(
            "calibrate=... in compress_in_stages refits structurally pruned layers (a ChannelPruneConfig); "
            "a method config carries its own calibrate=CalibrationConfig(...)"
        )
    if isinstance(config, ChannelPruneConfig):
        if target is not None:
            raise ValueError(f"target={target!r}: a ChannelPruneConfig carries its own target ({config.target!r})")
        if config.latency_bound is not None:
            raise ValueError(
                f"ChannelPruneConfig(target={config.target!r}, max_latency={config.max_latency!r}): a latency bound "
                "is measured against the model a stage starts from; prune to it in one stage (stages=1 / "
                "compress), then fine-tune"
            )
        channel, config = config, AutoConfig(config.target)  # the stage fractions follow its target
    if isinstance(config, AutoConfig):
        goal = config.parsed_target
        if goal.fraction is None:
            raise ValueError(
                f"AutoConfig(target={config.target!r}) has no fraction; compress_in_stages needs one such as "
                "'macs=0.33' (the stages approach it geometrically)"
            )
        if target is not None:
            raise ValueError(f"target={target!r}: an AutoConfig carries its own target ({config.target!r})")
        if max_accuracy_drop is None:
            max_accuracy_drop = config.max_accuracy_drop
        auto = dataclasses.replace(config, max_accuracy_drop=None)
        plan = None
        fractions: list[float | None] = stage_fractions(goal.fraction, stages)
    else:
        auto = None
        plan = as_plan(config)
        goal = None
        if target is not None:
            goal = Target.parse(target)
            if goal.kind == "latency" or goal.fraction is None:
                raise ValueError(
                    f"target={target!r}: a method config or Plan takes 'macs=F' or 'params=F' "
                    "(use an AutoConfig for latency targets)"
                )
        fractions = stage_fractions(goal.fraction, stages) if goal is not None else [None] * stages
    if max_accuracy_drop is not None:
        if eval_fn is None:
            raise ValueError("max_accuracy_drop needs eval_fn (a function model -> score, higher is better)")
        if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, numbers.Real):
            raise ValueError(f"max_accuracy_drop must be a number >= 0, got {max_accuracy_drop!r}")
        if max_accuracy_drop < 0:
            raise ValueError(f"max_accuracy_drop must be a number >= 0, got {max_accuracy_drop!r}")

    from factorch.io import load, save
    from factorch.train import finetune

    teacher = model if teacher is None else teacher
    original = _totals(model, inputs)
    edges: set[str] = set()
    if plan is not None and keep_edges:
        shapes = trace_layers(model, inputs)
        dense = [n for n, _ in candidate_layers(model) if n in shapes]
        dense.sort(key=list(shapes).index)
        edges = edge_layers(dense, model) - set(plan.exact_names())
    calib = calib_data
    if auto is not None and calib is None and train_data is not None:
        calib = train_data if isinstance(train_data, DataLoader) else DataLoader(train_data, batch_size=128)

    settings = _json(
        {
            "config": given.to_dict(),
            "stages": stages,
            "target": target,
            "finetune_epochs": finetune_epochs,
            "keep_edges": keep_edges,
            "max_accuracy_drop": max_accuracy_drop,
            "lr": lr,
            "temperature": temperature,
            "alpha": alpha,
            "batch_size": batch_size,
            "weight_decay": weight_decay,
            "seed": seed,
            "schedule": schedule,
            "calibrate": None if calibrate is None else calibrate.to_dict(),
        }
    )
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    history: list[dict[str, Any]] = []
    accepted, finished, base_score = 0, False, None
    current, report = copy.deepcopy(model), None
    resuming = False
    if ckpt is not None and (ckpt / STATE_FILE).is_file():
        if not resume:
            raise ValueError(
                f"{ckpt} already holds a staged run ({STATE_FILE}): pass resume=True (--resume) to continue it, "
                "or choose another checkpoint_dir"
            )
        state = json.loads((ckpt / STATE_FILE).read_text())
        if state.get("format") != STATE_FORMAT or state.get("version", 0) > STATE_VERSION:
            raise ValueError(f"{ckpt / STATE_FILE} is not a staged run this factorch reads")
        if state["settings"] != settings:
            differ = sorted(k for k in settings if state["settings"].get(k) != settings[k])
            raise ValueError(f"cannot resume from {ckpt}: it was started with other settings ({', '.join(differ)})")
        history, accepted, finished = state["history"], state["accepted"], state["finished"]
        base_score = state.get("base_score")
        if accepted:
            folder = ckpt / f"stage-{accepted}"
            current = load(folder, base_model=copy.deepcopy(model))
            report = CompressionReport.from_dict(json.loads((folder / REPORT_FILE).read_text()))
        resuming = True
    if base_score is None and eval_fn is not None:
        base_score = float(eval_fn(model))

    def write_state() -> None:
        if ckpt is None:
            return
        ckpt.mkdir(parents=True, exist_ok=True)
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "settings": settings,
            "base_score": base_score,
            "history": history,
            "accepted": accepted,
            "finished": finished,
        }
        _write_state(ckpt / STATE_FILE, _json(state))

    write_state()
    with progress_bar("compression stages", total=stages, enabled=show_progress) as advance:
        advance(len(history))
        for stage in range(len(history) + 1, stages + 1):
            if finished:
                break
            t0 = time.perf_counter()
            fraction = fractions[stage - 1]
            if channel is not None:
                label = f"{channel.parsed_target.kind}={fraction:.4g}"
                work, stage_report, changed = _channel_stage(
                    current, channel, fraction, inputs=inputs, original=original, calib=calib, calibrate=calibrate
                )
            elif auto is not None:
                label = f"{auto.parsed_target.kind}={fraction:.4g}"
                work, stage_report, changed = _auto_stage(
                    current, auto, fraction, inputs=inputs, original=original, calib=calib
                )
            elif goal is not None:
                label = f"{goal.kind}={fraction:.4g}"
                work, stage_report, changed = _bisect_stage(
                    current, plan, goal.kind, fraction, inputs=inputs, edges=edges, calib=calib, original=original
                )
            else:
                rank_for = _rank_schedule(stage, stages, schedule)
                label = ", ".join(dict.fromkeys(_option_text(c, rank_for(c)) for c in plan.layers.values() if c))
                work, stage_report, changed = _uniform_stage(
                    current, plan, rank_for, inputs=inputs, edges=edges, calib_data=calib
                )
            _relative_totals(stage_report, work, inputs, original)
            record: dict[str, Any] = {
                "stage": stage,
                "target": label or None,
                "target_fraction": fraction,
                "params_ratio": stage_report.totals["params_ratio"],
                "macs_ratio": stage_report.totals["macs_ratio"],
                "methods": {n: m.method for n, m in compressed_layers(work)},
                "ranks": {n: list(m.ranks) for n, m in compressed_layers(work)},
                "score_compressed": None,
                "score_finetuned": None,
                "accuracy_drop": None,
                "finetune": [],
                "status": "accepted",
            }
            if not changed:
                record["status"] = f"converged: no layer shrank at stage {stage}; kept stage {stage - 1}"
                finished = True
            else:
                stage_dir = ckpt / f"stage-{stage}" if ckpt is not None else None
                if eval_fn is not None:
                    record["score_compressed"] = float(eval_fn(work))
                if finetune_epochs:
                    work = finetune(
                        work,
                        train_data,
                        teacher=teacher,
                        epochs=finetune_epochs,
                        temperature=temperature,
                        alpha=alpha,
                        lr=lr,
                        batch_size=batch_size,
                        weight_decay=weight_decay,
                        seed=seed + stage - 1,
                        out_dir=stage_dir / "finetune" if stage_dir is not None else None,
                        resume=resuming,
                        inplace=True,
                        show_progress=show_progress,
                        history=record["finetune"],
                    )
                    if eval_fn is not None:
                        record["score_finetuned"] = float(eval_fn(work))
                if eval_fn is not None:
                    final_score = record["score_finetuned"] if finetune_epochs else record["score_compressed"]
                    record["accuracy_drop"] = base_score - final_score
                    if max_accuracy_drop is not None and record["accuracy_drop"] > max_accuracy_drop:
                        record["status"] = (
                            f"rejected: accuracy drop {record['accuracy_drop']:.4g} exceeds max_accuracy_drop="
                            f"{max_accuracy_drop:g}; kept stage {stage - 1}"
                        )
                        finished = True
                if not finished:
                    current, report, accepted = work.eval(), stage_report, stage
                    if stage_dir is not None:
                        save(current, stage_dir)
                        (stage_dir / REPORT_FILE).write_text(json.dumps(_json(report.to_dict()), indent=2) + "\n")
            resuming = False
            record["wall_time_s"] = round(time.perf_counter() - t0, 2)
            history.append(_json(record))
            finished = finished or stage == stages
            write_state()
            advance()
            if on_stage_end is not None:
                on_stage_end(stage, history[-1])

    if report is None:  # no stage was kept: the original model
        report = CompressionReport(config=_json(config.to_dict()))
        report.finalize({"params_before": original["params"], "params_after": original["params"],
                         "macs_before": original["macs"], "macs_after": original["macs"]})  # fmt: skip
    report = copy.deepcopy(report)
    report.stages = [dict(r) for r in history]
    report.totals.update(stages_run=len(history), stage_accepted=accepted)
    if history and not history[-1]["status"].startswith("accepted"):
        report.totals["stopped"] = history[-1]["status"]
    if eval_fn is not None:
        after = base_score
        if accepted:
            kept = history[accepted - 1]
            after = kept["score_finetuned"] if kept["score_finetuned"] is not None else kept["score_compressed"]
        report.totals.update(score_before=base_score, score_after=after, accuracy_drop=base_score - after)
    result = current.eval()
    if inplace:
        model.__dict__.clear()
        model.__dict__.update(result.__dict__)
        result = model
    return result, report


def prune_sparsity(final: float, stage: int, stages: int, schedule: str = "polynomial") -> float:
    """The sparsity of stage ``stage`` of ``stages`` on the way to ``final``.

    ``"polynomial"``: Zhu & Gupta 2017's gradual schedule ``s_f (1 - (1 - t)^3)`` with ``t = stage / stages``
    (large steps first, while many redundant weights remain, small ones at the end); ``"linear"``: equal steps
    (Han et al. 2015's iterative prune / retrain loop).

    References:
        Zhu & Gupta 2017, "To prune, or not to prune"; Han et al. 2015.
    """
    t = stage / stages
    if schedule == "polynomial":
        return final * (1.0 - (1.0 - t) ** 3)
    if schedule == "linear":
        return final * t
    raise ValueError(f"schedule must be 'polynomial' or 'linear', got {schedule!r}")


def _rank_schedule(stage: int, stages: int, schedule: str = "polynomial") -> Callable[[MethodConfig], RankLike]:
    """Options of stage ``stage``: cost ratios and fractions of full rank ``f`` become ``f ** (stage / stages)``,
    pruning sparsities follow :func:`prune_sparsity`; other rules stay as they are."""

    def rank_for(cfg: MethodConfig) -> RankLike:
        if isinstance(cfg, PruneConfig):
            if isinstance(cfg.sparsity, float):
                return prune_sparsity(cfg.sparsity, stage, stages, schedule)
            return cfg.sparsity
        selector = as_selector(cfg.rank)
        if isinstance(selector, (MACRatioRank, ParamRatioRank)):
            return type(selector)(selector.ratio ** (stage / stages))
        if isinstance(selector, FractionRank):
            return FractionRank(selector.fraction ** (stage / stages))
        return cfg.rank

    return rank_for


def _bisect_stage(
    current: nn.Module,
    plan: Plan,
    kind: str,
    fraction: float,
    *,
    inputs: tuple,
    edges: set[str],
    calib: Any,
    original: dict[str, int],
) -> tuple[nn.Module, CompressionReport, bool]:
    """The largest uniform per-layer cost ratio whose model keeps at most ``fraction`` of the original's
    ``kind`` (bisection; factorized layers are recompressed, never grown)."""
    selector = ParamRatioRank if kind == "params" else MACRatioRank

    def build(ratio: float) -> tuple[nn.Module, CompressionReport, bool]:
        return _uniform_stage(current, plan, lambda cfg: selector(ratio), inputs=inputs, edges=edges, calib_data=calib)

    found = largest_feasible(  # whole model (example inputs given)
        build, lambda b: b[1].totals[f"{kind}_after"] <= fraction * original[kind], steps=BISECTION_STEPS
    )
    best = found[1] if found else None
    if best is None:
        raise ValueError(
            f"no uniform per-layer ratio reaches {kind}={fraction:.4g} of the original model (the layers left "
            "dense, or other methods' layers, cost more)"
        )
    return best
