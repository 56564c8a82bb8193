"""Whole-model arguments of compress (fold_bn=, calibrate=), lists of configs, and apply_plan."""

import pytest
import torch
from torch import nn

import factorch
from factorch.layers import FactorizedLayer, PrunedLayer


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    ).eval()


X = torch.randn(1, 3, 8, 8)


def test_model_level_fold_bn_equals_the_config_field():
    a, ra = factorch.compress(net(), factorch.Tucker2Config(rank=0.5), example_inputs=X, fold_bn=True)
    b, rb = factorch.compress(net(), factorch.Tucker2Config(rank=0.5, fold_bn=True), example_inputs=X)
    assert isinstance(a[3], nn.Identity) and isinstance(b[3], nn.Identity)
    assert ra.totals["folded_bn"] == [["2", "3"]] == rb.totals["folded_bn"]
    torch.testing.assert_close(a(X), b(X))
    c, _ = factorch.compress(net(), factorch.Tucker2Config(rank=0.5, fold_bn=True), example_inputs=X, fold_bn=False)
    assert isinstance(c[3], nn.BatchNorm2d)  # the model-level argument decides


def test_model_level_calibrate_refits_every_factorized_layer():
    calib = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    dense = net()
    plain, _ = factorch.compress(dense, factorch.SVDConfig(rank=2), example_inputs=X)
    fitted, report = factorch.compress(
        dense, factorch.SVDConfig(rank=2), example_inputs=X, calib_data=calib, calibrate=64
    )
    assert "calibration" in report.totals
    err = lambda m: (m(calib) - dense(calib)).norm() / dense(calib).norm()  # noqa: E731
    assert err(fitted) < err(plain)
    with pytest.raises(ValueError, match="needs calib_data"):
        factorch.compress(dense, factorch.SVDConfig(rank=2), example_inputs=X, calibrate=64)


def test_calibrate_inplace_uses_the_model_as_it_was():
    calib = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = net()
    ref = net()
    factorch.compress(a, factorch.SVDConfig(rank=2), example_inputs=X, calib_data=calib, calibrate=64, inplace=True)
    b, _ = factorch.compress(ref, factorch.SVDConfig(rank=2), example_inputs=X, calib_data=calib, calibrate=64)
    torch.testing.assert_close(a(calib), b(calib))


def test_a_list_of_configs_applies_in_order_with_targets_relative_to_the_original():
    model = net()
    calib = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    auto = factorch.AutoConfig("params=0.3", methods=["svd", "prune"], levels=(0.1, 0.3, 0.6), measure=False,
                               refine=0, polish=0, progress=False, cache=False)  # fmt: skip
    out, report = factorch.compress(
        model, [factorch.PruneConfig(sparsity=0.3, scope="layer"), auto], example_inputs=X, calib_data=calib
    )
    t = report.totals
    assert t["nonzero_params_ratio"] <= 0.3 + 1e-9  # relative to the original model
    assert [s["stage"] for s in report.stages] == [1, 2]
    first = report.stages[0]["nonzero_params_ratio"]
    assert report.stages[1]["applied_as"]["target"] == f"params={0.3 / first:.6g}"
    assert not any(isinstance(m, (PrunedLayer, FactorizedLayer)) for m in model.modules())


def test_a_list_whose_target_is_already_met_skips_that_step():
    auto = factorch.AutoConfig("params=0.99", methods=["svd"], measure=False, progress=False, cache=False)
    calib = torch.randn(8, 3, 8, 8)
    _, report = factorch.compress(net(), [factorch.PruneConfig(sparsity=0.5), auto], example_inputs=X, calib_data=calib)
    assert report.stages[1]["status"] == "target already met"


def test_an_empty_list_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        factorch.compress(net(), [], example_inputs=X)


def test_apply_plan_is_public_and_forwards_prebuilt_layers():
    model = net()
    ready = factorch.layers.SVDConv.from_dense(model[2], 3)
    out, report = factorch.apply_plan(model, factorch.Plan({"2": factorch.SVDConfig(rank=3)}), example_inputs=X,
                                      prebuilt={"2": ready})  # fmt: skip
    assert out[2] is not ready and torch.equal(out[2][0].weight, ready[0].weight)
    assert report.layers[1].ranks == (3,)
