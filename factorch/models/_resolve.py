"""Turn a model specification into a model: a registry name, a saved folder or checkpoint, or
``package.module:factory`` for a user's own model."""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from factorch.models._io import CheckpointError, load_state_dict_file
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


def load_weights(model: nn.Module, path: Path) -> None:
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
