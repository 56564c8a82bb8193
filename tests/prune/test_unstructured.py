"""Unstructured pruning: the pruned layer, its config, global vs per-layer thresholds, compact saving,
schedules and the search option."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import factorch
from factorch.layers.pruned import PrunedLayer, kept_count, magnitude_mask
from factorch.stages import prune_sparsity


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    ).eval()


X = torch.randn(2, 3, 8, 8)


# -- the layer ---------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["conv1d", "conv2d", "linear"]),
    groups=st.integers(1, 3),
    cin=st.integers(1, 3),
    cout=st.integers(1, 3),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    mode=st.sampled_from(["zeros", "reflect", "circular", "replicate"]),
    sparsity=st.sampled_from([0.0, 0.3, 0.7]),
)
def test_pruned_layer_computes_its_masked_dense_layer(
    kind, groups, cin, cout, k, stride, dilation, bias, mode, sparsity
):
    """Against torch's functional ops written out (padding mode, stride, dilation and groups included)."""
    torch.manual_seed(1)
    cin, cout = cin * groups, cout * groups
    pad = dilation * (k // 2)
    if kind == "linear":
        dense, x = nn.Linear(cin, cout, bias=bias), torch.randn(3, cin)
    else:
        conv = nn.Conv1d if kind == "conv1d" else nn.Conv2d
        dense = conv(cin, cout, k, stride, pad, dilation, groups, bias=bias, padding_mode=mode)
        x = torch.randn(2, cin, 7) if kind == "conv1d" else torch.randn(2, cin, 7, 6)
    layer = PrunedLayer.from_dense(dense, sparsity)
    numel = dense.weight.numel()
    assert layer.ranks == (max(1, numel - round(sparsity * numel)),)
    assert int(layer.mask.sum()) == layer.ranks[0]
    with torch.no_grad():
        masked = dense.weight * layer.mask
        if kind == "linear":
            expected = F.linear(x, masked, dense.bias)
        else:
            fn = F.conv1d if kind == "conv1d" else F.conv2d
            spatial = x.dim() - 2
            if mode == "zeros":
                expected = fn(x, masked, dense.bias, stride, pad, dilation, groups)
            else:
                padded = F.pad(x, (pad,) * (2 * spatial), mode=mode)
                expected = fn(padded, masked, dense.bias, stride, 0, dilation, groups)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.to_dense()(x), expected)
    if sparsity == 0.0:  # zero sparsity: exactly the dense layer
        torch.testing.assert_close(layer(x), dense(x), rtol=0, atol=0)


def test_magnitude_mask_keeps_the_largest_weights():
    w = torch.tensor([[0.1, -3.0, 0.5], [2.0, -0.2, 0.05]])
    assert magnitude_mask(w, 2).tolist() == [[False, True, False], [True, False, False]]
    assert magnitude_mask(w, 6).all()


def test_kept_count_rounds_and_validates():
    assert kept_count(10, 0.9) == 1 and kept_count(10, 0.84) == 2 and kept_count(10, 0.0) == 10
    assert kept_count(10, 0.86) == 1 and kept_count(1000, 0.1234) == 877  # rounded, not truncated
    assert kept_count(10, 0.99) == 1  # never an empty layer
    assert kept_count(10, 7) == 7 and kept_count(10, (3,)) == 3
    for bad in (1.0, -0.1, 0, 11, True):
        with pytest.raises(ValueError):
            kept_count(10, bad)


def test_mask_holds_during_training():
    torch.manual_seed(0)
    layer = PrunedLayer.from_dense(nn.Linear(8, 8), 0.75)
    dead = ~layer.mask
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        opt.zero_grad()
        layer(torch.randn(4, 8)).pow(2).sum().backward()
        opt.step()
    assert layer.layer.weight[dead].abs().max() == 0
    assert int(layer.mask.sum()) == 16


def test_cost_counts_nonzeros_and_a_one_bit_mask():
    layer = PrunedLayer.from_dense(nn.Linear(100, 10), 0.9)
    cost = layer.layer_cost()
    assert (cost.params, cost.nonzero_params, cost.macs) == (1010, 110, 1000)
    assert cost.mask_bits == 1000
    assert cost.size_bytes == (110 * 32 + 1000) // 8


def test_pack_unpack_is_bit_exact():
    torch.manual_seed(2)
    layer = PrunedLayer.from_dense(nn.Conv2d(4, 5, 3, bias=True), 0.8)
    state = layer.state_dict()
    packed, fmt = layer.pack_state(dict(state))
    assert set(packed) == {"layer.bias", "values", "mask_bits"}
    assert packed["values"].numel() == int(layer.mask.sum()) and packed["mask_bits"].numel() == (180 + 7) // 8
    back = PrunedLayer.unpack_state(packed, fmt, layer.spec)
    for key, value in state.items():
        assert torch.equal(back[key], value), key


# -- the config through compress ---------------------------------------------------------------------------
def test_prune_config_validates():
    for bad in (dict(sparsity=1.0), dict(sparsity=-0.5), dict(scope="model"), dict(criterion="random")):
        with pytest.raises(ValueError, match="PruneConfig"):
            factorch.PruneConfig(**bad)
    with pytest.raises(TypeError, match="sparsity"):
        factorch.PruneConfig(sparsity="0.9")
    cfg = factorch.PruneConfig(sparsity=0.8, scope="global")
    assert factorch.MethodConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_layer_scope_prunes_each_layer_by_the_same_share():
    model = net()
    out, report = factorch.compress(model, factorch.PruneConfig(sparsity=0.75, scope="layer"), example_inputs=X)
    rows = {r.name: r for r in report.layers}
    assert rows["0"].skipped and rows["11"].skipped  # edges stay dense by default
    for name in ("3", "5", "9"):
        layer = out.get_submodule(name)
        assert isinstance(layer, PrunedLayer)
        numel = layer.mask.numel()
        assert layer.ranks == (numel - round(0.75 * numel),)
        assert rows[name].nonzero_after == rows[name].params_before - round(0.75 * numel)
    assert all(p is not q for p, q in zip(model.parameters(), out.parameters()))  # the input model is untouched
    assert not any(isinstance(m, PrunedLayer) for m in model.modules())


def test_global_scope_uses_one_threshold_across_layers():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(4, 2))
    with torch.no_grad():  # layer 0 holds the 12 largest magnitudes of the two middle layers' 32 weights
        model[0].weight.copy_(torch.arange(1, 17, dtype=torch.float).view(4, 4) + 100)
        model[1].weight.copy_(torch.arange(1, 17, dtype=torch.float).view(4, 4) * 0.01)
    plan = factorch.Plan({"0": factorch.PruneConfig(sparsity=0.5, scope="global"),
                          "1": factorch.PruneConfig(sparsity=0.5, scope="global")})  # fmt: skip
    cfg = factorch.PruneConfig(sparsity=0.5, scope="global")
    out, report = factorch.compress(model, factorch.Plan({"0": cfg, "1": cfg}), example_inputs=torch.randn(1, 4))
    # 16 of 32 kept overall: all of layer 0 (left dense, nothing to remove), layer 1 keeps its floor of one weight
    assert type(out[0]) is nn.Linear and "keeps every weight" in report.layers[0].skipped
    assert out[1].ranks == (1,)
    # two separate global configs are two separate groups: each is thresholded on its own
    out2, _ = factorch.compress(model, plan, example_inputs=torch.randn(1, 4))
    assert out2[0].ranks == (8,) and out2[1].ranks == (8,)


def test_report_totals_and_compact_save(tmp_path):
    model = net()
    out, report = factorch.compress(model, factorch.PruneConfig(sparsity=0.9, scope="global"), example_inputs=X)
    t = report.totals
    for key in ("params_ratio", "macs_ratio", "nonzero_params_ratio", "size_bytes"):
        assert key in t
    assert t["params_ratio"] == 1.0 and t["macs_ratio"] == 1.0  # a dense kernel executes the zeros
    pruned_weights = sum(m.mask.numel() for m in out.modules() if isinstance(m, PrunedLayer))
    kept = sum(int(m.mask.sum()) for m in out.modules() if isinstance(m, PrunedLayer))
    assert t["nonzero_params_before"] - t["nonzero_params_after"] == pruned_weights - kept
    target = pruned_weights - round(0.9 * pruned_weights)
    assert target <= kept <= target + 3  # a layer the global threshold would empty keeps one weight
    factorch.save(out, tmp_path / "p")
    factorch.save(model, tmp_path / "d")
    back = factorch.load(tmp_path / "p", base_model=net())
    torch.testing.assert_close(back(X), out(X), rtol=0, atol=0)
    sizes = [os.path.getsize(tmp_path / d / "weights.pt") for d in ("p", "d")]
    assert sizes[0] < 0.5 * sizes[1]
    assert json.loads((tmp_path / "p" / "plan.json").read_text())["layers"]["3"]["packed"] == "nonzeros+bitmask"
    assert not list((tmp_path / "p").glob("*.tmp"))


def test_markdown_table_shows_nonzeros_and_bytes():
    _, report = factorch.compress(net(), factorch.PruneConfig(sparsity=0.5), example_inputs=X)
    md = report.to_markdown()
    assert "non-zero after" in md and "bytes after" in md and "non-zero params x" in md


# -- schedules and stages ----------------------------------------------------------------------------------
def test_polynomial_and_linear_schedules():
    assert [round(prune_sparsity(0.9, i, 3), 4) for i in (1, 2, 3)] == [0.6333, 0.8667, 0.9]
    assert [round(prune_sparsity(0.9, i, 3, "linear"), 4) for i in (1, 2, 3)] == [0.3, 0.6, 0.9]
    with pytest.raises(ValueError, match="schedule"):
        prune_sparsity(0.9, 1, 3, "cosine")


def test_staged_pruning_grows_sparsity_and_keeps_masks_nested(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,)))
    seen = []
    out, report = factorch.compress_in_stages(
        net(), factorch.PruneConfig(sparsity=0.8, scope="global"), stages=2, train_data=data,
        example_inputs=X, finetune_epochs=1, batch_size=16, show_progress=False, checkpoint_dir=tmp_path,
        on_stage_end=lambda i, rec: seen.append(rec["target"]),
    )  # fmt: skip
    assert seen == ["sparsity 0.7", "sparsity 0.8"]
    kept = sum(int(m.mask.sum()) for m in out.modules() if isinstance(m, PrunedLayer))
    total = sum(m.mask.numel() for m in out.modules() if isinstance(m, PrunedLayer))
    assert kept == total - round(0.8 * total)
    stage1 = factorch.load(tmp_path / "stage-1", base_model=net())
    for name, m in out.named_modules():
        if isinstance(m, PrunedLayer):  # a weight pruned at stage 1 stays pruned at stage 2
            assert not (m.mask & ~stage1.get_submodule(name).mask).any()


# -- one solver across methods -----------------------------------------------------------------------------
def test_autoconfig_chooses_pruning_for_a_params_budget():
    calib = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    cfg = factorch.AutoConfig("params=0.3", methods=["svd", "prune"], levels=(0.1, 0.3, 0.6), measure=False,
                              refine=0, polish=0, progress=False, cache=False)  # fmt: skip
    out, report = factorch.compress(net(), cfg, example_inputs=X[:1], calib_data=calib)
    t = report.totals
    assert t["nonzero_params_ratio"] <= 0.3 + 1e-9
    methods = {r.method for r in report.layers if r.skipped is None}
    assert "prune" in methods


def test_autoconfig_under_a_macs_budget_never_offers_pruning():
    """A dense kernel executes the zeros: pruning cannot lower MACs, so it is no candidate."""
    calib = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    cfg = factorch.AutoConfig("macs=0.6", methods=["svd", "prune"], levels=(0.2, 0.5), measure=False,
                              refine=0, polish=0, progress=False, cache=False)  # fmt: skip
    _, report = factorch.compress(net(), cfg, example_inputs=X[:1], calib_data=calib)
    assert all(r.method != "prune" for r in report.layers)


# -- sensitivity -------------------------------------------------------------------------------------------
def test_sensitivity_curves_prune_one_layer_at_a_time(tmp_path):
    from factorch.prune.sensitivity import prune_sensitivity, save_curves

    model = net()
    seen = []

    def score(m):  # the share of weights that survive, a score known exactly for each pruned model
        seen.append(m)
        masks = [x for x in m.modules() if isinstance(x, PrunedLayer)]
        return float(sum(x.mask.float().mean() for x in masks)) if masks else 9.0

    curves = prune_sensitivity(model, score, example_inputs=X, sparsities=(0.5, 0.9), layers=["3", "9"],
                               progress=False)  # fmt: skip
    assert curves.dense == 9.0 and list(curves.scores) == ["3", "9"]
    for row in curves.scores.values():
        assert row == pytest.approx([0.5, 0.1], abs=0.01)
    assert all(sum(isinstance(x, PrunedLayer) for x in m.modules()) == 1 for m in seen[1:])
    save_curves(curves, tmp_path)
    assert (tmp_path / "sensitivity.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no prunable layer named nope"):
        prune_sensitivity(model, score, layers=["nope"], progress=False)


def test_autoconfig_size_budget_counts_bytes_stored():
    calib = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    cfg = factorch.AutoConfig("size=0.3", methods=["svd", "prune"], levels=(0.1, 0.3, 0.6), measure=False,
                              refine=0, polish=0, progress=False, cache=False)  # fmt: skip
    _, report = factorch.compress(net(), cfg, example_inputs=X[:1], calib_data=calib)
    assert report.totals["size_ratio"] <= 0.3 + 1e-9
