"""factorch.nn blocks equal references written with plain torch functions, and their counted MACs equal hand
formulas (per sample, batch 1)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import factorch
from factorch.nn import TCL, TRL, AsymmetricConv, DepthwiseSeparableConv, Fire, InvertedResidual, ResNeXtBlock

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bn(x, m):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def cba(x, seq, act=F.relu):
    """conv -> batch norm -> activation of a ``conv_norm_act`` Sequential, with functional ops."""
    conv = seq[0]
    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if len(seq) > 1 and isinstance(seq[1], torch.nn.BatchNorm2d):
        y = bn(y, seq[1])
    return act(y) if act is not None else y


def randomise(module, seed=0):
    """Random weights and BatchNorm statistics, so that a swapped layer cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=g) + 0.5
                    if name.endswith("running_var")
                    else torch.randn(t.shape, generator=g) * 0.3
                )
    return module.eval()


def macs(module, x):
    return factorch.profile(module, x[:1]).total_macs


@SETTINGS
@given(cin=st.integers(1, 12), squeeze=st.integers(1, 8), e1=st.integers(1, 8), e3=st.integers(1, 8),
       hw=st.integers(1, 9), norm=st.booleans())  # fmt: skip
def test_fire(cin, squeeze, e1, e3, hw, norm):
    m = randomise(Fire(cin, squeeze, e1, e3, norm=norm))
    x = torch.randn(2, cin, hw, hw)
    s = cba(x, m.squeeze)
    ref = torch.cat([cba(s, m.expand1x1), cba(s, m.expand3x3)], 1)
    torch.testing.assert_close(m(x), ref)
    assert macs(m, x) == hw * hw * (cin * squeeze + squeeze * e1 + 9 * squeeze * e3)


@SETTINGS
@given(cin=st.integers(1, 10), cout=st.integers(1, 10), k=st.sampled_from([1, 3, 5]), stride=st.integers(1, 3),
       mult=st.integers(1, 3), hw=st.integers(5, 11), between=st.booleans())  # fmt: skip
def test_depthwise_separable(cin, cout, k, stride, mult, hw, between):
    m = randomise(DepthwiseSeparableConv(cin, cout, k, stride, depth_multiplier=mult, activation_between=between))
    x = torch.randn(2, cin, hw, hw)
    ref = cba(cba(x, m.depthwise, F.relu if between else None), m.pointwise)
    torch.testing.assert_close(m(x), ref)
    ho = (hw + 2 * (k // 2) - k) // stride + 1
    assert macs(m, x) == ho * ho * (cin * mult * k * k + cin * mult * cout)


@SETTINGS
@given(
    cin=st.integers(1, 8), cout=st.integers(1, 8), stride=st.integers(1, 2), t=st.integers(1, 6), hw=st.integers(3, 9)
)
def test_inverted_residual(cin, cout, stride, t, hw):
    m = randomise(InvertedResidual(cin, cout, stride, t))
    x = torch.randn(2, cin, hw, hw)
    y, hidden = x, cin * t
    parts = list(m.conv)
    if t != 1:
        y = cba(y, parts.pop(0), F.relu6)
    y = cba(y, parts.pop(0), F.relu6)
    y = cba(y, parts.pop(0), None)
    ref = x + y if stride == 1 and cin == cout else y
    torch.testing.assert_close(m(x), ref)
    ho = (hw - 1) // stride + 1
    expand = hw * hw * cin * hidden if t != 1 else 0
    assert macs(m, x) == expand + ho * ho * (9 * hidden + hidden * cout)


@SETTINGS
@given(cin=st.integers(1, 12), cout=st.integers(1, 12), stride=st.integers(1, 2), card=st.integers(1, 4),
       width=st.integers(1, 4), hw=st.integers(3, 8))  # fmt: skip
def test_resnext_block(cin, cout, stride, card, width, hw):
    m = randomise(ResNeXtBlock(cin, cout, stride, cardinality=card, bottleneck_width=width))
    x = torch.randn(2, cin, hw, hw)
    y = cba(cba(cba(x, m.reduce), m.grouped), m.expand, None)
    short = x if stride == 1 and cin == cout else cba(x, m.shortcut, None)
    torch.testing.assert_close(m(x), F.relu(y + short))
    d, ho = card * width, (hw - 1) // stride + 1
    shortcut = 0 if stride == 1 and cin == cout else ho * ho * cin * cout
    assert macs(m, x) == hw * hw * cin * d + ho * ho * (9 * d * d // card + d * cout) + shortcut


@SETTINGS
@given(cin=st.integers(1, 8), cout=st.integers(1, 8), k=st.sampled_from([3, 5, 7]), sh=st.integers(1, 3),
       sw=st.integers(1, 3), mid=st.integers(1, 8), h=st.integers(7, 12), w=st.integers(7, 12))  # fmt: skip
def test_asymmetric_conv_is_an_n_by_1_then_1_by_n_conv(cin, cout, k, sh, sw, mid, h, w):
    m = randomise(AsymmetricConv(cin, cout, k, (sh, sw), mid_channels=mid))
    x = torch.randn(2, cin, h, w)
    torch.testing.assert_close(m(x), cba(cba(x, m.vertical), m.horizontal))
    p = k // 2
    ho, wo = (h + 2 * p - k) // sh + 1, (w + 2 * p - k) // sw + 1
    assert macs(m, x) == ho * w * cin * mid * k + ho * wo * mid * cout * k
    assert m.vertical[0].kernel_size == (k, 1) and m.horizontal[0].kernel_size == (1, k)


def test_asymmetric_conv_without_norm_and_activation_is_a_separable_kernel():
    """With no BatchNorm, no activation and no inner bias, the pair computes one k x k conv of rank-``mid``
    kernel slices."""
    torch.manual_seed(0)
    m = AsymmetricConv(3, 4, 3, padding=1, mid_channels=2, norm=False, activation=None).eval()
    v, h = m.vertical[0], m.horizontal[0]
    with torch.no_grad():
        v.bias.zero_()  # a bias between the two convs would meet the second conv's zero padding at the borders
    kernel = torch.einsum("mcia,omaj->ocij", v.weight, h.weight)  # (out, in, 3, 3)
    bias = h.bias
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(m(x), F.conv2d(x, kernel, bias, padding=1), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(c=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6), a=st.integers(1, 6), b=st.integers(1, 6),
       d=st.integers(1, 6), bias=st.booleans())  # fmt: skip
def test_tcl(c, h, w, a, b, d, bias):
    m = TCL((c, h, w), (a, b, d), bias=bias)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = torch.randn(3, c, h, w, dtype=torch.float64)
    m = m.double()
    uc, uh, uw = m.factors
    ref = torch.einsum("nchw,ac,bh,dw->nabd", x, uc, uh, uw) + (m.bias if bias else 0)
    torch.testing.assert_close(m(x), ref)
    assert macs(m, x) == a * c * h * w + a * b * h * w + a * b * d * w


@SETTINGS
@given(c=st.integers(1, 6), h=st.integers(1, 5), w=st.integers(1, 5), out=st.integers(1, 7), data=st.data())
def test_trl(c, h, w, out, data):
    rank = tuple(data.draw(st.integers(1, s)) for s in (c, h, w, out))
    m = TRL((c, h, w), out, rank).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = torch.randn(3, c, h, w, dtype=torch.float64)
    ref = torch.einsum("nchw,chwo->no", x, m.weight()) + m.bias
    torch.testing.assert_close(m(x), ref)
    rc, rh, rw, ro = rank
    assert macs(m, x) == rc * c * h * w + rc * rh * h * w + rc * rh * rw * w + rc * rh * rw * ro + ro * out


def test_trl_from_linear_at_full_rank_is_the_linear_head():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4 * 3 * 3, 5).double()
    trl = TRL.from_linear(lin, (4, 3, 3), rank=1.0)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(trl(x), lin(x.flatten(1)), rtol=1e-10, atol=1e-10)
    low = TRL.from_linear(lin, (4, 3, 3), rank=(2, 2, 2, 3))
    assert (low(x) - lin(x.flatten(1))).norm() > 1e-3  # a low rank is an approximation


def test_trl_from_a_pooled_head_is_exact_at_spatial_rank_one():
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 5).double()
    x = torch.randn(6, 12, 4, 4, dtype=torch.float64)
    trl = TRL.from_pooled_linear(lin, (12, 4, 4), rank=(5, 1, 1, 5))  # the pooled weight's multilinear rank
    torch.testing.assert_close(trl(x), lin(x.mean((2, 3))), rtol=1e-10, atol=1e-10)
    low = TRL.from_pooled_linear(lin, (12, 4, 4), rank=(4, 1, 1, 5))
    assert (low(x) - lin(x.mean((2, 3)))).norm() > 1e-3
    with pytest.raises(ValueError, match="takes 12 inputs"):
        TRL.from_pooled_linear(lin, (8, 4, 4))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Fire(0, 1, 1, 1), "Fire: in_channels"),
        (lambda: ResNeXtBlock(8, 8, cardinality=0), "cardinality"),
        (lambda: TRL((2, 2), 3), "input_shape"),
        (lambda: TRL((2, 2, 2), 3, rank=(3, 1, 1, 1)), "rank"),
        (lambda: TRL((2, 2, 2), 3, rank=1.5), "fraction"),
    ],
)
def test_bad_arguments_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_wrong_input_shape_is_named():
    with pytest.raises(ValueError, match=r"TRL expects inputs \(N, 2, 3, 3\)"):
        TRL((2, 3, 3), 4)(torch.randn(1, 2, 4, 4))
    assert math.isfinite(float(TCL((2, 3, 3), (1, 1, 1))(torch.randn(1, 2, 3, 3)).sum()))
