"""Factorized layers: each replaces one dense layer by a chain of smaller standard layers.

Every layer class has ``from_dense(layer, rank, *, decompose_weights=True)``, ``to_dense()`` and
``reconstruct_weight()``; :func:`layer_class` picks the class for a method and a dense layer.
"""

from __future__ import annotations

from torch import nn

from factorch.layers._spec import ConvSpec as ConvSpec
from factorch.layers._spec import EmbeddingSpec as EmbeddingSpec
from factorch.layers._spec import LinearSpec as LinearSpec
from factorch.layers.base import FactorizedLayer as FactorizedLayer
from factorch.layers.base import NotFactorizable as NotFactorizable
from factorch.layers.cp import CPConv as CPConv
from factorch.layers.spatial import SpatialSVDConv2d as SpatialSVDConv2d
from factorch.layers.svd import LowRankLinear as LowRankLinear
from factorch.layers.svd import SVDConv as SVDConv
from factorch.layers.tt import TTEmbedding as TTEmbedding
from factorch.layers.tt import TTLinear as TTLinear
from factorch.layers.tucker import Tucker2Conv as Tucker2Conv

CONV = (nn.Conv1d, nn.Conv2d)

# method -> dense layer types -> factorized layer class
METHODS: dict[str, dict[tuple[type, ...], type[FactorizedLayer]]] = {
    "svd": {(nn.Linear,): LowRankLinear, CONV: SVDConv},
    "spatial-svd": {CONV: SpatialSVDConv2d},
    "tucker2": {CONV: Tucker2Conv},
    "cp": {CONV: CPConv},
    "tt": {(nn.Linear,): TTLinear, (nn.Embedding,): TTEmbedding},
}
LAYER_CLASSES: dict[str, type[FactorizedLayer]] = {}


def register_method(method: str, types: tuple[type, ...], cls: type[FactorizedLayer]) -> None:
    """Add a factorized layer class for ``method`` and dense layer ``types``."""
    METHODS.setdefault(method, {})[types] = cls
    LAYER_CLASSES[cls.__name__] = cls


for _table in METHODS.values():
    for _cls in _table.values():
        LAYER_CLASSES[_cls.__name__] = _cls


def list_methods() -> list[str]:
    return sorted(METHODS)


def layer_class(method: str, layer: nn.Module) -> type[FactorizedLayer]:
    """The factorized layer class for ``method`` and this dense ``layer``.

    Raises:
        ValueError: unknown method.
        NotFactorizable: the method does not handle this layer type (the message says which types it does).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(list_methods())}")
    for types, cls in METHODS[method].items():
        if type(layer) in types:
            return cls
    allowed = ", ".join(t.__name__ for types in METHODS[method] for t in types)
    raise NotFactorizable(f"{method} does not handle {type(layer).__name__} layers (it handles {allowed})")


__all__ = [
    "CPConv",
    "ConvSpec",
    "EmbeddingSpec",
    "FactorizedLayer",
    "LinearSpec",
    "LowRankLinear",
    "METHODS",
    "NotFactorizable",
    "SVDConv",
    "SpatialSVDConv2d",
    "TTEmbedding",
    "TTLinear",
    "Tucker2Conv",
    "layer_class",
    "list_methods",
    "register_method",
]
