"""Recompressing a factorized layer as a unit (multi-stage compression): exact at its current ranks, smaller
below them, and as good as decomposing its dense kernel again."""

import pytest
import torch
from torch import nn

from factorch.decompose import truncated_svd_of_product, tucker2, tucker2_of_tucker2, tucker2_reconstruct
from factorch.layers import CPConv, FactorizedLayer, LowRankLinear, SpatialSVDConv2d, SVDConv, TTLinear, Tucker2Conv
from factorch.layers.base import count_params

F64 = torch.float64


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def tuned(layer: FactorizedLayer, seed: int = 0) -> FactorizedLayer:
    """Perturb every weight, as fine-tuning does: the factors are no longer orthonormal or balanced."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def conv(groups=1, bias=True):
    torch.manual_seed(0)
    return nn.Conv2d(8, 12, 3, padding=1, stride=(1, 2), groups=groups, bias=bias, dtype=F64)


# (class, dense layer, current ranks, smaller ranks, options)
CASES = {
    "tucker2": (Tucker2Conv, lambda: conv(), (6, 5), (3, 2), {}),
    "tucker2-groups": (Tucker2Conv, lambda: conv(groups=2, bias=False), (4, 3), (2, 2), {}),
    "svd-conv": (SVDConv, lambda: conv(groups=2), (5,), (2,), {}),
    "svd-linear": (LowRankLinear, lambda: nn.Linear(10, 7, dtype=F64), (5,), (2,), {}),
    "spatial-svd": (SpatialSVDConv2d, lambda: conv(groups=2), (5,), (3,), {}),
    "cp": (CPConv, lambda: conv(), (6,), (3,), {"form": "3", "n_iter_max": 20}),
    "tt": (TTLinear, lambda: nn.Linear(12, 8, dtype=F64), (3, 3), (2, 2), {"n_cores": 3}),
}


def inputs_for(dense):
    if isinstance(dense, nn.Linear):
        return torch.randn(4, dense.in_features, dtype=F64)
    return torch.randn(2, dense.in_channels, 7, 9, dtype=F64)


@pytest.mark.parametrize("case", list(CASES))
def test_current_ranks_reproduce_the_layer(case):
    cls, make, ranks, _, options = CASES[case]
    layer = tuned(cls.from_dense(make(), ranks, **options))
    again = layer.recompress(ranks)
    assert type(again) is cls and again.ranks == layer.ranks and again is not layer
    x = inputs_for(make())
    with torch.no_grad():
        assert rel_err(again.reconstruct_weight(), layer.reconstruct_weight()) < 1e-10
        assert rel_err(again(x), layer(x)) < 1e-10


@pytest.mark.parametrize("case", list(CASES))
def test_smaller_ranks_give_a_smaller_layer_of_the_same_class(case):
    cls, make, ranks, small, options = CASES[case]
    layer = tuned(cls.from_dense(make(), ranks, **options))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    shrunk = layer.recompress(small)
    assert type(shrunk) is cls and shrunk.ranks == small and shrunk.options == layer.options
    assert count_params(shrunk) < count_params(layer)
    assert cls.cost(shrunk.spec, small)[1] < cls.cost(layer.spec, ranks)[1]
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())  # the input is untouched
    if layer.output_bias() is not None:
        assert torch.equal(shrunk.output_bias(), layer.output_bias())
    with torch.no_grad():
        assert rel_err(shrunk.reconstruct_weight(), layer.reconstruct_weight()) < 1  # an approximation


@pytest.mark.parametrize("case", ["tucker2", "tucker2-groups"])
def test_tucker2_recompression_is_as_good_as_tucker2_of_the_dense_kernel(case):
    cls, make, ranks, small, _ = CASES[case]
    layer = tuned(Tucker2Conv.from_dense(make(), ranks))
    w = layer.reconstruct_weight()
    shrunk = layer.recompress(small)
    direct = Tucker2Conv.from_dense(layer.to_dense(), small)
    g = layer.spec.groups
    hooi = torch.cat(
        [tucker2_reconstruct(*tucker2(k, small, n_iter_max=100)) for k in w.chunk(g)]
    )  # HOOI of each group's dense kernel
    with torch.no_grad():
        e_re = rel_err(shrunk.reconstruct_weight(), w)
        e_direct = rel_err(direct.reconstruct_weight(), w)
    e_hooi = rel_err(hooi, w)
    assert e_re == pytest.approx(e_hooi, rel=1e-6)
    assert e_re == pytest.approx(e_direct, rel=1e-5)  # from_dense goes through float64 too


@pytest.mark.parametrize("case", ["svd-conv", "svd-linear", "spatial-svd"])
def test_svd_recompression_is_the_optimal_truncation(case):
    cls, make, ranks, small, _ = CASES[case]
    layer = tuned(cls.from_dense(make(), ranks))
    w = layer.reconstruct_weight()
    shrunk = layer.recompress(small)
    direct = cls.from_dense(layer.to_dense(), small)  # truncated SVD of the dense kernel (Eckart-Young)
    with torch.no_grad():
        assert rel_err(shrunk.reconstruct_weight(), w) == pytest.approx(
            rel_err(direct.reconstruct_weight(), w), rel=1e-9
        )
        assert rel_err(shrunk.reconstruct_weight(), direct.reconstruct_weight()) < 1e-8


def test_rank_rules_are_relative_to_the_dense_layer_and_never_grow():
    layer = tuned(Tucker2Conv.from_dense(conv(), (6, 5)))
    assert layer.recompress(1.0).ranks == (6, 5)  # the current ranks are the layer's full rank
    assert layer.recompress(0.5).ranks == (3, 3)  # half of (6, 5), rounded up
    vbmf = layer.recompress("vbmf").ranks
    assert all(r <= c for r, c in zip(vbmf, layer.ranks))
    weak = layer.recompress("vbmf:0.5").ranks  # MUSCO's weakened VBMF: halfway toward the current ranks
    assert weak == tuple(v + (c - v) // 2 for v, c in zip(vbmf, layer.ranks))
    small = layer.recompress("macs:0.1")
    dense_macs = Tucker2Conv.dense_cost(conv())[1]
    assert Tucker2Conv.cost(small.spec, small.ranks)[1] <= 0.1 * dense_macs
    with pytest.raises(ValueError, match=r"at most the layer's current ranks \(6, 5\)"):
        layer.recompress((7, 5))
    with pytest.raises(ValueError, match="above the maximum"):
        layer.recompress((13, 5))


@pytest.mark.parametrize("case", ["tucker2", "tucker2-groups", "svd-conv", "svd-linear", "spatial-svd"])
def test_own_spectra_are_the_nonzero_spectra_of_the_kernel(case):
    cls, make, ranks, _, options = CASES[case]
    layer = tuned(cls.from_dense(make(), ranks, **options))
    dense = cls.spectra(layer.to_dense(), layer.spec, layer.options)
    own = layer.own_spectra()
    for mode, (d_mode, o_mode) in enumerate(zip(dense, own)):
        for d, o in zip(d_mode, o_mode):
            assert len(o.values) == o.shape[0] == layer.ranks[mode]  # the small matrix: rank r x ...
            assert torch.allclose(o.values, d.values[: len(o.values)], rtol=1e-9, atol=1e-12)
            tail = d.values[len(o.values) :]
            assert len(tail) == 0 or float(tail.max()) < 1e-9 * float(d.values[0])


def test_float32_layers_stay_float32():
    torch.manual_seed(0)
    layer = tuned(SVDConv.from_dense(nn.Conv2d(6, 8, 3), 4))
    shrunk = layer.recompress(2)
    assert shrunk.first.weight.dtype == torch.float32
    x = torch.randn(1, 6, 9, 9)
    with torch.no_grad():
        assert rel_err(layer.recompress(4)(x), layer(x)) < 1e-5


def test_truncated_svd_of_product_matches_the_svd_of_the_product():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(9, 5, generator=g, dtype=F64), torch.randn(5, 11, generator=g, dtype=F64)
    u, s, vh = truncated_svd_of_product(a, b, 3)
    assert torch.allclose(s, torch.linalg.svdvals(a @ b)[:3], atol=1e-12)
    assert torch.allclose(u.T @ u, torch.eye(3, dtype=F64), atol=1e-12)
    assert torch.allclose(vh @ vh.T, torch.eye(3, dtype=F64), atol=1e-12)
    with pytest.raises(ValueError, match="do not chain"):
        truncated_svd_of_product(a, b.T, 2)
    with pytest.raises(ValueError, match="rank"):
        truncated_svd_of_product(a, b, 6)


def test_tucker2_of_tucker2_checks_shapes():
    core, out_f, in_f = torch.randn(3, 2, 3, 3), torch.randn(5, 3), torch.randn(4, 2)
    t = tucker2_of_tucker2(core, out_f, in_f, (2, 1))
    assert t.core.shape == (2, 1, 3, 3) and t.out_factor.shape == (5, 2) and t.in_factor.shape == (4, 1)
    with pytest.raises(ValueError, match="does not match"):
        tucker2_of_tucker2(core, in_f, out_f, (2, 1))
    with pytest.raises(ValueError, match="ranks"):
        tucker2_of_tucker2(core, out_f, in_f, (4, 1))
