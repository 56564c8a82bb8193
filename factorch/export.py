"""``export_onnx``: a compressed (or dense) model as an ONNX file that ONNX Runtime runs, float32 or static
QDQ int8.

The int8 path is ONNX Runtime's own static quantization (``quantize_static``: QDQ format, per-channel
symmetric int8 weights, uint8 activations calibrated by min/max on ``calib_data``), run on the float model
factorch exports: it is the CPU int8 path that runs fast here (measured: about 2x float32 on a vgg-sized net;
``quantize_dynamic`` was several times slower). Factorized chains export as their plain convolutions; pruned
and quantized layers as their dense equivalents (a quantized layer's dequantized weights: on ONNX Runtime's
symmetric int8 grid, which is the same grid at 8 bits, its codes come back unchanged). For int8, the thin
channels inside factorized chains are padded with zero filters up to what ONNX Runtime's fast int8 convolution
takes (:func:`pad_chain_channels`; same outputs, and on resnet20 at ``macs=0.33`` the int8 model runs ~1.5x
faster than unpadded).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from factorch.apply import as_inputs
from factorch.data.calib import calibration_inputs
from factorch.layers import FactorizedLayer, PrunedLayer, QuantizedLayer
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
    pad_channels: bool | None = None,
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
        pad_channels: pad the channels inside factorized chains (Tucker-2, spatial SVD, SVD...) with zero
            filters up to what ONNX Runtime's fast int8 convolution takes (see :func:`pad_chain_channels`):
            the outputs are unchanged, the thin factor convs run several times faster. ``None``: with
            ``int8`` only.
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
    for name, layer in list(compressed_layers(work, nested=True)):
        if isinstance(layer, (PrunedLayer, QuantizedLayer)):  # plain torch layers with the weights they compute
            replace_module(work, name, layer.to_dense())
    if fold_bn:
        fold_batchnorms(work, conv_bn_pairs(work))
    if int8 if pad_channels is None else pad_channels:
        pad_chain_channels(work)
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


#: ONNX Runtime's fast int8 convolution (MLAS's symmetric "indirect" kernel, x86) takes a conv only with
#: input channels in multiples of 4 and at least 16 output channels in multiples of 4 (``MlasConvSymPackWSize``;
#: measured here: 16 -> 20 and 24 -> 24 channels run on it, 16 -> 11 and 11 -> 11 take the im2col + GEMM path,
#: several times slower per MAC: a Tucker-2 core 11 -> 11 at 28x28 took 1.85 ms, the 16 -> 16 conv it replaced
#: 0.33 ms).
FAST_INT8_MIN_OUT, FAST_INT8_MULTIPLE = 16, 4


def fast_int8_channels(c: int) -> int:
    """The fewest channels ``>= c`` that ONNX Runtime's fast int8 convolution takes on both sides."""
    return max(FAST_INT8_MIN_OUT, math.ceil(c / FAST_INT8_MULTIPLE) * FAST_INT8_MULTIPLE)


@torch.no_grad()
def pad_chain_channels(model: nn.Module, max_growth: float = 2.0) -> int:
    """Pad the inner channels of every factorized chain of plain 2-D convs (no groups) in ``model`` (in
    place) with zero filters, up to :func:`fast_int8_channels`. A chain is linear (no activation inside), so
    the padded filters output zeros and the next conv reads them with zero weights: every output is unchanged.
    A junction is padded only when it grows at most ``max_growth`` times. Returns the junctions padded.

    Hand-written: no exporter or quantizer pads channels for a kernel's layout rule.
    """
    padded = 0
    for layer in [m for m in model.modules() if isinstance(m, FactorizedLayer)]:
        convs = list(layer.children())
        if len(convs) < 2 or not all(isinstance(c, nn.Conv2d) and c.groups == 1 for c in convs):
            continue
        for i, (a, b) in enumerate(zip(convs, convs[1:])):
            c = a.out_channels
            target = fast_int8_channels(c)
            if target == c or target > max_growth * c:
                continue
            extra = target - c
            w = a.weight
            new_a = nn.Conv2d(a.in_channels, target, a.kernel_size, a.stride, a.padding, a.dilation,
                              bias=a.bias is not None, padding_mode=a.padding_mode).to(w)  # fmt: skip
            new_a.weight.copy_(torch.cat([w, w.new_zeros(extra, *w.shape[1:])]))
            if a.bias is not None:
                new_a.bias.copy_(torch.cat([a.bias, a.bias.new_zeros(extra)]))
            v = b.weight
            new_b = nn.Conv2d(target, b.out_channels, b.kernel_size, b.stride, b.padding, b.dilation,
                              bias=b.bias is not None, padding_mode=b.padding_mode).to(v)  # fmt: skip
            new_b.weight.copy_(torch.cat([v, v.new_zeros(v.shape[0], extra, *v.shape[2:])], dim=1))
            if b.bias is not None:
                new_b.bias.copy_(b.bias)
            names = list(dict(layer.named_children()))
            setattr(layer, names[i], new_a)
            setattr(layer, names[i + 1], new_b)
            convs[i], convs[i + 1] = new_a, new_b
            padded += 1
    return padded


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
