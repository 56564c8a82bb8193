"""Turn a model specification into a model: a registry name, a saved folder or checkpoint, or
``package.module:factory`` for a user's own model."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from torch import nn

from factorch.models._io import CheckpointError, load_checkpoint_file, load_state_dict_file
from factorch.models._registry import SPEC_FORMAT as FORMAT
from factorch.models._registry import architecture_spec, create_model, is_model, unknown_model_error

MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"


def build_from_spec(spec: dict, where: str) -> nn.Module:
    if spec.get("format") != FORMAT or "architecture" not in spec:
        raise CheckpointError(f"{where} does not describe a factorch model (missing 'architecture')")
    return build_model(spec["architecture"], **spec.get("kwargs", {}))


def build_model(name: str, **kwargs) -> nn.Module:
    """Build an untrained model from a registry name or ``package.module:factory``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"cannot import module {module_name!r} of model {name!r}: {err}") from err
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise ValueError(f"module {module_name!r} has no callable {attr!r} (model {name!r})")
        model = factory(**kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name!r} returned a {type(model).__name__}, expected a torch.nn.Module")
        model.factorch_spec = architecture_spec(name, **kwargs)
        return model
    if not is_model(name):
        raise unknown_model_error(name)
    return create_model(name, **kwargs)


def load_model(spec: str | Path, *, pretrained: bool = False) -> nn.Module:
    """Load a model from a registry name, ``package.module:factory``, a saved folder or a checkpoint file.

    A saved folder holds ``model.json`` (the architecture) and ``weights.pt``; a checkpoint file is one
    written by ``factorch train`` (``checkpoint.pt``).
    """
    path = Path(spec)
    if path.is_dir():
        if (path / "plan.json").is_file():
            from factorch.io import load

            return load(path)
        if (path / MODEL_JSON).is_file():
            try:
                desc = json.loads((path / MODEL_JSON).read_text())
            except json.JSONDecodeError as err:
                raise CheckpointError(f"{path / MODEL_JSON} is not valid JSON: {err}") from err
            model = build_from_spec(desc, str(path / MODEL_JSON))
            weights = path / WEIGHTS
            if not weights.is_file() and (path / "checkpoint.pt").is_file():
                weights = path / "checkpoint.pt"
            _load_weights(model, weights)
            return model.eval()
        if (path / "checkpoint.pt").is_file():
            return load_model(path / "checkpoint.pt")
        raise CheckpointError(f"folder {path} holds neither plan.json, {MODEL_JSON} nor checkpoint.pt")
    if path.is_file():
        ckpt = load_checkpoint_file(path)
        extra = ckpt.get("extra")
        desc = json.loads(extra) if isinstance(extra, str) else None
        if not desc or "architecture" not in desc:
            raise CheckpointError(f"checkpoint {path} does not record its architecture")
        model = build_from_spec(desc, str(path))
        _load_weights(model, path)
        return model.eval()
    if pretrained and ":" in str(spec):
        raise ValueError("--pretrained applies to registry models only")
    if not pretrained:
        return build_model(str(spec))
    if not is_model(str(spec)):
        raise unknown_model_error(str(spec))
    return create_model(str(spec), pretrained=True)


def _load_weights(model: nn.Module, path: Path) -> None:
    state = load_state_dict_file(path)
    ref = model.state_dict()
    missing, unexpected = set(ref) - set(state), set(state) - set(ref)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the architecture: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    for k, v in state.items():
        if v.shape != ref[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(ref[k].shape)}")
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()})
