"""Channel allocation by feature-map size: exact grid costs, the search's choices, the latency bound, the
BatchNorm re-estimation its damage uses, and the options through compress / stages / the CLI."""

import itertools
import json

import pytest
import torch
from torch import nn

import factorch
from factorch.cli import main
from factorch.profiling import profile
from factorch.prune.apply import reestimate_batchnorm_
from factorch.prune.channels import CostModel, channel_importance, normalize_importance
from factorch.prune.graph import analyze_channels
from factorch.prune.levels import grid_costs, group_levels, level_masks, level_model, level_search

X = torch.randn(1, 1, 28, 28)
CALIB = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(5))


def small_resnet():
    from factorch.models.resnet import CifarResNet

    torch.manual_seed(0)
    return CifarResNet(8, widths=(8, 16, 32)).eval()  # maps 28x28, 14x14, 7x7


def analysed(model):
    graph = analyze_channels(model, (X,))
    scores = normalize_importance(channel_importance(model, graph, "l1"))
    return graph, scores, CostModel.build(graph, profile(model, (X,)))


def channels_of(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_groups_take_the_size_of_their_producers_output():
    model = small_resnet()
    graph, _, _ = analysed(model)
    levels = group_levels(model, graph, (X,))
    assert levels["conv1"] == "28x28" and levels["layer1.0.conv1"] == "28x28"
    assert levels["layer2.0.conv1"] == "14x14" and levels["layer3.0.conv1"] == "7x7"
    assert set(levels.values()) == {"28x28", "14x14", "7x7"}
    vgg = factorch.models.create_model("vgg").eval()
    g = analyze_channels(vgg, (X,))
    assert group_levels(vgg, g, (X,))["classifier.0"] == "features"  # Linear neurons: no map size


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_grid_costs_equal_the_cost_model_for_every_combination(metric):
    """The vectorised pricing of all combinations is the CostModel of the same masks, and the model built
    from them profiles to that cost."""
    model = small_resnet()
    graph, scores, cost = analysed(model)
    levels = group_levels(model, graph, (X,))
    order = ("28x28", "14x14", "7x7")
    grid = (0.3, 0.55, 1.0)
    index, totals = grid_costs(graph, scores, cost, levels, order, grid, metric=metric, round_to=2)
    assert index.shape == (27, 3)
    for i, combo in enumerate(itertools.product(range(3), repeat=3)):
        assert tuple(index[i].tolist()) == combo
        shares = {lvl: grid[j] for lvl, j in zip(order, combo)}
        expected = cost(level_masks(graph, scores, levels, shares, round_to=2)).get(metric)
        assert totals[i].item() == expected
    built = level_model(model, X, {"28x28": 0.3, "14x14": 0.55}, round_to=2)
    report = profile(built, (X,))
    measured = report.total_macs if metric == "macs" else report.total_params
    i = [tuple(r) for r in index.tolist()].index((0, 1, 2))
    assert totals[i].item() == measured


def test_level_model_keeps_each_share_of_every_group_of_that_size():
    pruned = level_model(small_resnet(), X, {"28x28": 0.5, "7x7": 0.75})
    widths = channels_of(pruned)
    assert widths["conv1"] == 4 and widths["layer1.0.conv1"] == 4  # 8 -> 4
    assert widths["layer2.0.conv1"] == 16  # 14x14 left whole
    assert widths["layer3.0.conv1"] == 24  # 32 -> 24
    with pytest.raises(ValueError, match="feature-map size.*28x28"):
        level_model(small_resnet(), X, {"32x32": 0.5})


def _counts(model):
    widths = channels_of(model)
    return widths["layer1.0.conv1"] / 8, widths["layer2.0.conv1"] / 16, widths["layer3.0.conv1"] / 32


def test_search_finds_the_least_damaged_combination_within_the_budget():
    """With a damage that depends only on the kept shares (additive: the prediction is exact), the search's
    answer is the brute-force best of the grid (or better, after growing by half steps), within the budget."""
    model = small_resnet()
    graph, scores, cost = analysed(model)
    weights = (3.0, 1.0, 0.2)

    def damage(m):
        return sum(w * (1 - s) ** 2 for w, s in zip(weights, _counts(m)))

    grid = (0.25, 0.5, 0.75, 1.0)
    found = level_search(model, graph, scores, cost, (X,), damage=damage, metric="macs", fraction=0.5, grid=grid,
                         progress=False)  # fmt: skip
    levels = group_levels(model, graph, (X,))
    order = ("28x28", "14x14", "7x7")
    best = min(
        (sum(w * (1 - s) ** 2 for w, s in zip(weights, combo)), combo)
        for combo in itertools.product(grid, repeat=3)
        if cost(level_masks(graph, scores, levels, dict(zip(order, combo)))).macs <= 0.5 * cost.base.macs
    )
    assert found.levels == order
    assert found.damage <= best[0] + 1e-12
    assert cost(level_masks(graph, scores, levels, dict(zip(order, found.shares)))).macs <= 0.5 * cost.base.macs
    assert found.shares[0] >= found.shares[2]  # the most damaging level keeps the most channels
    assert found.ratios["layer1.0.conv1"] == pytest.approx(1 - found.shares[0])
    assert set(found.curves) == set(order) and found.curves["7x7"]["0.25"]["damage"] == pytest.approx(0.2 * 0.75**2)


def test_search_meets_a_latency_bound_or_names_the_fastest_it_measured():
    """A latency that falls only with the largest maps' channels: the bound moves the cut there, even though
    damage would rather cut elsewhere; an impossible bound is a clear error."""
    model = small_resnet()
    graph, scores, cost = analysed(model)

    def damage(m):
        return sum(w * (1 - s) for w, s in zip((2.0, 1.0, 0.1), _counts(m)))

    def latency(m):
        return 0.4 + 0.6 * _counts(m)[0]

    grid = (0.25, 0.5, 0.75, 1.0)
    free = level_search(model, graph, scores, cost, (X,), damage=damage, metric="macs", fraction=0.6, grid=grid,
                        progress=False)  # fmt: skip
    assert free.latency is None and free.shares[0] == 1.0
    bound = level_search(model, graph, scores, cost, (X,), damage=damage, metric="macs", fraction=0.6, grid=grid,
                         latency=latency, max_latency=0.75, progress=False)  # fmt: skip
    assert bound.latency <= 0.75 and bound.shares[0] <= 0.5
    assert all(e["latency"] == pytest.approx(latency(level_model(model, X, dict(zip(bound.levels, e["shares"])))))
               for e in bound.verified)  # fmt: skip
    grown = level_search(model, graph, scores, cost, (X,), damage=damage, metric="macs", fraction=1.0, grid=grid,
                         latency=latency, max_latency=0.75, progress=False)  # fmt: skip
    assert grown.latency <= 0.75 and grown.shares == (0.5, 1.0, 1.0)  # growing to 0.625 would run at 0.775
    assert any(e.get("grown") and e["latency"] > 0.75 for e in grown.verified)
    with pytest.raises(ValueError, match="latency=0.3"):
        level_search(model, graph, scores, cost, (X,), damage=damage, metric="macs", fraction=0.6, grid=grid,
                     latency=latency, max_latency=0.3, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="macs=0.01"):
        level_search(model, graph, scores, cost, (X,), damage=damage, metric="macs", fraction=0.01, grid=grid,
                     progress=False)  # fmt: skip


def test_batchnorm_statistics_are_re_estimated_on_the_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU()).eval()
    model[1].momentum = 0.3
    x = torch.randn(40, 1, 8, 8)
    reestimate_batchnorm_(model, x, batch_size=40)
    y = model[0](x).detach()
    torch.testing.assert_close(model[1].running_mean, y.mean((0, 2, 3)))
    torch.testing.assert_close(model[1].running_var, y.var((0, 2, 3), unbiased=True))
    assert not model.training and model[1].momentum == 0.3
    reestimate_batchnorm_(model, x, batch_size=10)  # a cumulative average over the batches: the same mean
    torch.testing.assert_close(model[1].running_mean, y.mean((0, 2, 3)))


def test_levels_allocation_through_compress_and_the_report():
    model = small_resnet()
    cfg = factorch.ChannelPruneConfig("macs=0.5", allocation="levels")
    out, report = factorch.compress(model, cfg, example_inputs=X, calib_data=CALIB)
    chosen = report.totals["allocation"]
    assert chosen["allocation"] == "levels" and report.totals["macs_ratio"] <= 0.5
    shares = dict(zip(chosen["levels"]["levels"], chosen["levels"]["shares"]))
    torch.testing.assert_close(level_model(model, X, shares)(CALIB), out(CALIB), rtol=0, atol=0)
    with pytest.raises(ValueError, match="calib_data"):
        factorch.compress(model, cfg, example_inputs=X)


def test_auto_with_a_latency_bound_keeps_only_allocations_measured_within_it(monkeypatch):
    """A fake clock that makes every model slower than the bound except narrow first stages: global and
    uniform are measured and dropped; the levels search meets the bound."""
    import factorch.prune.apply as apply_mod

    def clock(m):
        return 0.3 + 0.7 * _counts(m)[0]

    monkeypatch.setattr(apply_mod, "_latency_ratio", lambda reference, inputs, config: clock)
    # the slower an allocation, the less damaged it looks: only the bound can keep the slow ones out
    monkeypatch.setattr(apply_mod, "_output_damages", lambda ref, models, x: [-clock(m) for m in models])
    cfg = factorch.ChannelPruneConfig("macs=0.6", max_latency=0.7)
    out, report = factorch.compress(small_resnet(), cfg, example_inputs=X, calib_data=CALIB)
    chosen = report.totals["allocation"]
    assert set(chosen["latency"]) == {"global", "uniform", "levels"}
    assert chosen["latency"][chosen["allocation"]] <= 0.7
    assert 0.3 + 0.7 * _counts(out)[0] <= 0.7
    _, only = factorch.compress(small_resnet(), factorch.ChannelPruneConfig("latency=0.7"), example_inputs=X,
                                calib_data=CALIB)  # fmt: skip
    assert only.totals["allocation"]["allocation"] == "levels"


def test_latency_options_validate():
    for bad in (
        dict(max_latency=0),
        dict(max_latency=1.5),
        dict(max_latency="fast"),
        dict(runtime="tvm"),
        dict(batch_size=0),
        dict(max_latency=0.6, allocation="global"),
        dict(target="latency=0.6", allocation="uniform"),
    ):
        with pytest.raises(ValueError, match="ChannelPruneConfig"):
            factorch.ChannelPruneConfig(**bad)
    cfg = factorch.ChannelPruneConfig("latency=0.6", max_latency=0.5)
    assert cfg.latency_bound == 0.5 and factorch.ChannelPruneConfig("macs=0.5").latency_bound is None
    assert cfg.to_dict()["max_latency"] == 0.5 and cfg.to_dict()["runtime"] == "torch"
    data = torch.utils.data.TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    with pytest.raises(ValueError, match="one stage"):
        factorch.compress_in_stages(small_resnet(), factorch.ChannelPruneConfig("macs=0.5", max_latency=0.6),
                                    stages=2, train_data=data, example_inputs=X)  # fmt: skip


def test_cli_prunes_by_levels(tmp_path, monkeypatch):
    import factorch.cli as cli

    monkeypatch.setattr(cli, "_calibration", lambda args, n: CALIB)
    code = main(["prune", "resnet20", "--target", "macs=0.5", "--allocation", "levels", "--calibrate", "0",
                 "--no-eval", "--out", str(tmp_path / "p")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["totals"]["allocation"]["allocation"] == "levels"
    assert report["config"]["allocation"] == "levels" and report["totals"]["macs_ratio"] <= 0.5
