"""QuantizedLayer and QuantConfig: against torch's own ops and hand-computed scales; codes, packing, costs."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import factorch
from factorch.layers.quantized import (
    QuantizedLayer,
    int_range,
    observe_range,
    pack_codes,
    unpack_codes,
)


def reference_scales(w: torch.Tensor, bits: int, symmetric: bool, per_channel: bool):
    """Min/max scales by the whitepaper's formulas, written out."""
    rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    lo, hi = rows.min(dim=1).values.clamp(max=0), rows.max(dim=1).values.clamp(min=0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return torch.maximum(hi, -lo) / qmax, torch.zeros(rows.shape[0], dtype=torch.int32), -qmax, qmax
    scale = (hi - lo) / (2**bits - 1)
    return scale, (-torch.round(lo / scale)).to(torch.int32), 0, 2**bits - 1


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["conv1d", "conv2d", "linear"]),
    groups=st.integers(1, 2),
    cin=st.integers(1, 3),
    cout=st.integers(1, 3),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    mode=st.sampled_from(["zeros", "reflect", "circular"]),
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    per_channel=st.booleans(),
    bias=st.booleans(),
)
def test_quantized_layer_is_the_layer_with_fake_quantized_weights(
    kind, groups, cin, cout, k, stride, mode, bits, symmetric, per_channel, bias
):
    torch.manual_seed(2)
    cin, cout = cin * groups, cout * groups
    if kind == "linear":
        dense, x = nn.Linear(cin, cout, bias=bias), torch.randn(3, cin)
    else:
        conv = nn.Conv1d if kind == "conv1d" else nn.Conv2d
        dense = conv(cin, cout, k, stride, k // 2, groups=groups, bias=bias, padding_mode=mode)
        x = torch.randn(2, cin, 7) if kind == "conv1d" else torch.randn(2, cin, 7, 6)
    layer = QuantizedLayer.from_dense(dense, (bits, 32), symmetric=symmetric, per_channel=per_channel)
    scale, zero, qmin, qmax = reference_scales(dense.weight.detach(), bits, symmetric, per_channel)
    torch.testing.assert_close(layer.weight_scale, scale.float(), rtol=1e-6, atol=0)
    assert torch.equal(layer.weight_zero, zero)
    w = dense.weight.detach()
    if per_channel:
        wq = torch.fake_quantize_per_channel_affine(w, layer.weight_scale, layer.weight_zero, 0, qmin, qmax)
    else:
        wq = torch.fake_quantize_per_tensor_affine(w, float(layer.weight_scale), int(layer.weight_zero), qmin, qmax)
    if kind == "linear":
        expected = F.linear(x, wq, dense.bias)
    else:
        fn = F.conv1d if kind == "conv1d" else F.conv2d
        pad = k // 2
        if mode == "zeros":
            expected = fn(x, wq, dense.bias, stride, pad, 1, groups)
        else:
            expected = fn(F.pad(x, (pad,) * (2 * (x.dim() - 2)), mode=mode), wq, dense.bias, stride, 0, 1, groups)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.to_dense()(x), expected, rtol=1e-5, atol=1e-6)
    # the codes are what the fake quantization dequantizes, exactly
    codes = layer.weight_codes()
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    view = [-1] + [1] * (w.dim() - 1)
    s = layer.weight_scale.view(view) if per_channel else layer.weight_scale
    z = layer.weight_zero.view(view) if per_channel else layer.weight_zero
    assert torch.equal((codes - z).float() * s, wq)
    # an error no larger than half a step per weight (inside the range)
    assert float((wq - w).abs().max()) <= float(layer.weight_scale.max()) / 2 * (1 + 1e-5)


def test_32_bits_is_the_dense_layer_and_16_is_half():
    torch.manual_seed(0)
    dense, x = nn.Conv2d(3, 4, 3, padding=1), torch.randn(2, 3, 8, 8)
    exact = QuantizedLayer.from_dense(dense, (32, 32))
    torch.testing.assert_close(exact(x), dense(x), rtol=0, atol=0)
    half = QuantizedLayer.from_dense(dense, (16, 16))
    expected = F.conv2d(x.half().float(), dense.weight.half().float(), dense.bias, padding=1)
    torch.testing.assert_close(half(x), expected, rtol=0, atol=0)


def test_rounding_is_half_to_even_and_ranges_are_pinned():
    """Known answers: a 2-bit symmetric grid is {-1, 0, 1} x max|w|; 0.5 rounds to 0 (half to even)."""
    lin = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-1.0, 0.5, 0.26]]))
    q = QuantizedLayer.from_dense(lin, (2, 32))
    assert int_range(2, True) == (-1, 1) and int_range(4, False) == (0, 15) and int_range(8, True) == (-127, 127)
    assert float(q.weight_scale) == 1.0 and q.weight_codes().tolist() == [[-1, 0, 0]]
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-1.0, 1.5, 2.0]]))  # affine 2 bits: step 1, zero point 1
    a = QuantizedLayer.from_dense(lin, (2, 32), symmetric=False)
    assert float(a.weight_scale) == 1.0 and int(a.weight_zero) == 1
    assert a.weight_codes().tolist() == [[0, 3, 3]]  # 1.5 -> 2 (+1) -> 3 (half to even), 2.0 -> 3


def test_activation_ranges_come_from_the_calibration_inputs():
    """Min/max of each quantized layer's inputs (seen with the earlier layers' activations unquantized)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    calib = torch.randn(300, 4, generator=torch.Generator().manual_seed(5)) * 2
    q, report = factorch.compress(
        model, factorch.QuantConfig(weight_bits=8, act_bits=8), example_inputs=torch.zeros(1, 4), calib_data=calib
    )
    assert report.totals["activation_calibration"] == {"n_samples": 300, "layers": 2}
    first, second = q[0], q[2]
    lo, hi = float(calib.min()), float(calib.max())
    assert float(first.act_scale) == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert int(first.act_zero) == round(-lo / float(first.act_scale))
    hidden = torch.relu(F.linear(calib, first.quantized_weight(), first.layer.bias))
    assert float(second.act_scale) == pytest.approx(float(hidden.max()) / 255, rel=1e-5)  # lo = 0 after the ReLU
    assert int(second.act_zero) == 0
    xq = torch.fake_quantize_per_tensor_affine(calib[:5], first.act_scale, first.act_zero, 0, 255)
    torch.testing.assert_close(first(calib[:5]), F.linear(xq, first.quantized_weight(), first.layer.bias),
                               rtol=0, atol=0)  # fmt: skip


def test_percentile_clips_an_outlier_and_mse_never_does_worse_than_minmax():
    rows = torch.cat([torch.linspace(-1, 1, 1001), torch.tensor([50.0])]).reshape(1, -1)
    lo, hi = observe_range(rows, 4, True, "minmax", 99.9)
    assert float(hi) == 50.0
    _, hi_p = observe_range(rows, 4, True, "percentile", 99.0)
    assert float(hi_p) < 1.01
    from factorch.layers.quantized import _qparams, fake_quant

    def err(lo, hi):
        s, z = _qparams(lo, hi, 4, True)
        return float((fake_quant(rows, s, z, 4, True, 0) - rows).pow(2).sum())

    lo_m, hi_m = observe_range(rows, 4, True, "mse", 99.9)
    assert err(lo_m, hi_m) <= err(lo, hi)


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(2, 8), n=st.integers(1, 200), seed=st.integers(0, 5))
def test_codes_pack_at_their_bit_width_and_unpack_exactly(bits, n, seed):
    lo, hi = int_range(bits, seed % 2 == 0)
    codes = torch.randint(lo, hi + 1, (n,), generator=torch.Generator().manual_seed(seed))
    packed = pack_codes(codes, bits, lo)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, lo, n), codes)


def test_cost_counts_codes_scales_and_float_biases():
    spec = factorch.layers.LinearSpec.from_module(nn.Linear(100, 10))
    cost = QuantizedLayer.option_cost(spec, (8, 8))
    # 1000 weights x 8 + 10 biases x 32 + 10 scales x 32 + the activation's scale (32) and zero point (8)
    assert cost.size_bits == 1000 * 8 + 10 * 32 + 10 * 32 + 32 + 8
    affine = QuantizedLayer.option_cost(spec, (4, 32), symmetric=False, per_channel=False)
    assert affine.size_bits == 1000 * 4 + 10 * 32 + 32 + 4
    assert cost.params == cost.nonzero_params == 1010 and cost.macs == 1000


def test_save_packs_the_codes_and_loads_bit_exactly(tmp_path):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))

    model = net()
    x = torch.randn(8, 3, 8, 8)
    for bits in (4, 8, 16):
        q, report = factorch.compress(model, factorch.QuantConfig(weight_bits=bits, act_bits=8), example_inputs=x[:1],
                                      calib_data=x)  # fmt: skip
        factorch.save(q, tmp_path / f"q{bits}")
        back = factorch.load(tmp_path / f"q{bits}", base_model=net())
        torch.testing.assert_close(back(x), q(x), rtol=0, atol=0)
        stored = sum(f.stat().st_size for f in (tmp_path / f"q{bits}").iterdir())
        assert stored < sum(p.numel() for p in model.parameters()) * 4 * (bits / 32) + 8000
        assert report.totals["size_ratio"] < bits / 32 + 0.05


def test_bad_input_names_the_argument_or_layer():
    for bad in (dict(weight_bits=1), dict(weight_bits=9), dict(act_bits=12), dict(observer="kl"), dict(percentile=40)):
        with pytest.raises(ValueError, match="QuantConfig"):
            factorch.QuantConfig(**bad)
    with pytest.raises(ValueError, match="quantizes nothing"):
        factorch.QuantConfig(weight_bits=32, act_bits=32)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="needs calib_data"):
        factorch.compress(model, factorch.QuantConfig(weight_bits=8, act_bits=8), example_inputs=x)
    q, _ = factorch.compress(model, factorch.QuantConfig(weight_bits=8, act_bits=32), example_inputs=x)
    with pytest.raises(ValueError, match="layer '0' is already quantized"):
        factorch.compress(q, factorch.QuantConfig(weight_bits=4, act_bits=32), example_inputs=x)
    assert factorch.QuantConfig(weight_bits=(4, 8)).act_bits == 8


def test_gradients_pass_the_rounding_straight_through():
    torch.manual_seed(0)
    layer = QuantizedLayer.from_dense(nn.Linear(6, 3), (4, 32))
    layer(torch.randn(5, 6)).sum().backward()
    assert layer.layer.weight.grad is not None and float(layer.layer.weight.grad.abs().sum()) > 0


def test_report_totals_give_bits_per_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64, bias=False), nn.ReLU(), nn.Linear(64, 8, bias=False))
    _, dense = factorch.compress(model, factorch.Plan({}), example_inputs=torch.zeros(1, 64))
    assert dense.to_dict()["totals"]["bits_per_weight"] == 32.0
    _, report = factorch.compress(
        model, factorch.QuantConfig(weight_bits=4, act_bits=32), example_inputs=torch.zeros(1, 64)
    )
    t = report.to_dict()["totals"]
    # 4 bits per weight, plus one 32-bit scale per output channel
    assert t["bits_per_weight"] == pytest.approx(
        (64 * 64 * 4 + 64 * 32 + 8 * 64 * 4 + 8 * 32) / (64 * 64 + 8 * 64), abs=0.01
    )
    assert t["bits_per_weight_before"] == 32.0 and t["size_bytes"] < t["size_bytes_before"] / 7


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 8), symmetric=st.booleans(), per_channel=st.booleans(), seed=st.integers(0, 100))
def test_lsq_forward_is_torchs_fake_quantization_bit_for_bit(bits, symmetric, per_channel, seed):
    from factorch.layers.quantized import _qparams, lsq_quantize

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 7, 3, generator=gen) * 3
    rows = x.reshape(5, -1) if per_channel else x.reshape(1, -1)
    scale, zero = _qparams(rows.amin(1) * 0.7, rows.amax(1) * 0.7, bits, symmetric)  # some values clamp
    qmin, qmax = int_range(bits, symmetric)
    if per_channel:
        ref = torch.fake_quantize_per_channel_affine(x, scale, zero, 0, qmin, qmax)
        out = lsq_quantize(x, scale, zero, qmin, qmax, 0, 1.0)
    else:
        ref = torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero.reshape(()), qmin, qmax)
        out = lsq_quantize(x, scale, zero, qmin, qmax, None, 1.0)
    assert torch.equal(out, ref)


def test_lsq_gradients_are_the_papers():
    from factorch.layers.quantized import lsq_quantize

    x = torch.tensor([0.3, -0.8, 5.0], requires_grad=True)
    s = torch.tensor([1.0], requires_grad=True)
    out = lsq_quantize(x, s, torch.zeros(1, dtype=torch.int32), -1, 1, None, 0.5)
    assert out.tolist() == [0.0, -1.0, 1.0]
    out.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]  # straight through inside the range, 0 where clamped
    # d/ds: round(v) - v inside (0 - 0.3, -1 + 0.8), the clamped code outside (1), times the gradient scale
    assert float(s.grad) == pytest.approx(0.5 * ((0 - 0.3) + (-1 + 0.8) + 1.0))


def test_a_learned_step_pushed_below_zero_acts_by_its_magnitude():
    from factorch.layers.quantized import lsq_quantize

    x = torch.tensor([0.3, -0.8, 5.0, 2.2])
    zero = torch.tensor([3], dtype=torch.int32)  # an affine grid: a sign flip would move every value
    positive = lsq_quantize(x, torch.tensor([0.5], requires_grad=True), zero, 0, 15, None, 1.0)
    negative = lsq_quantize(x, torch.tensor([-0.5], requires_grad=True), zero, 0, 15, None, 1.0)
    torch.testing.assert_close(negative, positive, rtol=0, atol=0)
    dead = lsq_quantize(x, torch.tensor([0.0], requires_grad=True), zero, 0, 15, None, 1.0)
    assert torch.isfinite(dead).all()


def test_quantization_aware_training_learns_the_step_sizes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    x = torch.randn(64, 1, 8, 8)
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 4, (64,)))
    q, _ = factorch.compress(model, factorch.QuantConfig(weight_bits=4, act_bits=4), example_inputs=x[:1],
                             calib_data=x)  # fmt: skip
    assert isinstance(q[0].weight_scale, nn.Parameter) and q[0].options["learn_scale"]
    before = q[0].weight_scale.detach().clone()
    trained = factorch.finetune(q, data, teacher=model, epochs=2, batch_size=16, show_progress=False, inplace=False)
    assert not torch.equal(trained[0].weight_scale.detach(), before)
    codes = trained[0].weight_codes()
    assert int(codes.min()) >= -7 and int(codes.max()) <= 7
    factorch.save(trained, tmp_path / "qat")

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))

    back = factorch.load(tmp_path / "qat", base_model=net())
    torch.testing.assert_close(back.eval()(x), trained.eval()(x), rtol=0, atol=0)
    assert not factorch.QuantConfig(weight_bits=8, act_bits=8).options()["learn_scale"]


def test_autoconfig_chooses_bit_widths_for_a_size_budget():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 2 * 2, 10))  # fmt: skip
    calib = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = factorch.AutoConfig("size=0.3", methods=["quant", "kmeans"], measure=False, refine=0, polish=0,
                              progress=False, cache=False)  # fmt: skip
    out, report = factorch.compress(model, cfg, example_inputs=torch.zeros(1, 1, 8, 8), calib_data=calib)
    assert report.totals["size_ratio"] <= 0.3
    chosen = {r.name: (r.method, r.ranks) for r in report.layers if r.skipped is None}
    assert chosen and all(m in ("quant", "kmeans") for m, _ in chosen.values())
    assert all(ranks[0] in (2, 3, 4, 5, 6, 8) for _, ranks in chosen.values())
    assert report.totals["macs_ratio"] == 1.0  # bit widths change bytes, not MACs
    with pytest.raises(ValueError):  # under a MACs budget no bit width is a candidate
        factorch.compress(model, dataclasses.replace(cfg, target="macs=0.5"), example_inputs=torch.zeros(1, 1, 8, 8),
                          calib_data=calib)  # fmt: skip
