"""Measure what compression buys: parameters, MACs per layer, model size and latency.

Knows nothing of compression: it profiles any ``nn.Module``.
"""

from factorch.profiling._trace import ForwardError as ForwardError
from factorch.profiling._trace import run_forward as run_forward
from factorch.profiling._trace import trace_forward as trace_forward
from factorch.profiling.latency import LatencyComparison as LatencyComparison
from factorch.profiling.latency import LatencyRatio as LatencyRatio
from factorch.profiling.latency import LatencyReport as LatencyReport
from factorch.profiling.latency import LatencyResult as LatencyResult
from factorch.profiling.latency import compare_latency as compare_latency
from factorch.profiling.latency import measure_latency as measure_latency
from factorch.profiling.summary import LayerProfile as LayerProfile
from factorch.profiling.summary import ProfileReport as ProfileReport
from factorch.profiling.summary import profile as profile

__all__ = [
    "ForwardError",
    "LatencyComparison",
    "LatencyRatio",
    "LatencyReport",
    "LatencyResult",
    "LayerProfile",
    "ProfileReport",
    "compare_latency",
    "measure_latency",
    "profile",
    "run_forward",
    "trace_forward",
]
