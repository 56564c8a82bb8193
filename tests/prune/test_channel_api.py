"""ChannelPruneConfig through compress, lists of configs, save / load, stages and the CLI."""

import json

import pytest
import torch

import factorch
from factorch.cli import main
from factorch.layers import FactorizedLayer

X = torch.randn(1, 1, 28, 28)


def resnet():
    torch.manual_seed(0)
    return factorch.models.create_model("resnet20").eval()


def test_channel_pruning_meets_the_target_and_loads_back(tmp_path):
    model = resnet()
    out, report = factorch.compress(model, factorch.ChannelPruneConfig("macs=0.5"), example_inputs=X)
    t = report.totals
    assert 0.48 <= t["macs_ratio"] <= 0.5 and t["params_ratio"] < 0.7
    assert t["nonzero_params_ratio"] == pytest.approx(t["params_ratio"], rel=0.02)
    rows = [r for r in report.layers if r.skipped is None]
    assert rows and all(r.method == "channels" and r.params_after < r.params_before for r in rows)
    factorch.save(out, tmp_path / "m")
    plan = json.loads((tmp_path / "m" / "plan.json").read_text())
    assert len(plan["channels"]) == 1 and plan["channels"][0]["shortcuts"]  # the option-A shortcuts as maps
    back = factorch.load(tmp_path / "m")
    torch.testing.assert_close(back(X), out(X), rtol=0, atol=0)
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in out.parameters())


def small_resnet():
    from factorch.models.resnet import CifarResNet

    torch.manual_seed(0)
    return CifarResNet(8, widths=(8, 16, 32)).eval()  # option-A shortcuts, 7 convs


def test_channel_pruning_then_autoconfig_in_one_call(tmp_path):
    calib = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    auto = factorch.AutoConfig("macs=0.3", methods=["svd"], levels=(0.2, 0.5), measure=False,
                               refine=0, polish=0, progress=False, cache=False)  # fmt: skip
    out, report = factorch.compress(
        small_resnet(), [factorch.ChannelPruneConfig("macs=0.6"), auto], example_inputs=X, calib_data=calib
    )
    assert report.totals["macs_ratio"] <= 0.3 + 1e-9
    assert 0.55 <= report.stages[0]["macs_ratio"] <= 0.6
    assert any(isinstance(m, FactorizedLayer) for m in out.modules())
    factorch.save(out, tmp_path / "m")
    torch.testing.assert_close(factorch.load(tmp_path / "m", base_model=small_resnet())(X), out(X))


def test_channel_config_validates():
    for bad in (
        dict(target="latency=0.5", allocation="global"),
        dict(target="macs"),
        dict(criterion="random"),
        dict(round_to=0),
    ):
        with pytest.raises(ValueError, match="ChannelPruneConfig"):
            factorch.ChannelPruneConfig(**bad)
    with pytest.raises(ValueError, match="needs calib_data"):
        factorch.compress(resnet(), factorch.ChannelPruneConfig(criterion="activation"), example_inputs=X)


def test_fold_bn_after_channel_pruning_is_exact_and_replayed(tmp_path):
    out, _ = factorch.compress(resnet(), factorch.ChannelPruneConfig("macs=0.7"), example_inputs=X)
    folded, _ = factorch.compress(resnet(), factorch.ChannelPruneConfig("macs=0.7"), example_inputs=X, fold_bn=True)
    torch.testing.assert_close(folded(X), out(X), rtol=1e-4, atol=1e-5)
    factorch.save(folded, tmp_path / "f")
    torch.testing.assert_close(factorch.load(tmp_path / "f")(X), folded(X), rtol=0, atol=0)


def test_cli_prune_structured_and_unstructured(tmp_path):
    argv = ["prune", "resnet20", "--target", "macs=0.5", "--calibrate", "64", "--no-eval"]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["totals"]["macs_ratio"] <= 0.5 and report["totals"]["reconstruction"]["n_samples"] == 64
    assert main(["prune", "lenet5", "--sparsity", "0.8", "--no-eval", "--out", str(tmp_path / "u")]) == 0
    report = json.loads((tmp_path / "u" / "report.json").read_text())
    assert report["totals"]["nonzero_params_ratio"] < 0.3
    assert main(["prune", "lenet5", "--sparsity", "0.8", "--structured", "--no-eval", "--out", str(tmp_path)]) == 2
    argv = ["compress", "lenet5", "--method", "prune", "--sparsity", "0.7", "--scope", "layer", "--no-eval"]
    assert main([*argv, "--out", str(tmp_path / "c")]) == 0
    plan = json.loads((tmp_path / "c" / "plan.json").read_text())
    assert {d["class"] for d in plan["layers"].values()} == {"PrunedLayer"}


def test_calibrate_refits_the_layers_that_lost_inputs():
    """Least-squares reconstruction (He et al. 2017): each refitted layer's responses are closer to the dense
    layer's than before, and the network's outputs closer to the dense network's."""
    torch.manual_seed(3)
    model = small_resnet()
    calib = torch.randn(64, 1, 28, 28)
    plain, _ = factorch.compress(model, factorch.ChannelPruneConfig("macs=0.5"), example_inputs=X)
    fitted, report = factorch.compress(
        model, factorch.ChannelPruneConfig("macs=0.5"), example_inputs=X, calib_data=calib,
        calibrate=factorch.CalibrationConfig(n_samples=64, progress=False),
    )  # fmt: skip
    layers = report.totals["reconstruction"]["layers"]
    assert layers and all(e["after"] < e["before"] for e in layers.values())
    err = lambda m: float((m(calib) - model(calib)).norm() / model(calib).norm())  # noqa: E731
    assert err(fitted) < 0.8 * err(plain)
    assert torch.equal(fitted.conv1.weight, plain.conv1.weight)  # the first conv lost no inputs: not refitted
    with pytest.raises(ValueError, match="needs calib_data"):
        factorch.compress(model, factorch.ChannelPruneConfig(), example_inputs=X, calibrate=64)


def test_channel_pruning_in_stages_approaches_the_target(tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    seen = []
    out, report = factorch.compress_in_stages(
        small_resnet(), factorch.ChannelPruneConfig("macs=0.5"), stages=2, train_data=data, example_inputs=X,
        finetune_epochs=1, batch_size=8, show_progress=False, checkpoint_dir=tmp_path,
        on_stage_end=lambda i, rec: seen.append(round(rec["macs_ratio"], 2)),
    )  # fmt: skip
    assert seen[0] > 0.6 and seen[1] <= 0.5  # 0.5 ** (1/2) of the MACs after the first stage, then 0.5
    assert report.totals["macs_ratio"] <= 0.5
    back = factorch.load(tmp_path / "stage-2", base_model=small_resnet())
    torch.testing.assert_close(back(X), out(X))


def test_uniform_allocation_removes_the_same_share_everywhere():
    out, report = factorch.compress(
        small_resnet(), factorch.ChannelPruneConfig("macs=0.5", allocation="uniform"), example_inputs=X
    )
    assert report.totals["macs_ratio"] <= 0.5
    kept = {r.name: r.ranks[0] for r in report.layers if r.skipped is None and r.name.endswith("conv1")}
    before = {"layer1": 8, "layer2": 16, "layer3": 32}
    shares = {round(kept[n] / before[n.split(".")[0]], 1) for n in kept if n.startswith("layer")}
    assert len(shares) <= 2  # one share, up to rounding to whole channels
    with pytest.raises(ValueError, match="allocation"):
        factorch.ChannelPruneConfig(allocation="greedy")


def test_auto_allocation_keeps_the_allocation_whose_outputs_stay_closest():
    """Both allocations built; the kept one is the model compress gives for that allocation, and its measured
    KL to the unpruned outputs is the lower; without calib_data, global."""
    from factorch.auto.sensitivity import OutputScorer, model_outputs

    calib = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    model = small_resnet()
    out, report = factorch.compress(model, factorch.ChannelPruneConfig("macs=0.5"), example_inputs=X, calib_data=calib)
    chosen = report.totals["allocation"]
    scorer = OutputScorer(model_outputs(model, calib), "kl")
    for allocation in ("global", "uniform"):
        cfg = factorch.ChannelPruneConfig("macs=0.5", allocation=allocation)
        alone, _ = factorch.compress(model, cfg, example_inputs=X, calib_data=calib)
        assert chosen["damage"][allocation] == pytest.approx(scorer(model_outputs(alone, calib)), rel=1e-9)
        if allocation == chosen["allocation"]:
            torch.testing.assert_close(alone(calib), out(calib), rtol=0, atol=0)
    assert chosen["damage"][chosen["allocation"]] == min(chosen["damage"].values())
    assert len(set(chosen["damage"].values())) == 2  # two different models were compared
    mine = small_resnet()
    same, _ = factorch.compress(mine, factorch.ChannelPruneConfig("macs=0.5"), example_inputs=X, calib_data=calib,
                                inplace=True)  # fmt: skip
    assert same is mine
    torch.testing.assert_close(same(calib), out(calib), rtol=0, atol=0)
    _, plain = factorch.compress(model, factorch.ChannelPruneConfig("macs=0.5"), example_inputs=X)
    assert plain.totals["allocation"]["allocation"] == "global"


def test_structured_stages_refit_every_stage_to_the_model_it_started_from(tmp_path, monkeypatch):
    """compress_in_stages(calibrate=...): each stage's pruned layers are refitted, against that stage's
    starting model (not the original), before its fine-tuning."""
    import factorch.prune.apply as apply_mod

    data = torch.utils.data.TensorDataset(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    refits, real = [], apply_mod.reconstruct_inputs_

    def spy(pruned, dense, record, inputs, settings):
        refits.append(sum(p.numel() for p in dense.parameters()))
        return real(pruned, dense, record, inputs, settings)

    monkeypatch.setattr(apply_mod, "reconstruct_inputs_", spy)
    model = small_resnet()
    cfg = factorch.ChannelPruneConfig("macs=0.5", allocation="global")
    factorch.compress_in_stages(
        model, cfg, stages=2, train_data=data, example_inputs=X, finetune_epochs=1, batch_size=8,
        show_progress=False, calibrate=factorch.CalibrationConfig(n_samples=16, progress=False),
    )  # fmt: skip
    dense = sum(p.numel() for p in model.parameters())
    assert len(refits) == 2 and refits[0] == dense and refits[1] < dense  # stage 2 refits to stage 1's model
    with pytest.raises(ValueError, match="calibrate"):
        factorch.compress_in_stages(model, factorch.PruneConfig(sparsity=0.5), stages=1, train_data=data,
                                    example_inputs=X, calibrate=factorch.CalibrationConfig())  # fmt: skip
