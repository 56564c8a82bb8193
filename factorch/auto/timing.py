"""Measured latency of a candidate against its dense original, on eager torch or ONNX Runtime."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Sequence

from torch import Tensor, nn

from factorch.profiling import compare_latency
from factorch.profiling.latency import batch_inputs
from factorch.profiling.onnx import has_onnxruntime, ort_session


def _ort_pair(
    a: nn.Module, b: nn.Module, example: tuple[Tensor, ...], sizes: Sequence[int], repeats: int, threads: int | None
) -> dict[int, tuple[float, float]]:
    sessions = [ort_session(m, example, threads) for m in (a, b)]
    out = {}
    for size in sizes:
        feeds = {f"x{i}": t.cpu().numpy() for i, t in enumerate(batch_inputs(example, size))}
        for s in sessions:
            for _ in range(2):
                s.run(None, feeds)
        times: list[list[float]] = [[], []]
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for i in range(repeats):
                order = (0, 1) if i % 2 == 0 else (1, 0)
                for k in order:
                    t0 = time.perf_counter()
                    sessions[k].run(None, feeds)
                    times[k].append(time.perf_counter() - t0)
        finally:
            if gc_was:
                gc.enable()
        out[size] = (statistics.median(times[0]), statistics.median(times[1]))
    return out


def time_pair(
    dense: nn.Module,
    candidate: nn.Module,
    example: tuple[Tensor, ...],
    *,
    batch_sizes: Sequence[int],
    runtime: str = "torch",
    repeats: int = 7,
    threads: int | None = None,
) -> dict[int, tuple[float, float]]:
    """``{batch size: (dense median s, candidate median s)}``, calls of the two alternated.

    ``example`` has batch size 1; it is repeated to each batch size. ``runtime="onnxruntime"`` exports both
    modules to ONNX (dynamic batch) and times ``InferenceSession.run`` on the CPU provider.
    """
    if runtime == "onnxruntime":
        if not has_onnxruntime():
            raise ValueError("runtime='onnxruntime' needs the onnx extra: pip install 'factorch[onnx]'")
        return _ort_pair(dense, candidate, example, batch_sizes, repeats, threads)
    cmp = compare_latency(
        dense, candidate, example, batch_sizes=tuple(batch_sizes), repeats=repeats, warmup=2, threads=threads
    )
    return {r.batch_size: (r.median_a_s, r.median_a_s * r.ratio) for r in cmp.results}
