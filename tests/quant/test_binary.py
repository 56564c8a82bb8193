"""BinaryLayer: BinaryConnect, BWN and XNOR-Net against their formulas written with torch ops."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import factorch
from factorch.layers import BinaryLayer
from factorch.layers.binary import binarize


def signs(w):
    return torch.where(w >= 0, 1.0, -1.0)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["conv1d", "conv2d", "linear"]),
    mode=st.sampled_from(["binaryconnect", "bwn", "xnor"]),
    cin=st.integers(1, 4),
    cout=st.integers(1, 4),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    bias=st.booleans(),
)
def test_binary_layer_computes_the_papers_formulas(kind, mode, cin, cout, k, stride, bias):
    torch.manual_seed(3)
    if kind == "linear":
        dense, x = nn.Linear(cin, cout, bias=bias), torch.randn(3, cin)
    else:
        conv = nn.Conv1d if kind == "conv1d" else nn.Conv2d
        dense = conv(cin, cout, k, stride, k // 2, bias=bias)
        x = torch.randn(2, cin, 7) if kind == "conv1d" else torch.randn(2, cin, 7, 6)
    layer = BinaryLayer.from_dense(dense, mode=mode)
    w = dense.weight.detach()
    wb = signs(w)
    if mode != "binaryconnect":  # alpha = mean |W| per output filter
        wb = wb * w.abs().flatten(1).mean(1).view(-1, *[1] * (w.dim() - 1))
    b = dense.bias
    if kind == "linear":
        fn = lambda inp, weight, bias_: F.linear(inp, weight, bias_)  # noqa: E731
    else:
        op = F.conv1d if kind == "conv1d" else F.conv2d
        fn = lambda inp, weight, bias_: op(inp, weight, bias_, stride, k // 2)  # noqa: E731
    got = layer(x)
    if mode == "xnor":  # binary inputs, times beta: mean |x| over channels, box-averaged per kernel window,
        # x centred by the per-channel threshold, set to the channel's mean on the first batch (0: the paper's)
        dims = [d for d in range(x.dim()) if d != 1]
        torch.testing.assert_close(layer.input_shift.detach(), x.mean(dim=dims))
        x = x - x.mean(dim=dims, keepdim=True)
        a = x.abs().mean(1, keepdim=True)
        if kind == "linear":
            beta = a
        else:
            box = torch.ones(1, 1, *dense.kernel_size) / math.prod(dense.kernel_size)
            beta = (F.conv1d if kind == "conv1d" else F.conv2d)(a, box, None, stride, k // 2)
        expected = fn(signs(x), wb, None) * beta
        if b is not None:
            expected = expected + (b if kind == "linear" else b.view(1, -1, *[1] * (x.dim() - 2)))
    else:
        expected = fn(x, wb, b)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if mode != "xnor":
        torch.testing.assert_close(layer.to_dense()(x), expected, rtol=1e-5, atol=1e-6)


def test_xnor_after_a_relu_keeps_the_input_pattern_and_learns_its_threshold():
    """A ReLU output is never negative: binarised around 0 it would be the constant +1 (and the network falls
    to chance); around the learned per-channel threshold it keeps which inputs are large."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1)
    layer = BinaryLayer.from_dense(conv, mode="xnor")
    x = torch.relu(torch.randn(8, 4, 6, 6))
    signs_seen = binarize(layer._centred(x)).detach()
    assert (signs_seen == 1).any() and (signs_seen == -1).any()
    assert torch.equal(signs_seen == 1, x > x.mean(dim=(0, 2, 3), keepdim=True))  # above the channel's mean
    layer(x).sum().backward()
    assert layer.input_shift.grad is not None and layer.input_shift.grad.abs().sum() > 0


def test_xnor_thresholds_are_not_set_by_an_example_input_profiled_in_eval_mode():
    """compress profiles the example input (often a zero image) in eval mode: the thresholds wait for training."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    b, _ = factorch.compress(model, factorch.BinaryConfig(mode="xnor"), example_inputs=torch.zeros(1, 1, 9, 9))
    assert torch.isnan(b[2].input_shift).all()
    b.train()(torch.randn(4, 1, 9, 9))
    assert not torch.isnan(b[2].input_shift).any()


def test_gradients_pass_straight_through_inside_the_clip():
    lin = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -2.0, 0.0]]))
    layer = BinaryLayer.from_dense(lin, mode="binaryconnect")
    assert layer.binary_weight().tolist() == [[1.0, -1.0, 1.0]]  # sign(0) = +1
    layer(torch.ones(1, 3)).sum().backward()
    assert layer.layer.weight.grad.tolist() == [[1.0, 0.0, 1.0]]  # |w| > 1: no gradient


def test_binary_storage_is_one_bit_per_weight_and_loads_bit_exactly(tmp_path):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3),
                             nn.Flatten(), nn.Linear(32 * 2 * 2, 10))  # fmt: skip

    x = torch.randn(4, 1, 8, 8)
    for mode in ("bwn", "binaryconnect", "xnor"):
        b, report = factorch.compress(net(), factorch.BinaryConfig(mode=mode), example_inputs=x[:1])
        kinds = [type(m).__name__ for m in b]
        assert kinds[0] == "Conv2d" and kinds[2] == "BinaryLayer" and kinds[-1] == "Linear"  # edges real-valued
        row = next(r for r in report.layers if r.name == "4")
        # 1 bit per weight, float32 biases, one float32 alpha per filter (and one threshold per input, xnor)
        scales = {"binaryconnect": 0, "bwn": 32, "xnor": 32 + 32}[mode]
        assert row.size_after == math.ceil((32 * 32 * 9 + 32 * 32 + scales * 32) / 8)
        b.train()(x)  # a training batch: xnor's input thresholds are set from it
        b.eval()
        factorch.save(b, tmp_path / mode)
        back = factorch.load(tmp_path / mode, base_model=net()).eval()
        torch.testing.assert_close(back(x), b(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="BinaryConfig"):
        factorch.BinaryConfig(mode="ternary")
