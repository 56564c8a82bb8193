"""Save a compressed model as ``plan.json`` + an ordinary state dict; load it back by rebuilding the
structure from the plan (no decomposition, no pickled modules)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from factorch.api import PLAN_ATTR
from factorch.layers import LAYER_CLASSES, FactorizedLayer
from factorch.layers._spec import spec_from_dict
from factorch.models._io import CheckpointError, load_state_dict_file
from factorch.surgery import add_zero_bias, get_module, replace_module

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "weights.pt"
FORMAT = "factorch-compressed"
FORMAT_VERSION = 1


def model_plan(model: nn.Module) -> dict:
    """The JSON description of ``model``'s factorized layers and folds (what :func:`load` replays)."""
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, FactorizedLayer):
            layers[name] = {"class": type(module).__name__, **module.describe()}
    extra = getattr(model, PLAN_ATTR, {}) or {}
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "base": getattr(model, "factorch_spec", None),
        "folded_bn": extra.get("folded_bn", []),
        "layers": layers,
    }


def save(model: nn.Module, path: str | Path) -> Path:
    """Write ``path/plan.json`` and ``path/weights.pt`` (a state dict that ``torch.load(weights_only=True)``
    reads). Returns the folder."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / PLAN_FILE).write_text(json.dumps(model_plan(model), indent=2) + "\n")
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path / WEIGHTS_FILE)
    return path


def rebuild(base_model: nn.Module, plan: dict) -> nn.Module:
    """Apply ``plan`` to ``base_model`` in place: fold markers, then factorized structures (weights unset)."""
    for conv_name, bn_name in plan.get("folded_bn", []):
        add_zero_bias(get_module(base_model, conv_name))
        replace_module(base_model, bn_name, nn.Identity())
    for name, desc in plan.get("layers", {}).items():
        cls_name = desc.get("class")
        if cls_name not in LAYER_CLASSES:
            raise CheckpointError(f"plan layer {name!r} has unknown class {cls_name!r}")
        get_module(base_model, name)
        spec = spec_from_dict(desc["spec"])
        cls = LAYER_CLASSES[cls_name]
        replace_module(base_model, name, cls.build(spec, tuple(desc["ranks"]), **desc.get("options", {})))
    setattr(base_model, PLAN_ATTR, {"folded_bn": plan.get("folded_bn", [])})
    return base_model


def load(path: str | Path, base_model: nn.Module | None = None) -> nn.Module:
    """Load a model written by :func:`save`.

    Args:
        path: the folder.
        base_model: the uncompressed architecture (its weights are ignored; it is modified in place). May be
            omitted when the compressed model came from a registry model (``factorch.models.create_model``).
    """
    path = Path(path)
    plan_path = path / PLAN_FILE
    if not plan_path.is_file():
        raise FileNotFoundError(f"{path} holds no {PLAN_FILE}; is it a folder written by factorch.save?")
    try:
        plan = json.loads(plan_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{plan_path} is not valid JSON: {err}") from err
    if plan.get("format") != FORMAT:
        raise CheckpointError(f"{plan_path} is not a factorch plan (format {plan.get('format')!r})")
    if plan.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{plan_path} has version {plan['version']}, newer than this factorch reads")
    if base_model is None:
        base = plan.get("base")
        if not base:
            raise ValueError(f"{path} was made from a model outside the registry: pass base_model=")
        from factorch.models._resolve import build_from_spec

        base_model = build_from_spec(base, str(plan_path))
    model = rebuild(base_model, plan)
    state = load_state_dict_file(path / WEIGHTS_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path / WEIGHTS_FILE} does not fit the rebuilt model: {err}") from err
    return model.eval()
