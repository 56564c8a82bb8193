"""Factorized layers are plain torch modules: they export with torch.export (and ONNX when installed)."""

import pytest
import torch
from torch import nn

from factorch.layers import CPConv, LowRankLinear, SpatialSVDConv2d, SVDConv, TTEmbedding, TTLinear, Tucker2Conv

CONV_CASES = [
    (SVDConv, {}),
    (SpatialSVDConv2d, {}),
    (Tucker2Conv, {}),
    (CPConv, {"form": "4", "n_iter_max": 5}),
    (CPConv, {"form": "3", "n_iter_max": 5}),
]


def _conv():
    torch.manual_seed(0)
    return nn.Conv2d(8, 12, 3, stride=(2, 1), padding=1, padding_mode="reflect", groups=2)


@pytest.mark.parametrize("cls,kwargs", CONV_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_torch_export_matches_eager(cls, kwargs):
    layer = cls.from_dense(_conv(), 2, **kwargs).eval()
    x = torch.randn(2, 8, 9, 9)
    exported = torch.export.export(layer, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), layer(x), atol=1e-6)


def test_channels_last_input():
    layer = Tucker2Conv.from_dense(_conv(), 0.5).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert torch.allclose(layer(x.to(memory_format=torch.channels_last)), layer(x), atol=1e-6)


@pytest.mark.parametrize(
    "make", [lambda: LowRankLinear.from_dense(nn.Linear(24, 16), 4), lambda: TTLinear.from_dense(nn.Linear(24, 16), 2)]
)
def test_linear_layers_export(make):
    layer = make().eval()
    x = torch.randn(3, 24)
    with torch.no_grad():
        assert torch.allclose(torch.export.export(layer, (x,)).module()(x), layer(x), atol=1e-6)


def test_tt_embedding_exports():
    layer = TTEmbedding.from_dense(nn.Embedding(30, 8), 2).eval()
    idx = torch.randint(0, 30, (4, 5))
    with torch.no_grad():
        assert torch.allclose(torch.export.export(layer, (idx,)).module()(idx), layer(idx), atol=1e-6)


@pytest.mark.parametrize("cls,kwargs", CONV_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_onnx_export_runs_in_onnxruntime(cls, kwargs, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    layer = cls.from_dense(_conv(), 2, **kwargs).eval()
    x = torch.randn(2, 8, 9, 9)
    path = tmp_path / "layer.onnx"
    torch.onnx.export(layer, (x,), str(path), dynamo=False)
    out = ort.InferenceSession(str(path)).run(None, {ort.InferenceSession(str(path)).get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out[0]), layer(x), atol=1e-5)
