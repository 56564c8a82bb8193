"""Product and residual quantization: subvectors, codebooks, storage, training."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import factorch
from factorch.layers import ResidualQuantizedLayer, VectorQuantizedLayer
from factorch.layers.vector import kmeans


def test_subvectors_run_along_the_inputs_and_go_back_in_place():
    w = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).view(2, 4, 3, 3)
    v = VectorQuantizedLayer.to_vectors(w, 2)
    assert v.shape == (2 * 3 * 3 * 2, 2)
    assert v[0].tolist() == [w[0, 0, 0, 0], w[0, 1, 0, 0]]  # output 0, kernel position (0, 0), inputs 0-1
    layer = VectorQuantizedLayer.build(factorch.layers.ConvSpec.from_module(nn.Conv2d(4, 2, 3)), (2, 2, 1))
    assert torch.equal(layer.from_vectors(v), w)


def test_pq_with_as_many_codewords_as_subvectors_is_exact():
    torch.manual_seed(0)
    dense, x = nn.Conv2d(4, 2, 3, padding=1), torch.randn(2, 4, 5, 5)
    layer = VectorQuantizedLayer.from_dense(dense, (4, 5, 1))  # 18 subvectors <= 32 codewords
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-6)


def test_kmeans_recovers_separated_vector_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    v = centres.repeat_interleave(40, 0) + 0.05 * torch.randn(120, 2, generator=gen)
    book, codes = kmeans(v, 3)
    found = sorted(book.tolist())
    for got, want in zip(found, sorted(centres.tolist())):
        assert got == pytest.approx(want, abs=0.05)
    assert len(set(codes.tolist())) == 3


def test_residual_stages_lower_the_error_and_storage_is_counted_exactly(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    errs = []
    for stages in (1, 2, 3):
        layer = ResidualQuantizedLayer.from_dense(lin, (4, 4, stages))
        errs.append(float((layer.effective_weight() - lin.weight).norm()))
        cost = layer.layer_cost()
        assert cost.size_bits == (32 * 64 // 4) * stages * 4 + stages * 16 * 4 * 32 + 32 * 32
    assert errs[0] > errs[1] > errs[2]
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.effective_weight(), lin.bias))


def test_configs_save_load_and_train(tmp_path):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(16 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))  # fmt: skip

    x = torch.randn(8, 1, 8, 8)
    for cfg in (factorch.PQConfig(subvector=4, bits=4), factorch.RQConfig(subvector=4, bits=3, stages=2)):
        out, report = factorch.compress(net(), cfg, example_inputs=x[:1])
        kinds = {r.name: (r.method, r.skipped) for r in report.layers}
        assert kinds["5"][0] == cfg.method  # the 256-input Linear
        assert report.totals["size_ratio"] < 1
        factorch.save(out, tmp_path / cfg.method)
        back = factorch.load(tmp_path / cfg.method, base_model=net())
        torch.testing.assert_close(back(x), out(x), rtol=0, atol=0)
    layer = out[5]
    before = layer.codebooks.detach().clone()
    out(x).sum().backward()
    assert layer.codebooks.grad is not None and float(layer.codebooks.grad.abs().sum()) > 0
    assert torch.equal(layer.codebooks.detach(), before)
    with pytest.raises(ValueError, match="PQConfig"):
        factorch.PQConfig(bits=0)
    assert math.isclose(factorch.RQConfig().stages, 2)
