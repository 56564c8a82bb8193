"""export_onnx and ONNX Runtime timing: float32 equal to torch, int8 QDQ with int8 weights, clear errors."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import factorch
from factorch.profiling.onnx import has_onnxruntime, ort_session

pytestmark = pytest.mark.skipif(not has_onnxruntime(), reason="needs the onnx extra (installed by make test)")


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()  # fmt: skip


X = torch.randn(32, 1, 12, 12, generator=torch.Generator().manual_seed(1))


def run(path, x):
    return torch.from_numpy(ort_session(path, None, 1).run(None, {"x0": x.numpy()})[0])


def test_float_export_of_factorized_pruned_and_quantized_layers_matches_torch(tmp_path):
    model = net()
    plan = factorch.Plan({
        "3": factorch.Tucker2Config(rank=0.5), "5": factorch.PruneConfig(sparsity=0.5),
        "9": factorch.QuantConfig(weight_bits=8, act_bits=32),
    })  # fmt: skip
    compressed, _ = factorch.compress(model, plan, example_inputs=X[:1])
    path = factorch.export_onnx(compressed, tmp_path / "m.onnx", X[:1])
    torch.testing.assert_close(run(path, X), compressed(X), rtol=1e-4, atol=1e-5)
    kinds = {type(m).__name__ for m in compressed.modules()}
    assert {"QuantizedLayer", "PrunedLayer", "BatchNorm2d"} <= kinds  # export left the model as it was
    report = factorch.measure_latency(str(path), X[:1], runtime="onnxruntime", batch_sizes=(1, 4), repeats=3)
    assert report.device == "cpu (onnxruntime)" and report.median(4) > 0
    live = factorch.measure_latency(compressed, X[:1], runtime="onnxruntime", batch_sizes=(2,), repeats=2)
    assert live.median(2) > 0


def test_int8_export_is_qdq_with_int8_weights_and_close_to_float(tmp_path):
    import onnx

    model = net()
    path = factorch.export_onnx(model, tmp_path / "q.onnx", X[:1], int8=True, calib_data=X)
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) == 3  # every conv's weights, per channel
    out, ref = run(path, X), model(X).detach()
    assert float((out - ref).norm() / ref.norm()) < 0.1
    assert np.mean((out.argmax(1) == ref.argmax(1)).numpy()) >= 0.8


def test_export_errors_name_the_problem_and_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="needs calib_data"):
        factorch.export_onnx(net(), tmp_path / "a.onnx", X[:1], int8=True)

    class Odd(nn.Module):
        def forward(self, x):
            return torch.special.i0e(x)

    with pytest.raises(ValueError, match="special_i0e"):
        factorch.export_onnx(Odd(), tmp_path / "b.onnx", X[:1])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="runtime"):
        factorch.measure_latency(net(), X[:1], runtime="tvm")


def test_cli_quantize_and_export(tmp_path):
    from factorch.cli import main

    out = tmp_path / "q"
    assert main(["quantize", "lenet5", "--pretrained", "--calib", "64", "--no-eval", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["bits_per_weight"] < 9 and report["totals"]["activation_calibration"]["n_samples"] == 64
    assert isinstance(factorch.load(out).get_submodule(report["layers"][1]["name"]), factorch.layers.QuantizedLayer)
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(out), "--int8", "--calib", "64", "--out", str(onnx_file)]) == 0
    assert onnx_file.is_file()
    assert main(["quantize", "lenet5", "--pretrained", "--kmeans", "3", "--pack", "--no-eval", "--out",
                 str(tmp_path / "k")]) == 0  # fmt: skip
    assert main(["quantize", "lenet5", "--weight-bits", "1", "--no-eval", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("method,rank", [("tucker2", 0.3), ("spatial-svd", 0.3), ("svd", 0.25)])
def test_padded_factor_chains_compute_the_same_and_meet_the_fast_int8_rule(method, rank):
    from factorch.config import config_for_method
    from factorch.export import FAST_INT8_MIN_OUT, FAST_INT8_MULTIPLE, fast_int8_channels, pad_chain_channels

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 24, 3, padding=1)).eval()
    cfg = config_for_method(method, rank=rank)
    compressed, _ = factorch.compress(
        model, factorch.Plan({"0": cfg, "2": cfg}), example_inputs=torch.zeros(1, 16, 8, 8)
    )
    inner = [c.out_channels for layer in compressed if isinstance(layer, factorch.layers.FactorizedLayer)
             for c in list(layer.children())[:-1]]  # fmt: skip
    assert inner and any(c < FAST_INT8_MIN_OUT or c % FAST_INT8_MULTIPLE for c in inner)
    padded = pad_chain_channels(compressed)
    expected = [fast_int8_channels(c) if fast_int8_channels(c) <= 2 * c else c for c in inner]  # growth <= 2x
    assert padded == sum(e != c for e, c in zip(expected, inner, strict=True)) > 0
    after = [c.out_channels for layer in compressed if isinstance(layer, factorch.layers.FactorizedLayer)
             for c in list(layer.children())[:-1]]  # fmt: skip
    assert after == expected
    assert all(c >= FAST_INT8_MIN_OUT and c % FAST_INT8_MULTIPLE == 0 for c, e in zip(after, inner) if c != e)
    x = torch.randn(4, 16, 8, 8)
    ref, _ = factorch.compress(model, factorch.Plan({"0": cfg, "2": cfg}), example_inputs=torch.zeros(1, 16, 8, 8))
    torch.testing.assert_close(compressed(x), ref(x), rtol=0, atol=1e-6)


def test_fast_int8_channels():
    from factorch.export import fast_int8_channels

    assert [fast_int8_channels(c) for c in (1, 8, 15, 16, 17, 20, 21, 64)] == [16, 16, 16, 16, 20, 20, 24, 64]
