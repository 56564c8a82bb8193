"""SharedWeightLayer (k-means weight sharing): clusters, gradients per cluster, pruned zeros kept, storage."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import factorch
from factorch.layers import SharedWeightLayer
from factorch.layers.shared import elbow_bits, kmeans_1d


def test_kmeans_1d_finds_separated_clusters_from_a_linear_start():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([-1.0, 0.1, 0.3, 2.0])
    values = centres.repeat_interleave(50) + 0.01 * torch.randn(200, generator=gen)
    c, codes = kmeans_1d(values, 4)
    torch.testing.assert_close(c, centres, atol=0.01, rtol=0)
    assert torch.equal(codes, torch.arange(4).repeat_interleave(50))
    # each centroid is the mean of its members (a Lloyd fixed point)
    for k in range(4):
        assert float(c[k]) == pytest.approx(float(values[codes == k].mean()), abs=1e-6)


def test_elbow_picks_the_bits_after_which_distortion_stops_falling():
    gen = torch.Generator().manual_seed(1)
    levels = torch.tensor([-3.0, -1.0, 1.0, 3.0])  # 4 values: 2 bits, then only the noise is left to fit
    values = levels[torch.randint(0, 4, (2000,), generator=gen)] + 1e-4 * torch.randn(2000, generator=gen)
    assert elbow_bits(values) == 2


def test_layer_computes_with_shared_weights_and_sums_gradients_per_cluster():
    torch.manual_seed(0)
    dense, x = nn.Conv2d(3, 4, 3, padding=1), torch.randn(2, 3, 6, 6)
    layer = SharedWeightLayer.from_dense(dense, 2)
    w = layer.centroids[layer.codes.long()]
    assert len(set(w.flatten().tolist())) <= 4
    torch.testing.assert_close(layer(x), F.conv2d(x, w, dense.bias, padding=1))
    torch.testing.assert_close(layer.to_dense()(x), layer(x))
    weight = dense.weight.detach().requires_grad_(True)
    F.conv2d(x, weight, dense.bias, padding=1).sum().backward()
    layer(x).sum().backward()
    for k in range(4):  # a centroid's gradient: its weights' gradients summed, divided by their number
        members = layer.codes.long() == k
        expected = float(weight.grad[members].sum()) / max(1, int(members.sum()))
        assert float(layer.centroids.grad[k]) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_pruned_zeros_stay_zero_and_storage_counts_codes_mask_and_codebook(tmp_path):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(16 * 4 * 4, 10))  # fmt: skip

    x = torch.randn(4, 1, 8, 8)
    pruned, _ = factorch.compress(net(), factorch.PruneConfig(sparsity=0.75, scope="layer"), example_inputs=x[:1])
    shared, report = factorch.compress(pruned, factorch.KMeansConfig(bits=4), example_inputs=x[:1])
    layer = shared[2]
    assert isinstance(layer, SharedWeightLayer) and type(pruned[2]).__name__ == "PrunedLayer"  # caller's untouched
    assert torch.equal(layer.mask, pruned[2].mask)
    assert bool((layer.shared_weight()[~layer.mask] == 0).all())
    kept, numel = int(layer.mask.sum()), layer.mask.numel()
    # codes at 4 bits per kept weight, a 16-entry float32 codebook, float32 biases, a 1-bit mask
    cost = layer.layer_cost()
    assert cost.size_bits == kept * 4 + 16 * 32 + 16 * 32 + numel
    row = next(r for r in report.layers if r.name == "2")
    assert row.size_after == math.ceil(cost.size_bits / 8)
    factorch.save(shared, tmp_path / "s")
    back = factorch.load(tmp_path / "s", base_model=net())
    torch.testing.assert_close(back(x), shared(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="KMeansConfig"):
        factorch.KMeansConfig(bits=9)


def test_a_very_sparse_layer_is_still_shared():
    # at 97 % sparsity the 1-bit mask outweighs the values; it is stored either way, so sharing still pays
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 10))
    x = torch.randn(1, 400)
    pruned, _ = factorch.compress(model, factorch.PruneConfig(sparsity=0.97), example_inputs=x, keep_edges=False)
    shared, report = factorch.compress(pruned, factorch.KMeansConfig(bits=4), example_inputs=x, keep_edges=False)
    assert [r.skipped for r in report.layers] == [None, None]
    assert isinstance(shared[0], SharedWeightLayer) and int(shared[0].mask.sum()) == int(pruned[0].mask.sum())
