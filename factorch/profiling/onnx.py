"""ONNX export of a module and ONNX Runtime sessions on the CPU, for timing and deployment."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor, nn


def has_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def require_onnxruntime(what: str) -> None:
    if not has_onnxruntime():
        raise ValueError(f"{what} needs onnx and onnxruntime: pip install 'factorch[onnx]'")


def onnx_bytes(module: nn.Module, inputs: tuple[Tensor, ...], opset: int = 17) -> bytes:
    """``module`` (in eval mode) exported to ONNX with a dynamic batch dimension; inputs named ``x0, x1...``."""
    buffer = io.BytesIO()
    was = module.training
    try:
        with torch.no_grad():
            torch.onnx.export(
                module.eval(),
                inputs,
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[f"x{i}" for i in range(len(inputs))],
                dynamic_axes={f"x{i}": {0: "batch"} for i in range(len(inputs))},
            )
    finally:
        module.train(was)
    return buffer.getvalue()


def ort_session(source: nn.Module | bytes | str | Path, inputs: tuple[Tensor, ...] | None, threads: int | None):
    """An ONNX Runtime CPU session of a module (exported first), ONNX bytes or an ``.onnx`` file."""
    import onnxruntime as ort

    if isinstance(source, nn.Module):
        source = onnx_bytes(source, inputs)
    elif isinstance(source, Path):
        source = str(source)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # sessions timed in turn: threads spinning in an idle one would steal cores from the other
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
