"""``export_onnx``: a compressed (or dense) model as an ONNX file that ONNX Runtime runs, float32 or static
QDQ int8.

The int8 path is ONNX Runtime's own static quantization (``quantize_static``: QDQ format, per-channel
symmetric int8 weights, uint8 activations calibrated by min/max on ``calib_data``), run on the float model
factorch exports: it is the CPU int8 path that runs fast here (measured: about 2x float32 on a vgg-sized net;
``quantize_dynamic`` was several times slower). Factorized chains export as their plain convolutions; pruned
and quantized layers as their dense equivalents (a quantized layer's dequantized weights: on ONNX Runtime's
symmetric int8 grid, which is the same grid at 8 bits, its codes come back unchanged).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from factorch.apply import as_inputs
from factorch.data.calib import calibration_inputs
from factorch.layers import PrunedLayer, QuantizedLayer
from factorch.profiling.onnx import onnx_bytes, ort_session, require_onnxruntime
from factorch.surgery import compressed_layers, conv_bn_pairs, fold_batchnorms, replace_module


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_inputs: Tensor | tuple,
    *,
    int8: bool = False,
    calib_data: Any = None,
    calib_samples: int = 512,
    per_channel: bool = True,
    fold_bn: bool = True,
    opset: int = 17,
) -> Path:
    """Write ``model`` (left untouched) to ``path`` as ONNX with a dynamic batch dimension.

    Args:
        model: a dense or compressed network.
        path: the ``.onnx`` file to write (written whole or not at all).
        example_inputs: inputs of one forward pass.
        int8: static QDQ int8 (ONNX Runtime ``quantize_static``); needs ``calib_data``.
        calib_data: calibration inputs for the activation ranges (a tensor or a DataLoader).
        calib_samples: how many calibration inputs are used.
        per_channel: one weight scale per output channel (int8).
        fold_bn: fold each conv -> BatchNorm pair first (what an int8 kernel needs).
        opset: ONNX opset.

    Returns:
        The path written.

    Raises:
        ValueError: ``int8`` without ``calib_data``; a layer ONNX cannot export or ONNX Runtime cannot run
            (the message names it).
    """
    require_onnxruntime("export_onnx")
    path = Path(path)
    inputs = tuple(t[:1] for t in as_inputs(example_inputs))
    if int8 and calib_data is None:
        raise ValueError("export_onnx(int8=True) needs calib_data: the activation ranges are calibrated on it")
    work = copy.deepcopy(model).eval()
    for name, layer in compressed_layers(work):
        if isinstance(layer, (PrunedLayer, QuantizedLayer)):  # plain torch layers with the weights they compute
            replace_module(work, name, layer.to_dense())
    if fold_bn:
        fold_batchnorms(work, conv_bn_pairs(work))
    try:
        data = onnx_bytes(work, inputs, opset)
    except Exception as err:  # noqa: BLE001 - the exporter's errors name the operator
        raise ValueError(f"export_onnx: the model cannot be exported to ONNX: {err}") from err
    try:
        ort_session(data, None, 1)
    except Exception as err:  # noqa: BLE001 - ONNX Runtime's error names the node
        raise ValueError(f"export_onnx: ONNX Runtime cannot run the exported model: {err}") from err
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp = Path(tmp)
        float_path = tmp / "float.onnx"
        float_path.write_bytes(data)
        out = float_path
        if int8:
            out = tmp / "int8.onnx"
            _quantize_static(float_path, out, calibration_inputs(calib_data, calib_samples), per_channel)
        os.replace(out, path)
    return path


def _quantize_static(src: Path, dst: Path, calib: Tensor, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x0": b.numpy()} for b in calib.split(64)])

        def get_next(self):
            return next(self.batches, None)

    prepared = src.with_name("prepared.onnx")
    try:  # shape inference and graph optimisation before quantizing, as ONNX Runtime advises
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
    except Exception:  # noqa: BLE001 - optional: quantize the model as exported
        prepared = src
    quantize_static(
        str(prepared),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
