"""The built-in methods, registered once in :mod:`factorch.registry`: each method's config class and its
compressed layer class per dense layer type. ``import factorch`` runs this module."""

from __future__ import annotations

from torch import nn

from factorch.config import (
    BinaryConfig,
    CPConfig,
    KMeansConfig,
    PQConfig,
    PruneConfig,
    QuantConfig,
    RQConfig,
    SALConfig,
    SpatialSVDConfig,
    SVDConfig,
    TTConfig,
    Tucker2Config,
)
from factorch.layers.binary import BinaryLayer
from factorch.layers.cp import CPConv
from factorch.layers.pruned import PrunedLayer
from factorch.layers.quantized import QuantizedLayer
from factorch.layers.sal import SALConv2d
from factorch.layers.shared import SharedWeightLayer
from factorch.layers.spatial import SpatialSVDConv2d
from factorch.layers.svd import LowRankLinear, SVDConv
from factorch.layers.tt import TTEmbedding, TTLinear
from factorch.layers.tucker import Tucker2Conv
from factorch.layers.vector import ResidualQuantizedLayer, VectorQuantizedLayer
from factorch.registry import list_methods, register_method

CONV = (nn.Conv1d, nn.Conv2d)

if "svd" not in list_methods():  # registered once per process, even if this module is reloaded
    register_method("svd", config=SVDConfig, layers={(nn.Linear,): LowRankLinear, CONV: SVDConv})
    register_method("spatial-svd", config=SpatialSVDConfig, layers={CONV: SpatialSVDConv2d})
    register_method("tucker2", config=Tucker2Config, layers={CONV: Tucker2Conv})
    register_method("cp", config=CPConfig, layers={CONV: CPConv})
    # TT layers have no cost-ratio rank problem yet: not offered to AutoConfig
    register_method(
        "tt", config=TTConfig, layers={(nn.Linear,): TTLinear, (nn.Embedding,): TTEmbedding}, searchable=False
    )
    register_method("prune", config=PruneConfig, layers={(*CONV, nn.Linear): PrunedLayer})
    # bit widths lower stored bytes only: candidates under size= budgets (weights; activations stay float)
    register_method("quant", config=QuantConfig, layers={(*CONV, nn.Linear): QuantizedLayer})
    register_method("binary", config=BinaryConfig, layers={(*CONV, nn.Linear): BinaryLayer}, searchable=False)
    register_method("sal", config=SALConfig, layers={(nn.Conv2d,): SALConv2d}, searchable=False)
    register_method("kmeans", config=KMeansConfig, layers={(*CONV, nn.Linear): SharedWeightLayer})
    register_method("pq", config=PQConfig, layers={(*CONV, nn.Linear): VectorQuantizedLayer}, searchable=False)
    register_method("rq", config=RQConfig, layers={(*CONV, nn.Linear): ResidualQuantizedLayer}, searchable=False)
