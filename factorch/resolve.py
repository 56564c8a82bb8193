"""``load_model``: a model from a registry name, ``package.module:factory``, a folder written by
``factorch.save`` or ``factorch train``, or a checkpoint file. It sits above both the model registry and
``factorch.io`` (which it calls for compressed folders), so neither imports the other."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from factorch.io import load
from factorch.models._io import CheckpointError, load_checkpoint_file
from factorch.models._registry import create_model, is_model, unknown_model_error
from factorch.models._resolve import MODEL_JSON, WEIGHTS, build_from_spec, build_model, load_weights


def load_model(spec: str | Path, *, pretrained: bool = False) -> nn.Module:
    """Load a model from a registry name, ``package.module:factory``, a saved folder or a checkpoint file.

    A saved folder holds ``model.json`` (the architecture) and ``weights.pt``; a checkpoint file is one
    written by ``factorch train`` (``checkpoint.pt``).
    """
    path = Path(spec)
    if path.is_dir():
        if (path / "plan.json").is_file():
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
            load_weights(model, weights)
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
        load_weights(model, path)
        return model.eval()
    if pretrained and ":" in str(spec):
        raise ValueError("--pretrained applies to registry models only")
    if not pretrained:
        return build_model(str(spec))
    if not is_model(str(spec)):
        raise unknown_model_error(str(spec))
    return create_model(str(spec), pretrained=True)
