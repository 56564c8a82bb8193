"""Measured latency of a model, or of a compressed model against its dense original, on several runtimes.

Runtimes: ``torch`` (eager), ``onnxruntime`` (the models exported to ONNX, CPU provider) and ``compile``
(``torch.compile`` with the inductor backend, CPU). Each pair is timed in one process with the calls of the
two models alternated (see :func:`factorch.compare_latency`), so the ratio is steadier than two separate
medians; a runtime that cannot run a model here gets a row saying why.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from factorch.auto.timing import time_pair
from factorch.profiling import compare_latency, measure_latency
from factorch.profiling.latency import batch_inputs
from factorch.profiling.onnx import has_onnxruntime

RUNTIMES = ("torch", "onnxruntime", "compile")


@dataclass
class RuntimeRow:
    """One runtime at one batch size: medians in seconds, ``ratio`` = compressed / dense (below 1: faster)."""

    runtime: str
    batch_size: int
    dense_s: float | None
    compressed_s: float | None = None
    ratio: float | None = None
    note: str = ""


@dataclass
class RuntimeBenchmark:
    rows: list[RuntimeRow]
    threads: int
    repeats: int

    def row(self, runtime: str, batch_size: int) -> RuntimeRow:
        for r in self.rows:
            if (r.runtime, r.batch_size) == (runtime, batch_size):
                return r
        raise KeyError(f"no row for runtime {runtime!r} at batch size {batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "repeats": self.repeats, "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self) -> str:
        lines = [
            "| runtime | batch | dense ms | compressed ms | compressed / dense | speed-up | note |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:

            def ms(v: float | None) -> str:
                return "-" if v is None else f"{1000 * v:.3f}"

            ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
            speed = "-" if r.ratio is None else f"{1 / r.ratio:.2f}x"
            lines.append(
                f"| {r.runtime} | {r.batch_size} | {ms(r.dense_s)} | {ms(r.compressed_s)} | {ratio} | {speed} | "
                f"{r.note} |"
            )
        lines.append("")
        lines.append(
            f"- {self.threads} threads; medians of {self.repeats} calls per model, the two models' calls alternated "
            "in one process; `compile` = torch.compile (inductor, CPU), compiled once per batch size before timing."
        )
        return "\n".join(lines) + "\n"


def _why(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


def _compiled(model: nn.Module, example: tuple[Tensor, ...], sizes: Sequence[int]) -> nn.Module:
    compiled = torch.compile(copy.deepcopy(model).eval(), backend="inductor", dynamic=False)
    with torch.no_grad():
        for size in sizes:  # compile for each shape now, not inside the timed calls
            compiled(*batch_inputs(example, size))
    return compiled


def benchmark_runtimes(
    dense: nn.Module,
    compressed: nn.Module | None,
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    runtimes: Sequence[str] = ("torch", "onnxruntime"),
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 20,
    threads: int | None = None,
) -> RuntimeBenchmark:
    """Time ``dense`` (and ``compressed`` against it) on each of ``runtimes`` at each batch size.

    Args:
        dense: the original model.
        compressed: its compressed form, or ``None`` to time ``dense`` alone.
        example_inputs: inputs of batch size 1 (repeated to each batch size).
        runtimes: among ``torch``, ``onnxruntime``, ``compile``.
        batch_sizes: batch sizes to time.
        repeats: timed calls of each model per batch size.
        threads: torch and ONNX Runtime threads (``None``: as set).

    Returns:
        One row per runtime and batch size; a runtime that cannot run here has rows naming the reason.
    """
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    example = tuple(t[:1] for t in example)
    sizes = tuple(int(b) for b in batch_sizes)
    rows: list[RuntimeRow] = []
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for runtime in runtimes:
            try:
                rows += _runtime_rows(runtime, dense, compressed, example, sizes, repeats, threads)
            except Exception as err:  # noqa: BLE001 - a runtime that cannot run the model is a result
                rows += [RuntimeRow(runtime, size, None, note=f"cannot run: {_why(err)}") for size in sizes]
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
    return RuntimeBenchmark(rows, used, repeats)


def _runtime_rows(runtime, dense, compressed, example, sizes, repeats, threads) -> list[RuntimeRow]:
    if runtime == "onnxruntime":
        if not has_onnxruntime():
            raise RuntimeError("the onnx extra is not installed (pip install 'factorch[onnx]')")
        if compressed is None:
            report = measure_latency(dense, example, batch_sizes=sizes, repeats=repeats, runtime="onnxruntime",
                                     threads=threads)  # fmt: skip
            return [RuntimeRow(runtime, s, report.median(s)) for s in sizes]
        pairs = time_pair(dense, compressed, example, batch_sizes=sizes, runtime="onnxruntime", repeats=repeats,
                          threads=threads)  # fmt: skip
        return [RuntimeRow(runtime, s, a, b, b / a) for s, (a, b) in pairs.items()]
    if runtime == "compile":
        dense = _compiled(dense, example, sizes)
        compressed = None if compressed is None else _compiled(compressed, example, sizes)
    if compressed is None:
        report = measure_latency(dense, example, batch_sizes=sizes, repeats=repeats, warmup=2)
        return [RuntimeRow(runtime, s, report.median(s)) for s in sizes]
    cmp = compare_latency(dense, compressed, example, batch_sizes=sizes, repeats=repeats, warmup=2)
    return [RuntimeRow(runtime, r.batch_size, r.median_a_s, r.median_b_s, r.ratio) for r in cmp.results]
