"""Factorized layers: each replaces one dense layer by a chain of smaller standard layers.

Every layer class follows :class:`CompressedLayer`: ``from_dense(layer, option, *, decompose_weights=True)``,
``to_dense()``, ``reconstruct_weight()``, ``describe()`` and ``option_cost``; :func:`layer_class` picks the
class for a method and a dense layer from the method registry (:mod:`factorch.registry`).
"""

from __future__ import annotations

from torch import nn

from factorch import registry as _registry
from factorch.layers._spec import ConvSpec as ConvSpec
from factorch.layers._spec import EmbeddingSpec as EmbeddingSpec
from factorch.layers._spec import LinearSpec as LinearSpec
from factorch.layers.base import CompressedLayer as CompressedLayer
from factorch.layers.base import FactorizedLayer as FactorizedLayer
from factorch.layers.base import NotFactorizable as NotFactorizable
from factorch.layers.binary import BinaryLayer as BinaryLayer
from factorch.layers.cp import CPConv as CPConv
from factorch.layers.pruned import PrunedLayer as PrunedLayer
from factorch.layers.quantized import QuantizedLayer as QuantizedLayer
from factorch.layers.sal import SALConv2d as SALConv2d
from factorch.layers.shared import SharedWeightLayer as SharedWeightLayer
from factorch.layers.spatial import SpatialSVDConv2d as SpatialSVDConv2d
from factorch.layers.svd import LowRankLinear as LowRankLinear
from factorch.layers.svd import SVDConv as SVDConv
from factorch.layers.tt import TTEmbedding as TTEmbedding
from factorch.layers.tt import TTLinear as TTLinear
from factorch.layers.tucker import Tucker2Conv as Tucker2Conv
from factorch.layers.vector import ResidualQuantizedLayer as ResidualQuantizedLayer
from factorch.layers.vector import VectorQuantizedLayer as VectorQuantizedLayer


def register_method(method: str, types: tuple[type, ...], cls: type[CompressedLayer]) -> None:
    """Add compressed layer class ``cls`` for dense layer ``types`` to the registered ``method``.

    A new method is registered whole with :func:`factorch.registry.register_method` (its config too).
    """
    entry = _registry.get_method(method)
    _registry.register_method(
        method,
        config=entry.config,
        layers={**entry.layers, tuple(types): cls},
        searchable=entry.searchable,
        cli=entry.cli,
        replace=True,
    )


def list_methods() -> list[str]:
    return _registry.list_methods()


def layer_class(method: str, layer: nn.Module) -> type[CompressedLayer]:
    """The compressed layer class for ``method`` and this dense ``layer``.

    Raises:
        ValueError: unknown method.
        NotCompressible: the method does not handle this layer type (the message says which types it does).
    """
    return _registry.layer_class(method, layer)


__all__ = [
    "CPConv",
    "CompressedLayer",
    "PrunedLayer",
    "ConvSpec",
    "EmbeddingSpec",
    "FactorizedLayer",
    "SALConv2d",
    "LinearSpec",
    "LowRankLinear",
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
