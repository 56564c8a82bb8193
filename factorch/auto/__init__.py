"""Whole-network budgets: choose a method and ranks per layer to meet a MACs, parameter or latency target."""

from factorch.auto.closed_loop import TargetUnreachableError as TargetUnreachableError
from factorch.auto.closed_loop import auto_compress as auto_compress
from factorch.auto.config import AutoConfig as AutoConfig
from factorch.auto.config import Target as Target
from factorch.auto.search import AutoSearch as AutoSearch
from factorch.auto.sensitivity import calibration_inputs as calibration_inputs
from factorch.auto.uniform import uniform_compress as uniform_compress

__all__ = [
    "AutoConfig",
    "AutoSearch",
    "Target",
    "TargetUnreachableError",
    "auto_compress",
    "calibration_inputs",
    "uniform_compress",
]
