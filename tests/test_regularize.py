"""finetune's L1 and group-lasso penalties."""

import pytest
import torch
from torch import nn

import factorch
from factorch.layers import PrunedLayer
from factorch.train.distill import Regularized


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_penalty_is_l1_plus_group_norms_except_the_output_layer():
    model = mlp()
    reg = Regularized(None, model, l1=0.1, group_lasso=0.5)
    w0, w1 = model[0].weight, model[2].weight
    expected = 0.1 * (w0.abs().sum() + w1.abs().sum()) + 0.5 * w0.norm(dim=1).sum()  # no group term on the classes
    torch.testing.assert_close(reg.penalty(), expected)


def test_penalty_reads_a_pruned_layers_masked_weight():
    model = mlp()
    model[0] = PrunedLayer.from_dense(model[0], 0.5)
    reg = Regularized(None, model, l1=1.0)
    expected = (model[0].layer.weight * model[0].mask).abs().sum() + model[2].weight.abs().sum()
    torch.testing.assert_close(reg.penalty(), expected)


def test_group_lasso_drives_whole_neurons_toward_zero():
    data = torch.utils.data.TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
    kw = dict(epochs=3, lr=0.05, batch_size=16, show_progress=False, weight_decay=0.0)
    plain = factorch.finetune(mlp(), data, **kw)
    grouped = factorch.finetune(mlp(), data, group_lasso=1.0, **kw)
    small = lambda m: int((m[0].weight.norm(dim=1) < 1e-2).sum())  # noqa: E731
    assert grouped[0].weight.norm(dim=1).sum() < 0.6 * plain[0].weight.norm(dim=1).sum()
    assert small(grouped) >= small(plain)


def test_bad_penalty_weights_are_refused():
    data = torch.utils.data.TensorDataset(torch.randn(8, 6), torch.randint(0, 3, (8,)))
    with pytest.raises(ValueError, match="l1"):
        factorch.finetune(mlp(), data, l1=-1.0, show_progress=False)
