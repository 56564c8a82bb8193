"""Registry of reference models: ``@register_model`` + ``create_model(name)`` + ``list_models(pattern)``."""

from __future__ import annotations

import difflib
import fnmatch
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}

WEIGHTS_PACKAGE = "factorch.models"


SPEC_FORMAT = "factorch-model"


def architecture_spec(name: str, **kwargs) -> dict:
    """The JSON description of an architecture (registry name or ``package.module:factory`` + options)."""
    return {"format": SPEC_FORMAT, "version": 1, "architecture": name, "kwargs": kwargs}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODELS


def unknown_model_error(name: str) -> ValueError:
    """The error raised for a model name that is not registered, with close matches."""
    close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"unknown model {name!r}.{hint} Available models: {', '.join(list_models())}.")


def weights_path(name: str) -> Path:
    """Path of the shipped pretrained weights of model ``name`` (may not exist)."""
    return Path(str(resources.files(WEIGHTS_PACKAGE) / "weights" / f"{name}.pt"))


def model_card(name: str) -> dict:
    """The model card (training command, seed, epochs, wall time, accuracy) of shipped weights."""
    path = weights_path(name).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained weights are shipped for model {name!r} (looked for {path})")
    return json.loads(path.read_text())


def create_model(
    name: str, *, num_classes: int = 10, in_channels: int = 1, pretrained: bool = False, **kwargs
) -> nn.Module:
    """Build a registered reference model.

    Args:
        name: registry name, see :func:`list_models`.
        num_classes: size of the classifier output.
        in_channels: channels of the input images.
        pretrained: load the Fashion-MNIST weights shipped with factorch (``num_classes=10``,
            ``in_channels=1`` and default ``kwargs`` only).
        **kwargs: architecture options of the factory (e.g. ``width`` for ``mobilenet_v2``).

    Returns:
        The model, in eval mode when pretrained.
    """
    if name not in _MODELS:
        raise unknown_model_error(name)
    model = _MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    # how to rebuild the architecture (used when loading saved or compressed models)
    model.factorch_spec = architecture_spec(name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    if pretrained:
        if num_classes != 10 or in_channels != 1 or kwargs:
            raise ValueError(
                f"pretrained {name!r} weights exist for Fashion-MNIST only (num_classes=10, in_channels=1, "
                f"default architecture options); got num_classes={num_classes}, in_channels={in_channels}, "
                f"options={kwargs}"
            )
        path = weights_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no pretrained weights are shipped for model {name!r} (looked for {path})")
        from factorch.models._io import load_state_dict_file

        state = load_state_dict_file(path)
        ref = model.state_dict()
        model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()})
        model.eval()
    return model
