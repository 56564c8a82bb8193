"""Reading state dicts safely (``weights_only``) with errors that say what is wrong with the file."""

from __future__ import annotations

from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A weights or checkpoint file that cannot be read."""


def load_checkpoint_file(path: str | Path) -> dict:
    """Load a ``torch.save``-d dict of tensors/plain values with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for corrupt or truncated files
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt, truncated or not a torch.save file "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict (a dict of tensors, possibly under a ``"model"`` key)."""
    obj = load_checkpoint_file(path)
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state
