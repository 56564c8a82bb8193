"""Tests of factorch.profile: MAC counts pinned to hand-computed values, reports, errors, latency.

MACs are multiply-accumulates; a k_h x k_w convolution from C_in to C_out channels with ``groups``
costs ``N * H_out * W_out * k_h * k_w * (C_in / groups) * C_out`` of them (bias not counted).
"""

from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from factorch.models import create_model
from factorch.profiling import (
    ForwardError,
    LatencyComparison,
    LatencyReport,
    LayerProfile,
    ProfileReport,
    compare_latency,
    measure_latency,
    profile,
    run_forward,
    trace_forward,
)
from factorch.profiling.latency import batch_inputs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is fastest and leaves the machine's other cores alone."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def macs_of(module: nn.Module, *shape: int) -> int:
    return profile(module, input_shape=shape).total_macs


# ---------------------------------------------------------------- ResNet-20


def resnet20_rgb() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", in_channels=3)


def test_resnet20_macs_and_params_pinned():
    model = resnet20_rgb()
    report = profile(model, input_shape=(1, 3, 32, 32))

    stem = 32 * 32 * 3 * 3 * 3 * 16  # 442,368
    same = 3 * 3 * 16 * 16 * 32 * 32  # every other conv: 2,359,296 (channels x2 while area /4)
    down = 16 * 16 * 3 * 3 * 16 * 32  # first conv of stages 2 and 3: 1,179,648
    fc = 64 * 10
    assert stem + 6 * same + 2 * (down + 5 * same) + fc == 40_551_040
    assert report.total_macs == 40_551_040

    convs = 3 * 3 * (3 * 16 + 6 * 16 * 16 + (16 * 32 + 5 * 32 * 32) + (32 * 64 + 5 * 64 * 64))
    batch_norms = 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)  # weight + bias of 19 BatchNorm2d
    linear = 64 * 10 + 10
    assert convs + batch_norms + linear == 269_722
    assert report.total_params == 269_722 == sum(p.numel() for p in model.parameters())
    assert report.param_bytes == {"float32": 269_722 * 4}

    rows = {r.name: r for r in report.rows}
    assert rows["conv1"].macs == stem and rows["conv1"].output_shape == (1, 16, 32, 32)
    assert rows["layer2.0.conv1"].macs == down and rows["layer2.0.conv1"].output_shape == (1, 32, 16, 16)
    assert rows["layer3.2.conv2"].macs == same
    assert rows["layer2.0.shortcut"].type_name == "PadShortcut" and rows["layer2.0.shortcut"].macs == 0
    assert rows["fc"].macs == fc and rows["fc"].params == 650
    assert sum(r.macs for r in report.rows) == report.total_macs
    assert "(functional)" not in rows  # every MAC of ResNet-20 is in a layer
    assert report.macs_by_op == {"aten.convolution": 40_551_040 - fc, "aten.addmm": fc}


# ---------------------------------------------------------------- single layers


@pytest.mark.parametrize(
    ("layer", "shape", "expected"),
    [
        # grouped: H_out*W_out*kh*kw*C_in*C_out/groups with padding 1 keeping 10x10
        (nn.Conv2d(8, 16, 3, padding=1, groups=4), (1, 8, 10, 10), 10 * 10 * 3 * 3 * 8 * 16 // 4),
        # depthwise: groups = C_in = C_out
        (nn.Conv2d(6, 6, 3, padding=1, groups=6), (1, 6, 8, 8), 8 * 8 * 3 * 3 * 6 * 6 // 6),
        # dilated: H_out = 12 - dilation*(k-1) = 8
        (nn.Conv2d(4, 8, 3, dilation=2), (1, 4, 12, 12), 8 * 8 * 3 * 3 * 4 * 8),
        # strided: H_out = (9 + 2*1 - 3) // 2 + 1 = 5
        (nn.Conv2d(4, 8, 3, stride=2, padding=1), (1, 4, 9, 9), 5 * 5 * 3 * 3 * 4 * 8),
        # non-square kernel and stride: H_out = (9 - 3) // 2 + 1 = 4, W_out = 5
        (nn.Conv2d(3, 4, (3, 1), stride=(2, 1)), (1, 3, 9, 5), 4 * 5 * 3 * 1 * 3 * 4),
        # batch of 2 with bias (bias additions are not MACs)
        (nn.Conv2d(2, 3, 3, bias=True), (2, 2, 5, 5), 2 * 3 * 3 * 3 * 3 * 2 * 3),
        # Conv1d: N * L_out * k * C_in * C_out, L_out = 10 - 3 + 1 = 8
        (nn.Conv1d(3, 5, 3), (2, 3, 10), 2 * 8 * 3 * 3 * 5),
        # transposed: every input pixel scatters k*k*C_out products per input channel
        (nn.ConvTranspose2d(4, 8, 3, stride=2), (1, 4, 5, 5), 5 * 5 * 3 * 3 * 4 * 8),
        # Linear: rows * in * out, for a batch, a 3-D input and a single vector
        (nn.Linear(20, 30), (4, 20), 4 * 20 * 30),
        (nn.Linear(20, 30), (2, 7, 20), 2 * 7 * 20 * 30),
        (nn.Linear(20, 30), (20,), 20 * 30),
    ],
    ids=["grouped", "depthwise", "dilated", "strided", "nonsquare", "batch2", "conv1d", "transposed",
         "linear", "linear3d", "linear1d"],
)  # fmt: skip
def test_layer_macs(layer: nn.Module, shape: tuple[int, ...], expected: int):
    report = profile(layer, input_shape=shape)
    assert report.total_macs == expected
    assert [r.name for r in report.rows] == [""]  # the model is the single layer
    assert report.rows[0].params == sum(p.numel() for p in layer.parameters())


@settings(max_examples=25, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 4]),
    c_in_per_group=st.integers(1, 3),
    c_out_per_group=st.integers(1, 3),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    dilation=st.integers(1, 2),
    padding=st.integers(0, 2),
    size=st.integers(7, 10),
    batch=st.integers(1, 2),
)
def test_conv2d_macs_formula(groups, c_in_per_group, c_out_per_group, kernel, stride, dilation, padding, size, batch):
    c_in, c_out = groups * c_in_per_group, groups * c_out_per_group
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)
    h_out, w_out = ((size + 2 * padding - dilation * (k - 1) - 1) // s + 1 for k, s in zip(kernel, stride, strict=True))
    expected = batch * h_out * w_out * kernel[0] * kernel[1] * (c_in // groups) * c_out
    assert macs_of(conv, batch, c_in, size, size) == expected


def test_textbook_depthwise_separable_example():
    """A 3x3 conv from 3 to 128 channels on a 5x5 output: 5*5*3*3*3*128 = 86,400 multiplies; its
    depthwise-separable version costs 5*5*3*3*3 = 675 (depthwise) + 5*5*3*128 = 9,600 (pointwise)."""
    dense = nn.Conv2d(3, 128, 3)
    separable = nn.Sequential(nn.Conv2d(3, 3, 3, groups=3), nn.Conv2d(3, 128, 1))
    assert macs_of(dense, 1, 3, 7, 7) == 86_400
    report = profile(separable, input_shape=(1, 3, 7, 7))
    assert [(r.name, r.macs) for r in report.rows] == [("0", 675), ("1", 9_600)]
    assert report.total_macs == 10_275


# ---------------------------------------------------------------- attribution


class Mixer(nn.Module):
    """A parameter-free parent that calls torch.bmm and matmul itself, around a Linear child."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = torch.bmm(self.proj(x), y)  # (2, 5, 6) @ (2, 6, 7): 2*5*6*7 = 420
        return z @ torch.ones(7, 3)  # (2, 5, 7) @ (7, 3): 2*5*7*3 = 210


class LowRankish(nn.Module):
    """A custom layer with its own parameter and a child: its own matmul lands on its own row."""

    def __init__(self) -> None:
        super().__init__()
        self.core = nn.Parameter(torch.randn(4, 3))
        self.inner = nn.Linear(8, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) @ self.core  # inner: 2*8*4 = 64; own: 2*4*3 = 24


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mixer = Mixer()
        self.low = LowRankish()

    def forward(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mixer(x, y), self.low(v)


def test_functional_macs_go_to_the_functional_row():
    report = profile(Mixer(), (torch.randn(2, 5, 6), torch.randn(2, 6, 7)))
    rows = {r.name: r for r in report.rows}
    assert rows["proj"].macs == 2 * 5 * 6 * 6
    assert rows["(functional)"].macs == 420 + 210
    assert report.functional_macs == {"": 630}
    assert report.total_macs == 360 + 630 == sum(r.macs for r in report.rows)


def test_nested_functional_and_custom_layer_rows():
    report = profile(Outer(), (torch.randn(2, 5, 6), torch.randn(2, 6, 7), torch.randn(2, 8)))
    rows = {r.name: r for r in report.rows}
    assert list(rows) == ["mixer.proj", "low", "low.inner", "(functional)"]
    assert rows["low"].params == 12 and rows["low"].macs == 24 and rows["low"].type_name == "LowRankish"
    assert rows["low.inner"].macs == 64
    assert report.functional_macs == {"mixer": 630}
    assert report.total_macs == 360 + 630 + 64 + 24 == sum(r.macs for r in report.rows)


class Attention(nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, q, q)


def test_attention_macs():
    # Q K^T and P V: 2 * (batch * heads * L * S * head_dim) = 2 * 1*2*8*8*16
    q = torch.randn(1, 2, 8, 16)
    report = profile(Attention(), q)
    assert report.total_macs == 4_096 and report.rows[0].macs == 4_096
    with (
        FlopCounterMode(display=False) as reference,
        torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH),
    ):
        Attention()(q)
    assert reference.get_total_flops() // 2 == 4_096  # the math kernel (bmm) agrees


def test_multihead_attention_fast_path_macs():
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(2, 8, 16)
    # per sample: q, k, v, out projections 4 * 8*16*16 = 8,192; attention 2 * 8*8*16 = 2,048
    report = profile(mha, (x, x, x))
    assert report.total_macs == 2 * (8_192 + 2_048)
    assert "aten._native_multi_head_attention" in report.macs_by_op
    mha.train()  # the slow path, made of linear and (math kernel) bmm, agrees
    math_kernel = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)
    with torch.no_grad(), math_kernel, FlopCounterMode(display=False) as reference:
        mha(x, x, x, need_weights=False)
    assert reference.get_total_flops() // 2 == report.total_macs


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_lstm_and_matrix_vector_macs():
    lstm = nn.LSTM(16, 32, batch_first=True)
    x = torch.randn(2, 8, 16)
    expected = 2 * 8 * (4 * 32 * 16 + 4 * 32 * 32)  # every token meets W_ih and W_hh
    report = profile(lstm, x)
    assert report.total_macs == expected
    if torch.backends.mkldnn.is_available():
        assert report.macs_by_op == {"aten.mkldnn_rnn_layer": expected}  # the CPU kernel torch misses
    with torch.backends.mkldnn.flags(enabled=False):
        assert profile(lstm, x).total_macs == expected  # the native (addmm) path agrees

    class MatVec(nn.Module):
        def forward(self, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return (m @ v) @ v[:4]  # mv: 4*5; dot: 4

    report = profile(MatVec(), (torch.randn(4, 5), torch.randn(5)))
    assert report.macs_by_op == {"aten.mv": 20, "aten.dot": 4}


class Twice(nn.Module):
    """Calls ``fc`` twice; ``head`` shares ``fc``'s weight; ``unused`` is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)
        self.head.weight = self.fc.weight
        self.unused = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.fc(x)))


def test_module_called_twice_and_shared_parameters():
    report = profile(Twice(), input_shape=(3, 4))
    rows = {r.name: r for r in report.rows}
    assert rows["fc"].calls == 2 and rows["fc"].macs == 2 * 3 * 4 * 4 and "called 2 times" in rows["fc"].note
    assert rows["head"].params == 20 and "shared with 'fc'" in rows["head"].note
    assert rows["unused"].calls == 0 and rows["unused"].output_shape is None and rows["unused"].macs == 0
    assert report.total_params == 16 + 4 + 4 + 10  # the shared weight once
    assert sum(r.params for r in report.rows) == report.total_params + 16
    assert report.total_macs == 3 * 48 == sum(r.macs for r in report.rows)


def test_first_call_output_shape_and_shared_module():
    shared = nn.Linear(4, 6)
    model = nn.Sequential(shared, nn.ReLU(), nn.Linear(6, 4), shared)  # "3" is "0" again
    report = profile(model, input_shape=(2, 4))
    rows = {r.name: r for r in report.rows}
    assert list(rows) == ["0", "1", "2"]
    assert rows["0"].calls == 2 and rows["0"].output_shape == (2, 6)
    assert rows["0"].macs == 2 * (2 * 4 * 6)


def test_model_is_left_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Dropout(), nn.Linear(64, 3))
    model.train()
    model[3].eval()  # mixed flags must come back as they were
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    profile(model, input_shape=(2, 1, 6, 6))
    with pytest.raises(ValueError):
        profile(model, input_shape=(2, 1, 7, 7))  # a failure restores too
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(("dtype", "size"), [(torch.float16, 2), (torch.float64, 8)])
def test_bytes_per_dtype(dtype: torch.dtype, size: int):
    model = nn.Sequential(nn.Linear(10, 5), nn.BatchNorm1d(5)).to(dtype)
    report = profile(model, input_shape=(3, 10))  # the input is made in the model's dtype
    name = str(dtype).removeprefix("torch.")
    assert report.total_params == 55 + 10
    assert report.param_bytes == {name: 65 * size}
    assert report.buffer_bytes == {name: 10 * size, "int64": 8}  # running mean/var, num_batches_tracked
    assert report.model_size_bytes == 75 * size + 8
    assert report.input_shapes == [(3, 10)]


# ---------------------------------------------------------------- reports


def test_report_serializations():
    report = profile(resnet20_rgb(), input_shape=(1, 3, 32, 32))
    assert isinstance(report, ProfileReport) and all(isinstance(r, LayerProfile) for r in report.rows)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["totals"]["total_macs"] == 40_551_040 and data["totals"]["total_params"] == 269_722
    assert data["totals"]["model_size_bytes"] == report.model_size_bytes
    assert data["input_shapes"] == [[1, 3, 32, 32]]
    assert data["layers"][0] == {
        "name": "conv1", "type_name": "Conv2d", "output_shape": [1, 16, 32, 32], "params": 432,
        "macs": 442_368, "calls": 1, "note": "",
    }  # fmt: skip

    md = report.to_markdown()
    assert md.startswith("| Layer | Type | Output shape | Params | MACs |")
    assert "| `conv1` | Conv2d | (1, 16, 32, 32) | 432 | 442,368 |" in md
    assert "| **total** | | | **269,722** | **40,551,040** |" in md
    assert "MACs = multiply-accumulates" in md

    table = report.to_rich()
    assert isinstance(table, Table) and table.row_count == len(report.rows) + 1
    out = io.StringIO()
    report.print(Console(file=out, width=120))
    assert "conv1" in out.getvalue() and "40.55 M" in out.getvalue()


def test_markdown_names_the_model_row_and_repeated_calls():
    md = profile(Twice(), input_shape=(3, 4)).to_markdown()
    assert "| `fc` | Linear | (3, 4) ×2 |" in md and "not called" in md
    assert "`(model)`" in profile(nn.Linear(2, 3), input_shape=(1, 2)).to_markdown()


# ---------------------------------------------------------------- errors


def test_shape_error_names_the_layer():
    model = create_model("resnet20", in_channels=1)
    with pytest.raises(ValueError, match=r"'conv1' \(Conv2d\) failed on input \(1, 3, 28, 28\)") as info:
        profile(model, input_shape=(1, 3, 28, 28))
    message = str(info.value)
    assert message.startswith("input shape (1, 3, 28, 28) does not fit the model")
    assert "expected input[1, 3, 28, 28] to have 1 channels" in message
    assert isinstance(info.value, ForwardError) and info.value.layer_name == "conv1"
    assert isinstance(info.value.__cause__, RuntimeError)


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 2))  # head.1 expects width 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_linear_width_error_names_the_qualified_name():
    with pytest.raises(ValueError, match=r"layer 'head\.1' \(Linear\) failed on input \(3, 4\): mat1 and mat2"):
        profile(Head(), input_shape=(3, 8))
    with pytest.raises(ForwardError, match=r"'head\.1' \(Linear\)") as info:
        run_forward(Head(), torch.randn(3, 8))
    assert info.value.layer_input_shapes == [(3, 4)] and info.value.input_shapes == [(3, 8)]


def test_error_in_a_parents_own_code_names_the_parent():
    class Reshaper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).view(-1, 3)

    model = nn.Sequential(nn.Identity(), Reshaper())
    with pytest.raises(ForwardError, match=r"layer '1' \(Reshaper\) failed on input \(1, 4\)"):
        run_forward(model, torch.randn(1, 4))


def test_caught_inner_error_does_not_confuse_the_trace():
    class Fallback(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wrong = nn.Linear(3, 2)
            self.right = nn.Linear(4, 2)
            self.last = nn.Linear(2, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            try:
                y = self.wrong(x)
            except RuntimeError:
                y = self.right(x)
            return self.last(y)

    report = profile(Fallback(), input_shape=(1, 4))
    rows = {r.name: r for r in report.rows}
    assert rows["wrong"].calls == 0 and rows["right"].macs == 8 and rows["last"].macs == 14
    with pytest.raises(ForwardError, match=r"layer 'right' \(Linear\)"):
        profile(Fallback(), input_shape=(1, 5))


def test_non_shape_errors_pass_through():
    with pytest.raises(TypeError, match="positional argument"):
        run_forward(nn.Linear(2, 2), (torch.randn(1, 2), torch.randn(1, 2)))
    with pytest.raises(KeyError):  # raised outside the model: not translated
        with trace_forward(nn.Identity()):
            raise KeyError("x")


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({}, ValueError, "example_inputs .* or input_shape"),
        ({"example_inputs": torch.zeros(1, 2), "input_shape": (1, 2)}, ValueError, "not both"),
        ({"input_shape": (1, 0, 28)}, ValueError, "input_shape must hold positive sizes"),
        ({"input_shape": ()}, ValueError, "input_shape must hold at least one"),
        ({"input_shape": "1,2"}, TypeError, "input_shape must be a tuple of ints"),
        ({"input_shape": (1, 2.0)}, TypeError, "input_shape must be a tuple of ints"),
        ({"example_inputs": "x"}, TypeError, "example_inputs must be a tensor"),
        ({"example_inputs": (torch.zeros(1, 2), 3)}, TypeError, r"example_inputs\[1\] must be a tensor"),
        ({"example_inputs": ()}, ValueError, "example_inputs is empty"),
    ],
)
def test_argument_errors(kwargs: dict, error: type[Exception], pattern: str):
    with pytest.raises(error, match=pattern):
        profile(nn.Linear(2, 2), **kwargs)


def test_model_argument_checks():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        profile(lambda x: x, input_shape=(1, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uninitialized"):
        profile(nn.LazyLinear(3), input_shape=(1, 2))


# ---------------------------------------------------------------- latency (no timed assertions)


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_measure_latency():
    model = tiny().train()
    threads = torch.get_num_threads()
    report = measure_latency(model, input_shape=(1, 1, 8, 8), batch_sizes=(1, 4), repeats=3, warmup=1, threads=2)
    assert isinstance(report, LatencyReport)
    assert [r.batch_size for r in report.results] == [1, 4]
    for r in report.results:
        assert r.median_s > 0 and r.min_s > 0 and r.iqr_s >= 0 and r.repeats == 3
        assert r.throughput == pytest.approx(r.batch_size / r.median_s)
    assert report.median(4) == report.results[1].median_s and report.threads == 2
    assert torch.get_num_threads() == threads and model.training
    assert json.loads(json.dumps(report.to_dict()))["results"][0]["batch_size"] == 1
    assert report.to_markdown().startswith("| Batch | Median | IQR |")
    with pytest.raises(ValueError, match="batch size 64 was not measured"):
        report.median(64)


def test_compare_latency():
    a, b = tiny(), tiny()
    comparison = compare_latency(a, b, torch.randn(2, 1, 8, 8), batch_sizes=(1, 4), repeats=3, warmup=0)
    assert isinstance(comparison, LatencyComparison)
    for r in comparison.results:
        assert r.median_a_s > 0 and r.median_b_s > 0 and r.ratio > 0 and r.repeats == 3
    assert comparison.ratio(4) == comparison.results[1].ratio
    assert json.loads(json.dumps(comparison.to_dict()))["names"] == ["A", "B"]
    assert "B / A (median of ratios)" in comparison.to_markdown()


def test_batch_inputs_repeats_along_dim0():
    x = torch.arange(3.0).reshape(3, 1)
    (y,) = batch_inputs((x,), 4)
    assert y.flatten().tolist() == [0.0, 1.0, 2.0, 0.0]
    (z,) = batch_inputs((x,), 2)
    assert z.flatten().tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="no batch dimension"):
        batch_inputs((torch.tensor(1.0),), 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"batch_sizes": (0,)}, ValueError, r"batch_sizes\[0\] must be >= 1"),
        ({"batch_sizes": (1, 2.5)}, TypeError, r"batch_sizes\[1\] must be an int"),
        ({"batch_sizes": ()}, TypeError, "batch_sizes must be a non-empty sequence"),
        ({"batch_sizes": (2, 2)}, ValueError, "batch_sizes has duplicates"),
        ({"repeats": 0}, ValueError, "repeats must be >= 1"),
        ({"warmup": -1}, ValueError, "warmup must be >= 0"),
        ({"threads": 0}, ValueError, "threads must be >= 1"),
        ({"repeats": True}, TypeError, "repeats must be an int"),
    ],
)
def test_latency_argument_errors(kwargs: dict, error: type[Exception], pattern: str):
    with pytest.raises(error, match=pattern):
        measure_latency(tiny(), input_shape=(1, 1, 8, 8), **kwargs)
    with pytest.raises(error, match=pattern):
        compare_latency(tiny(), tiny(), input_shape=(1, 1, 8, 8), **kwargs)


def test_latency_shape_error_names_the_layer():
    with pytest.raises(ValueError, match=r"'0' \(Conv2d\)"):
        measure_latency(tiny(), input_shape=(1, 3, 8, 8), batch_sizes=(1,), repeats=1, warmup=0)


# ---------------------------------------------------------------- cross-attention (query length != key length)


class CrossAttention(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize(
    ("value_dim", "kernel"),
    [(8, "aten._scaled_dot_product_flash_attention_for_cpu"), (4, "aten.bmm")],  # Ev != E: the math kernel
)
def test_cross_attention_macs_use_both_lengths(value_dim: int, kernel: str):
    # batch 2, heads 3, L = 5 queries of dim E = 8, S = 11 keys, values of dim Ev
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 11, 8), torch.randn(2, 3, 11, value_dim)
    qk = 2 * 3 * 5 * 11 * 8  # Q K^T: L x S scores, each a dot product over E
    pv = 2 * 3 * 5 * 11 * value_dim  # P V: L x Ev outputs, each a sum over S
    report = profile(CrossAttention(), (q, k, v))
    assert report.total_macs == qk + pv == {8: 5_280, 4: 3_960}[value_dim]
    assert report.macs_by_op == {kernel: qk + pv}
    math_kernel = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)
    with math_kernel, FlopCounterMode(display=False) as reference:
        CrossAttention()(q, k, v)
    assert reference.get_total_flops() // 2 == qk + pv  # the math kernel (bmm) agrees


class CrossMultiheadAttention(nn.Module):
    def __init__(self, need_weights: bool, **kwargs) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True, **kwargs)
        self.need_weights = need_weights

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return self.mha(query, key, value, need_weights=self.need_weights)[0]


@pytest.mark.parametrize("need_weights", [True, False])  # bmm + softmax, or the CPU attention kernel
def test_multihead_cross_attention_macs(need_weights: bool):
    batch, lq, lk, e = 2, 5, 11, 16
    query, memory = torch.randn(batch, lq, e), torch.randn(batch, lk, e)
    projections = lq * e * e + 2 * lk * e * e + lq * e * e  # q from the queries; k, v from the memory; out
    attention = lq * lk * e + lq * lk * e  # Q K^T and P V, summed over the 2 heads of 8
    report = profile(CrossMultiheadAttention(need_weights), (query, memory, memory))
    assert report.total_macs == batch * (projections + attention) == 19_904
    rows = {r.name: r for r in report.rows}
    assert rows["mha"].macs == 19_904 and rows["mha"].calls == 1  # out_proj's weight is used functionally


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_cross_attention_with_other_key_and_value_widths(need_weights: bool):
    batch, lq, lk, e, kdim, vdim = 2, 5, 11, 16, 6, 10
    model = CrossMultiheadAttention(need_weights, kdim=kdim, vdim=vdim)
    query, keys, values = torch.randn(batch, lq, e), torch.randn(batch, lk, kdim), torch.randn(batch, lk, vdim)
    projections = lq * e * e + lk * kdim * e + lk * vdim * e + lq * e * e
    attention = 2 * lq * lk * e
    report = profile(model, (query, keys, values))
    assert report.total_macs == batch * (projections + attention) == 14_272
