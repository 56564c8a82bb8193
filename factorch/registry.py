"""The one method registry: every compression method is registered once, here, with its config class and
its compressed layer classes (per dense layer type). Plan keys, ``AutoConfig(methods=...)``, the CLI's
choices, config (de)serialisation and ``factorch.load`` all read this table.

This module imports nothing from factorch; the built-in methods are registered by :mod:`factorch.methods`,
which ``import factorch`` runs. A method of your own::

    factorch.register_method("mymethod", config=MyConfig, layers={(nn.Linear,): MyLinear})

References:
    timm's ``register_model`` / ``create_model`` / ``list_models``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any


class NotCompressible(ValueError):
    """A layer that a method cannot (or should not) compress; the message is the reason."""


@dataclass(frozen=True)
class MethodEntry:
    """One registered method.

    Attributes:
        name: the method's name (``"tucker2"``, ``"prune"``): Plan/CLI/AutoConfig spell it so.
        config: its config class (a ``MethodConfig`` subclass, ``config.method == name``).
        layers: dense layer types -> the compressed layer class that replaces them.
        searchable: whether ``AutoConfig`` may choose it per layer (its layers define ``rank_problem``).
        cli: whether ``factorch compress --method`` offers it.
    """

    name: str
    config: type
    layers: dict[tuple[type, ...], type] = field(default_factory=dict)
    searchable: bool = True
    cli: bool = True


_METHODS: dict[str, MethodEntry] = {}
_LAYER_CLASSES: dict[str, type] = {}
_CONFIGS: dict[str, type] = {}


def register_method(
    name: str,
    *,
    config: type,
    layers: dict[tuple[type, ...], type],
    searchable: bool = True,
    cli: bool = True,
    replace: bool = False,
) -> MethodEntry:
    """Register a compression method (see the module docstring).

    Args:
        name: the method's name; must equal ``config.method``.
        config: its config class.
        layers: dense layer types (a tuple of classes) -> compressed layer class (with ``method == name``).
        searchable: offered to ``AutoConfig(methods=...)``.
        cli: offered by ``factorch compress --method``.
        replace: allow registering ``name`` again (otherwise an error).

    Raises:
        ValueError: a name taken (without ``replace``) or inconsistent with the config / layer classes.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_method: name must be a non-empty string, got {name!r}")
    if name in _METHODS and not replace:
        raise ValueError(f"method {name!r} is already registered (replace=True to override)")
    if getattr(config, "method", None) != name:
        raise ValueError(
            f"register_method({name!r}): {getattr(config, '__name__', config)!r}.method must be {name!r}, "
            f"got {getattr(config, 'method', None)!r}"
        )
    if not isinstance(layers, dict) or not layers:
        raise ValueError(f"register_method({name!r}): layers must map dense layer types to a layer class")
    for types, cls in layers.items():
        if not isinstance(types, tuple) or not all(isinstance(t, type) for t in types):
            raise ValueError(f"register_method({name!r}): layer keys must be tuples of types, got {types!r}")
        if getattr(cls, "method", None) != name:
            raise ValueError(f"register_method({name!r}): {cls.__name__}.method must be {name!r}")
    entry = MethodEntry(name, config, dict(layers), searchable, cli)
    _METHODS[name] = entry
    for cls in layers.values():
        _LAYER_CLASSES[cls.__name__] = cls
    _CONFIGS[config.__name__] = config
    return entry


def unregister_method(name: str) -> None:
    """Remove a method (tests and plug-ins that register temporarily)."""
    entry = _METHODS.pop(name, None)
    if entry is None:
        return
    for cls in entry.layers.values():
        _LAYER_CLASSES.pop(cls.__name__, None)
    _CONFIGS.pop(entry.config.__name__, None)


def _unknown(kind: str, name: Any, choices: list[str]) -> ValueError:
    close = difflib.get_close_matches(str(name), choices, n=2, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}; choose from {', '.join(choices)}.{hint}")


def get_method(name: str) -> MethodEntry:
    if name not in _METHODS:
        raise _unknown("method", name, list_methods())
    return _METHODS[name]


def list_methods(*, searchable: bool | None = None, cli: bool | None = None) -> list[str]:
    """Registered method names (sorted), optionally only those AutoConfig or the CLI offer."""
    return sorted(
        n
        for n, e in _METHODS.items()
        if (searchable is None or e.searchable == searchable) and (cli is None or e.cli == cli)
    )


def layer_class(method: str, layer: Any) -> type:
    """The compressed layer class of ``method`` for this dense ``layer``.

    Raises:
        ValueError: unknown method.
        NotCompressible: the method does not handle this layer type (the message says which it does).
    """
    entry = get_method(method)
    for types, cls in entry.layers.items():
        if type(layer) in types:
            return cls
    allowed = ", ".join(t.__name__ for types in entry.layers for t in types)
    raise NotCompressible(f"{method} does not handle {type(layer).__name__} layers (it handles {allowed})")


def layer_class_named(name: str) -> type:
    """A registered compressed layer class by its class name (what saved plans record)."""
    if name not in _LAYER_CLASSES:
        raise _unknown("layer class", name, sorted(_LAYER_CLASSES))
    return _LAYER_CLASSES[name]


def config_class_named(name: str) -> type:
    """A registered config class by its class name (what ``to_dict`` writes as ``type``)."""
    if name not in _CONFIGS:
        raise _unknown("config type", name, sorted(_CONFIGS))
    return _CONFIGS[name]


def config_class(method: str) -> type:
    return get_method(method).config


def layer_classes() -> dict[str, type]:
    """Every registered compressed layer class by name (a copy)."""
    return dict(_LAYER_CLASSES)
