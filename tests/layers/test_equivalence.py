"""Every factorized layer at full rank computes its dense layer, over the whole conv configuration space."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from factorch.layers import CPConv, LowRankLinear, NotFactorizable, SpatialSVDConv2d, SVDConv, Tucker2Conv
from factorch.layers.cp import exact_cp_factors

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@st.composite
def conv_configs(draw):
    dim = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 4))
    cout = groups * draw(st.integers(1, 4))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dim))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dim))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    if kind == "same" and any(s > 1 for s in stride):
        kind = "tuple"
    if kind == "int":
        padding = draw(st.integers(0, 2))
    elif kind == "tuple":
        padding = tuple(draw(st.integers(0, 2)) for _ in range(dim))
    else:
        padding = kind
    size = tuple(draw(st.integers(6, 9)) for _ in range(dim))
    return dict(
        dim=dim,
        cin=cin,
        cout=cout,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        groups=groups,
        padding=padding,
        mode=mode,
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        channels_last=dim == 2 and draw(st.booleans()),
        size=size,
        seed=draw(st.integers(0, 2**16)),
    )


def make_conv(c):
    torch.manual_seed(c["seed"])
    cls = nn.Conv1d if c["dim"] == 1 else nn.Conv2d
    conv = cls(
        c["cin"],
        c["cout"],
        c["kernel"],
        c["stride"],
        c["padding"],
        c["dilation"],
        c["groups"],
        c["bias"],
        c["mode"],
        dtype=c["dtype"],
    )
    x = torch.randn(2, c["cin"], *c["size"], dtype=c["dtype"])
    if c["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    return conv, x


def full_rank_layers(conv, c):
    """Every method's full-rank factorization of ``conv`` (None where the method does not apply)."""
    layers = {"svd": SVDConv.from_dense(conv, 1.0)}
    if c["dim"] == 2:
        layers["spatial-svd"] = SpatialSVDConv2d.from_dense(conv, 1.0)
    try:
        layers["tucker2"] = Tucker2Conv.from_dense(conv, 1.0)
    except NotFactorizable:
        assert c["cin"] == c["cout"] == c["groups"]  # depthwise
    return layers


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_full_rank_reproduces_dense_conv(c):
    conv, x = make_conv(c)
    with torch.no_grad():
        try:
            ref = conv(x)
        except RuntimeError:  # e.g. reflect padding wider than the input: not a valid configuration
            return
        tol = TOL[c["dtype"]]
        for method, layer in full_rank_layers(conv, c).items():
            assert rel_err(layer(x), ref) < tol, (method, c)
            assert rel_err(layer.to_dense()(x), ref) < tol, (method, "to_dense", c)
        # CP: (a) the factorized layer equals the dense conv of its reconstructed kernel
        for form in ("4", "3"):
            cp_layer = CPConv.from_dense(conv, 1, form=form, n_iter_max=5)
            assert rel_err(cp_layer(x), cp_layer.to_dense()(x)) < tol, ("cp", form, c)
            # (b) rank C_in/g * prod(k) admits an exact construction that the layer reproduces
            spec = cp_layer.spec
            exact = CPConv.build(spec, (spec.in_per_group * spec.kernel_numel,), form=form)
            exact.set_cp_factors(exact_cp_factors(conv.weight, c["groups"], form))
            if conv.bias is not None:
                exact.last.bias.copy_(conv.bias)
            assert rel_err(exact(x), ref) < tol, ("cp exact", form, c)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.booleans(), st.sampled_from([torch.float64, torch.float32]))
def test_low_rank_linear_full_rank(n_in, n_out, bias, dtype):
    lin = nn.Linear(n_in, n_out, bias=bias, dtype=dtype)
    x = torch.randn(3, 5, n_in, dtype=dtype)
    layer = LowRankLinear.from_dense(lin, 1.0)
    with torch.no_grad():
        assert rel_err(layer(x), lin(x)) < TOL[dtype]
        assert rel_err(layer.to_dense()(x), lin(x)) < TOL[dtype]


@pytest.mark.parametrize(
    "cls,kwargs",
    [(SVDConv, {}), (SpatialSVDConv2d, {}), (Tucker2Conv, {}), (CPConv, {"form": "4"}), (CPConv, {"form": "3"})],
)
def test_error_does_not_increase_with_rank(cls, kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    ref = conv(x).detach()
    top = cls.max_ranks(cls.from_dense(conv, 1, **kwargs).spec, kwargs)
    errors = []
    for f in (0.1, 0.25, 0.5, 0.75, 1.0):
        ranks = tuple(max(1, round(f * m)) for m in top)
        with torch.no_grad():
            errors.append(rel_err(cls.from_dense(conv, ranks, **kwargs)(x), ref))
    for a, b in zip(errors, errors[1:]):
        assert b <= a * (1 + 1e-6) + 1e-12, errors
    if cls is not CPConv:
        assert errors[-1] < 1e-10


def test_depthwise_is_refused_by_tucker2():
    conv = nn.Conv2d(4, 4, 3, groups=4)
    with pytest.raises(NotFactorizable, match="depthwise"):
        Tucker2Conv.from_dense(conv, 1)


def test_spatial_svd_refuses_conv1d():
    with pytest.raises(NotFactorizable, match="2-D"):
        SpatialSVDConv2d.from_dense(nn.Conv1d(2, 2, 3), 1)


@pytest.mark.parametrize("rank,match", [(0, ">= 1"), (-2, ">= 1"), (99, "above the maximum"), ("bogus", "cannot read")])
def test_bad_ranks(rank, match):
    with pytest.raises(ValueError, match=match):
        SVDConv.from_dense(nn.Conv2d(4, 4, 3), rank)


def test_structure_only_build_matches_after_loading_state_dict():
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2)
    layer = Tucker2Conv.from_dense(conv, (3, 2))
    empty = Tucker2Conv.from_dense(conv, (3, 2), decompose_weights=False)
    empty.load_state_dict(layer.state_dict())
    x = torch.randn(1, 8, 9, 9)
    assert torch.equal(empty(x), layer(x))


def test_dense_layer_is_not_modified():
    conv = nn.Conv2d(4, 6, 3, bias=True)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    for cls in (SVDConv, SpatialSVDConv2d, Tucker2Conv):
        cls.from_dense(conv, 0.5)
    for k, v in conv.state_dict().items():
        assert torch.equal(v, before[k])
