"""factorch: make trained PyTorch networks smaller and faster by factorizing their layers."""

from factorch import data as data
from factorch import models as models
from factorch.profiling import ForwardError as ForwardError
from factorch.profiling import LatencyReport as LatencyReport
from factorch.profiling import LayerProfile as LayerProfile
from factorch.profiling import ProfileReport as ProfileReport
from factorch.profiling import compare_latency as compare_latency
from factorch.profiling import measure_latency as measure_latency
from factorch.profiling import profile as profile

__version__ = "0.1.0"
