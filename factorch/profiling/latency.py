"""Wall-clock latency of a forward pass per batch size, and an honest A/B comparison of two models.

Latency on shared machines is noisy (easily ±15 % from run to run), so report medians and the
interquartile range rather than means, and compare two models by alternating their calls in one
process and taking the median of the per-pair ratios (:func:`compare_latency`).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from factorch.profiling._format import format_seconds
from factorch.profiling._inputs import check_model, eval_mode, num_threads, resolve_inputs
from factorch.profiling._trace import run_forward


@dataclass(frozen=True)
class LatencyResult:
    """Timing of one batch size.

    Attributes:
        batch_size: samples per call.
        median_s: median seconds per call.
        iqr_s: interquartile range (75th - 25th percentile) of the seconds per call.
        min_s: fastest call.
        repeats: number of timed calls.
        throughput: samples per second at the median latency.
    """

    batch_size: int
    median_s: float
    iqr_s: float
    min_s: float
    repeats: int
    throughput: float


@dataclass
class LatencyReport:
    """Result of :func:`measure_latency`: one :class:`LatencyResult` per batch size."""

    results: list[LatencyResult]
    threads: int
    warmup: int
    device: str

    def median(self, batch_size: int) -> float:
        """Median seconds per call at ``batch_size``."""
        return _find(self.results, batch_size).median_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with exact values in seconds."""
        return {
            "threads": self.threads,
            "warmup": self.warmup,
            "device": self.device,
            "results": [asdict(r) for r in self.results],
        }

    def to_markdown(self) -> str:
        """A GitHub table of the medians, IQR, minimum and throughput."""
        lines = [
            "| Batch | Median | IQR | Min | Throughput (samples/s) | Repeats |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.results:
            lines.append(
                f"| {r.batch_size} | {format_seconds(r.median_s)} | {format_seconds(r.iqr_s)} | "
                f"{format_seconds(r.min_s)} | {r.throughput:,.1f} | {r.repeats} |"
            )
        note = f"{self.device}, {self.threads} threads, {self.warmup} warm-up calls, torch.inference_mode()"
        return "\n".join(lines) + f"\n\n- {note}.\n"


@dataclass(frozen=True)
class LatencyRatio:
    """Model B against model A at one batch size.

    Attributes:
        batch_size: samples per call.
        median_a_s: median seconds per call of model A.
        median_b_s: median seconds per call of model B.
        ratio: median over pairs of ``time_b / time_a`` (below 1: B is faster).
        ratio_iqr: interquartile range of the per-pair ratios.
        repeats: number of timed pairs.
    """

    batch_size: int
    median_a_s: float
    median_b_s: float
    ratio: float
    ratio_iqr: float
    repeats: int

    @property
    def speedup(self) -> float:
        """How many times faster B is than A (``1 / ratio``)."""
        return 1.0 / self.ratio


@dataclass
class LatencyComparison:
    """Result of :func:`compare_latency`."""

    results: list[LatencyRatio]
    names: tuple[str, str]
    threads: int
    warmup: int
    device: str

    def ratio(self, batch_size: int) -> float:
        """Median of the per-pair ratios ``time_b / time_a`` at ``batch_size``."""
        return _find(self.results, batch_size).ratio

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with exact values in seconds."""
        return {
            "names": list(self.names),
            "threads": self.threads,
            "warmup": self.warmup,
            "device": self.device,
            "results": [{**asdict(r), "speedup": r.speedup} for r in self.results],
        }

    def to_markdown(self) -> str:
        """A GitHub table: both medians, the median ratio B/A with its IQR, and the speedup."""
        a, b = self.names
        lines = [
            f"| Batch | {a} median | {b} median | {b} / {a} (median of ratios) | IQR | Speedup | Pairs |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.results:
            lines.append(
                f"| {r.batch_size} | {format_seconds(r.median_a_s)} | {format_seconds(r.median_b_s)} | "
                f"{r.ratio:.3f} | {r.ratio_iqr:.3f} | {r.speedup:.2f}× | {r.repeats} |"
            )
        note = (
            f"{self.device}, {self.threads} threads, {self.warmup} warm-up calls each; "
            "calls of the two models alternate (ABBA) in one process"
        )
        return "\n".join(lines) + f"\n\n- {note}.\n"


def _find(results: Sequence[Any], batch_size: int) -> Any:
    for r in results:
        if r.batch_size == batch_size:
            return r
    raise ValueError(f"batch size {batch_size} was not measured; measured: {[r.batch_size for r in results]}")


def _check_int(value: object, argument: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{argument} must be >= {minimum}, got {value}")
    return value


def _check_timing_args(
    batch_sizes: object, threads: object, warmup: object, repeats: object
) -> tuple[tuple[int, ...], int | None, int, int]:
    if isinstance(batch_sizes, int) and not isinstance(batch_sizes, bool):
        batch_sizes = (batch_sizes,)
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or not batch_sizes:
        raise TypeError(f"batch_sizes must be a non-empty sequence of positive ints, got {batch_sizes!r}")
    sizes = tuple(_check_int(b, f"batch_sizes[{i}]", 1) for i, b in enumerate(batch_sizes))
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"batch_sizes has duplicates: {sizes}")
    if threads is not None:
        _check_int(threads, "threads", 1)
    return sizes, threads, _check_int(warmup, "warmup", 0), _check_int(repeats, "repeats", 1)  # type: ignore[return-value]


def batch_inputs(inputs: Sequence[Tensor], batch_size: int) -> tuple[Tensor, ...]:
    """Each input repeated along dim 0 (its batch dimension) and cut to ``batch_size`` samples."""
    out = []
    for i, x in enumerate(inputs):
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"input {i} of shape {tuple(x.shape)} has no batch dimension (dim 0) to repeat")
        if x.shape[0] == batch_size:
            out.append(x)
            continue
        copies = -(-batch_size // x.shape[0])
        out.append(x.repeat(copies, *([1] * (x.dim() - 1)))[:batch_size].contiguous())
    return tuple(out)


def _synchronize(inputs: Sequence[Tensor]) -> Callable[[], None]:
    """A function that waits for the CUDA devices of ``inputs`` (does nothing on the CPU)."""
    devices = sorted({x.device for x in inputs if x.device.type == "cuda"}, key=str)

    def sync() -> None:
        for device in devices:
            torch.cuda.synchronize(device)

    return sync


@contextmanager
def _timing(models: Sequence[nn.Module], threads: int | None) -> Iterator[None]:
    """Threads set, inference mode, models in eval mode, garbage collector paused; all restored after."""
    with ExitStack() as stack:
        stack.enter_context(num_threads(threads))
        stack.enter_context(torch.inference_mode())
        for model in {id(m): m for m in models}.values():
            stack.enter_context(eval_mode(model))
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if gc_was_enabled:
                gc.enable()


def _time_call(model: nn.Module, inputs: tuple[Tensor, ...], sync: Callable[[], None]) -> float:
    """Seconds of one call; through :func:`run_forward`, which costs nothing more unless the call fails."""
    start = time.perf_counter()
    run_forward(model, inputs)
    sync()
    return time.perf_counter() - start


def _spread(values: Sequence[float]) -> float:
    q25, q75 = np.percentile(values, [25, 75])
    return float(q75 - q25)


def _device(inputs: Sequence[Tensor]) -> str:
    device = inputs[0].device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def measure_latency(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
    runtime: str = "torch",
) -> LatencyReport:
    """Median latency of ``model(*inputs)`` per batch size, under ``torch.inference_mode()`` in eval mode.

    For each batch size the example inputs are repeated along dim 0 to that size; ``warmup`` untimed
    calls precede ``repeats`` calls timed one by one with ``time.perf_counter`` (CUDA is synchronized
    after each call; the garbage collector is paused while timing). Calls go through
    :func:`~factorch.profiling.run_forward`, so an input that does not fit names the failing layer.
    The model's ``training`` flags and torch's thread count are restored afterwards.

    Args:
        model: the network.
        example_inputs: a tensor or a tuple of tensors whose dim 0 is the batch dimension.
        input_shape: instead of ``example_inputs``, the shape of one standard-normal input.
        batch_sizes: batch sizes to time.
        threads: ``torch.set_num_threads`` while timing (``None``: leave it as it is).
        warmup: untimed calls per batch size.
        repeats: timed calls per batch size.
        runtime: ``"torch"`` (eager) or ``"onnxruntime"``: the model exported to ONNX (dynamic batch) and run by
            an ONNX Runtime CPU session, or ``model`` given as the path of an ``.onnx`` file (e.g. written by
            :func:`factorch.export_onnx`; then ``example_inputs`` is required).

    Returns:
        Median, IQR, minimum and throughput per batch size.

    Raises:
        ValueError: a non-positive batch size, ``repeats < 1``, ``warmup < 0``, ``threads < 1``, bad inputs,
            or a :class:`~factorch.profiling.ForwardError` when the input does not fit the model.
        TypeError: an argument of the wrong type.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnxruntime":
        return _measure_onnxruntime(model, example_inputs, input_shape, batch_sizes, threads, warmup, repeats)
    check_model(model)
    sizes, threads, warmup, repeats = _check_timing_args(batch_sizes, threads, warmup, repeats)
    example = resolve_inputs(model, example_inputs, input_shape)
    sync = _synchronize(example)
    results = []
    with _timing([model], threads):
        used_threads = torch.get_num_threads()
        for batch_size in sizes:
            inputs = batch_inputs(example, batch_size)
            for _ in range(warmup):
                run_forward(model, inputs)
            sync()
            times = [_time_call(model, inputs, sync) for _ in range(repeats)]
            median = statistics.median(times)
            results.append(
                LatencyResult(
                    batch_size=batch_size,
                    median_s=median,
                    iqr_s=_spread(times),
                    min_s=min(times),
                    repeats=repeats,
                    throughput=batch_size / median if median > 0 else float("inf"),
                )
            )
    return LatencyReport(results=results, threads=used_threads, warmup=warmup, device=_device(example))


RUNTIMES = ("torch", "onnxruntime")


def _measure_onnxruntime(model, example_inputs, input_shape, batch_sizes, threads, warmup, repeats) -> LatencyReport:
    from pathlib import Path

    from factorch.profiling.onnx import ort_session, require_onnxruntime

    require_onnxruntime("runtime='onnxruntime'")
    sizes, threads, warmup, repeats = _check_timing_args(batch_sizes, threads, warmup, repeats)
    if isinstance(model, (str, Path)):
        if not Path(model).is_file():
            raise ValueError(f"no ONNX file at {model}")
        if example_inputs is None:
            raise ValueError("timing an ONNX file needs example_inputs (tensors of the model's inputs)")
        example = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
        session = ort_session(model, None, threads)
    else:
        check_model(model)
        example = resolve_inputs(model, example_inputs, input_shape)
        session = ort_session(model, tuple(t[:1] for t in example), threads)
    names = [i.name for i in session.get_inputs()]
    results = []
    for batch_size in sizes:
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, batch_inputs(example, batch_size))}
        for _ in range(warmup):
            session.run(None, feeds)
        times = []
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for _ in range(repeats):
                t0 = time.perf_counter()
                session.run(None, feeds)
                times.append(time.perf_counter() - t0)
        finally:
            if gc_was:
                gc.enable()
        median = statistics.median(times)
        results.append(
            LatencyResult(batch_size=batch_size, median_s=median, iqr_s=_spread(times), min_s=min(times),
                          repeats=repeats, throughput=batch_size / median if median > 0 else float("inf"))
        )  # fmt: skip
    used = threads or torch.get_num_threads()
    return LatencyReport(results=results, threads=used, warmup=warmup, device="cpu (onnxruntime)")


def compare_latency(
    model_a: nn.Module,
    model_b: nn.Module,
    example_inputs: Tensor | Sequence[Tensor] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    repeats: int = 30,
    warmup: int = 5,
    names: tuple[str, str] = ("A", "B"),
) -> LatencyComparison:
    """Time two models back to back, alternating their calls, and report the median ratio B/A.

    Both models get the same inputs (built as in :func:`measure_latency`, from ``model_a``'s dtype and
    device when ``input_shape`` is given). Each of the ``repeats`` pairs times one call of each model,
    in the order A, B then B, A (so neither always runs second); the ratio of the pair is
    ``time_b / time_a``. Drift of the machine's speed over the run affects both calls of a pair alike,
    so the median of these ratios is steadier than the ratio of two separately measured medians.

    Args:
        model_a: the reference model (e.g. the dense one).
        model_b: the candidate (e.g. the compressed one).
        example_inputs: a tensor or a tuple of tensors whose dim 0 is the batch dimension.
        input_shape: instead of ``example_inputs``, the shape of one standard-normal input.
        batch_sizes: batch sizes to time.
        threads: ``torch.set_num_threads`` while timing (``None``: leave it as it is).
        repeats: timed pairs per batch size.
        warmup: untimed calls of each model per batch size.
        names: labels of the two models in the table.

    Returns:
        Per batch size both medians, the median ratio B/A and its IQR.

    Raises:
        ValueError: as :func:`measure_latency`.
        TypeError: an argument of the wrong type.
    """
    check_model(model_a, "model_a")
    check_model(model_b, "model_b")
    sizes, threads, warmup, repeats = _check_timing_args(batch_sizes, threads, warmup, repeats)
    if len(names) != 2 or not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be two strings, got {names!r}")
    example = resolve_inputs(model_a, example_inputs, input_shape)
    sync = _synchronize(example)
    results = []
    with _timing([model_a, model_b], threads):
        used_threads = torch.get_num_threads()
        for batch_size in sizes:
            inputs = batch_inputs(example, batch_size)
            for _ in range(warmup):
                run_forward(model_a, inputs)
                run_forward(model_b, inputs)
            sync()
            times_a, times_b = [], []
            for i in range(repeats):
                if i % 2 == 0:
                    times_a.append(_time_call(model_a, inputs, sync))
                    times_b.append(_time_call(model_b, inputs, sync))
                else:
                    times_b.append(_time_call(model_b, inputs, sync))
                    times_a.append(_time_call(model_a, inputs, sync))
            ratios = [b / a for a, b in zip(times_a, times_b, strict=True)]
            results.append(
                LatencyRatio(
                    batch_size=batch_size,
                    median_a_s=statistics.median(times_a),
                    median_b_s=statistics.median(times_b),
                    ratio=statistics.median(ratios),
                    ratio_iqr=_spread(ratios),
                    repeats=repeats,
                )
            )
    return LatencyComparison(
        results=results, names=tuple(names), threads=used_threads, warmup=warmup, device=_device(example)
    )
