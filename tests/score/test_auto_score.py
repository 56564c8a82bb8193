"""AutoConfig("score=S"): the one solver picks per layer among ranks, sparsities and bit widths (weights and
activations) so that the built model's complexity score is at most S."""

import pytest
import torch
from torch import nn

import factorch
from factorch.auto.config import Target
from factorch.layers.quantized import QuantizedLayer


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


def auto(target: float, methods) -> factorch.AutoConfig:
    return factorch.AutoConfig(f"score={target}", methods=methods, progress=False, cache=False, calib_samples=64)


@pytest.mark.parametrize("methods,fraction", [(["tucker2"], 0.85), (["tucker2", "quant", "prune"], 0.3)])
def test_the_built_model_meets_the_score(methods, fraction):
    x = torch.randn(64, 1, 12, 12)
    model = net()
    dense = factorch.score(model, x[:1]).score
    goal = dense * fraction
    small, report = factorch.compress(model, auto(goal, methods), example_inputs=x[:1], calib_data=x)
    measured = factorch.score(small, x[:1]).score
    assert measured <= goal
    totals = report.to_dict()["totals"]
    assert totals["score"] == pytest.approx(measured) and totals["score_dense"] == pytest.approx(dense)
    assert totals["score_rules"] == "effdl"
    for layer in small.modules():  # quantized activations were calibrated by the search, not left at scale 1
        if isinstance(layer, QuantizedLayer) and layer.act_bits < 32:
            assert bool(layer.act_ready) and float(layer.act_scale) != 1.0


def test_score_targets_are_absolute_and_checked():
    assert Target.parse("score=0.008") == Target("score", None, 0.008)
    assert str(Target.parse("score=0.008")) == "score=0.008"
    with pytest.raises(ValueError, match="positive"):
        Target.parse("score=-1")
    with pytest.raises(ValueError, match="unknown score rules"):
        factorch.AutoConfig("score=0.01", rules="cifar")
    with pytest.raises(ValueError, match="absolute"):
        factorch.AutoConfig("score=0.01", max_accuracy_drop=1.0)
    x = torch.randn(16, 1, 12, 12)
    with pytest.raises(ValueError, match=r"score=1e-06 \(effdl\) is out of reach"):
        factorch.compress(net(), auto(1e-6, ["tucker2"]), example_inputs=x[:1], calib_data=x)
