"""factorch: make trained PyTorch networks smaller and faster (factorization, pruning), and measure the gain."""

from factorch import data as data
from factorch import decompose as decompose
from factorch import layers as layers
from factorch import methods as methods  # registers the built-in methods
from factorch import models as models
from factorch import nn as nn
from factorch import prune as prune
from factorch import rank as rank
from factorch.api import compress as compress
from factorch.api import compress_ as compress_
from factorch.apply import apply_plan as apply_plan
from factorch.auto import AutoConfig as AutoConfig
from factorch.calibrate import CalibrationConfig as CalibrationConfig
from factorch.calibrate import calibrate_ as calibrate_
from factorch.complexity import Score as Score
from factorch.complexity import ScoreRules as ScoreRules
from factorch.complexity import score as score
from factorch.config import BinaryConfig as BinaryConfig
from factorch.config import CPConfig as CPConfig
from factorch.config import FactorizationConfig as FactorizationConfig
from factorch.config import KMeansConfig as KMeansConfig
from factorch.config import MethodConfig as MethodConfig
from factorch.config import Plan as Plan
from factorch.config import PQConfig as PQConfig
from factorch.config import PruneConfig as PruneConfig
from factorch.config import QuantConfig as QuantConfig
from factorch.config import RQConfig as RQConfig
from factorch.config import SALConfig as SALConfig
from factorch.config import SpatialSVDConfig as SpatialSVDConfig
from factorch.config import SVDConfig as SVDConfig
from factorch.config import TTConfig as TTConfig
from factorch.config import Tucker2Config as Tucker2Config
from factorch.cost import Cost as Cost
from factorch.export import export_onnx as export_onnx
from factorch.io import load as load
from factorch.io import save as save
from factorch.profiling import ForwardError as ForwardError
from factorch.profiling import LatencyReport as LatencyReport
from factorch.profiling import LayerProfile as LayerProfile
from factorch.profiling import ProfileReport as ProfileReport
from factorch.profiling import compare_latency as compare_latency
from factorch.profiling import measure_latency as measure_latency
from factorch.profiling import profile as profile
from factorch.prune.config import ChannelPruneConfig as ChannelPruneConfig
from factorch.rank import EnergyRank as EnergyRank
from factorch.rank import MACRatioRank as MACRatioRank
from factorch.rank import ParamRatioRank as ParamRatioRank
from factorch.rank import VBMFRank as VBMFRank
from factorch.registry import list_methods as list_methods
from factorch.registry import register_method as register_method
from factorch.report import CompressionReport as CompressionReport
from factorch.stages import compress_in_stages as compress_in_stages
from factorch.train import finetune as finetune

__version__ = "0.1.0"

__all__ = [
    "AutoConfig",
    "ChannelPruneConfig",
    "Cost",
    "FactorizationConfig",
    "PruneConfig",
    "QuantConfig",
    "BinaryConfig",
    "KMeansConfig",
    "PQConfig",
    "RQConfig",
    "export_onnx",
    "apply_plan",
    "list_methods",
    "register_method",
    "finetune",
    "CalibrationConfig",
    "calibrate_",
    "CPConfig",
    "CompressionReport",
    "EnergyRank",
    "LatencyReport",
    "MACRatioRank",
    "MethodConfig",
    "ParamRatioRank",
    "Plan",
    "ProfileReport",
    "SVDConfig",
    "SpatialSVDConfig",
    "TTConfig",
    "Tucker2Config",
    "VBMFRank",
    "compare_latency",
    "compress",
    "compress_",
    "compress_in_stages",
    "data",
    "decompose",
    "layers",
    "load",
    "measure_latency",
    "models",
    "profile",
    "prune",
    "rank",
    "save",
    "Score",
    "ScoreRules",
    "score",
]
