"""Structured pruning: importance, selection to a budget, surgery, the JSON record and its replay."""

import copy
import json

import pytest
import torch
from torch import nn

from factorch.models import create_model
from factorch.profiling import profile
from factorch.prune.channels import (
    CostModel,
    apply_channel_record_,
    channel_importance,
    channel_record,
    normalize_importance,
    parse_target,
    prune_channels,
    shrink_conv,
)
from factorch.prune.graph import ChannelMapShortcut, analyze_channels

X28 = torch.randn(1, 1, 28, 28)


def randomize_batchnorms(model):
    """Non-trivial BatchNorm statistics, so that forgetting to slice one is visible."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def kill(model, group, j):
    """Make channel ``j`` of ``group`` dead: zero the filters, biases and BatchNorm affine of every producer."""
    with torch.no_grad():
        for s in group.channels[j]:
            m = model.get_submodule(s.module)
            if s.role != "out" or isinstance(m, ChannelMapShortcut) or not hasattr(m, "weight"):
                continue
            m.weight[s.index] = 0
            if m.bias is not None:
                m.bias[s.index] = 0


def keep_all_but(graph, dead):
    """Keep masks that remove channel ``j`` of group ``name`` for every ``(name, j)`` in ``dead``."""
    keep = {g.name: torch.ones(g.size, dtype=torch.bool) for g in graph.prunable_groups}
    for name, j in dead:
        keep[name][j] = False
    return keep


def prune_dead(model, x, dead):
    """Kill the channels ``dead``, prune exactly them, and check the outputs do not change."""
    graph = analyze_channels(model, x)
    for name, j in dead:
        kill(model, graph.group(name), j)
    with torch.no_grad():
        expected = model(x)
    record = channel_record(graph, keep_all_but(graph, dead))
    pruned = apply_channel_record_(copy.deepcopy(model), record)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), expected, rtol=1e-5, atol=1e-5)
    return pruned, record


class TwoLayer(nn.Module):
    def __init__(self, bn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


class CatFlatten(nn.Module):
    """Two branches concatenated on channels, flattened into a Linear head with a hidden layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(1, 3, 1, bias=False)
        self.fc1 = nn.Linear(7 * 4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):  # x: (N, 1, 2, 2)
        y = torch.cat([torch.relu(self.bn_a(self.a(x))), self.b(x)], dim=1)
        return self.fc2(torch.relu(self.fc1(torch.flatten(y, 1))))


# importance and selection ---------------------------------------------------------------------------------


def test_l1_keeps_the_filters_of_largest_norm():
    model = TwoLayer()
    with torch.no_grad():
        model.conv1.weight.copy_(torch.tensor([3.0, -1.0, -4.0, 2.0]).view(4, 1, 1, 1))
    x = torch.randn(1, 1, 3, 3)
    pruned, result = prune_channels(model, x, ratio=0.5)
    assert result.record["layers"] == {"conv1": {"out": [0, 2]}, "conv2": {"in": [0, 2]}}
    assert pruned.conv1.weight.flatten().tolist() == [3.0, -4.0]
    assert result.layers["conv1"] == (4, 2, 1, 1) and result.layers["conv2"] == (2, 2, 4, 2)


def test_bn_scale_keeps_the_channels_of_largest_gamma():
    model = TwoLayer(bn=True)
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.1, -2.0, 0.5, 1.0]))
    _, result = prune_channels(model, torch.randn(1, 1, 3, 3), ratio=0.5, criterion="bn-scale")
    assert result.record["layers"]["bn"] == {"out": [1, 3]}


def test_activation_keeps_the_channels_of_largest_feature_maps():
    model = TwoLayer()
    model.conv1 = nn.Conv2d(1, 4, 1)
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.bias.copy_(torch.tensor([0.5, 5.0, 0.1, 3.0]))
    calib = [(torch.randn(2, 1, 3, 3), torch.tensor([0, 1])) for _ in range(2)]
    _, result = prune_channels(model, torch.randn(1, 1, 3, 3), ratio=0.5, criterion="activation", calib_data=calib)
    assert result.record["layers"]["conv1"] == {"out": [1, 3]}
    # L1 sees four equal (zero) filters: the same budget keeps others
    _, by_l1 = prune_channels(model, torch.randn(1, 1, 3, 3), ratio=0.5)
    assert by_l1.record["layers"]["conv1"] != {"out": [1, 3]}


def test_importance_sums_over_coupled_producers_and_normalizes_to_mean_one():
    model = create_model("resnet20")
    graph = analyze_channels(model, X28)
    raw = channel_importance(model, graph, "l1")
    producers = ["conv1", *(f"layer1.{i}.conv2" for i in range(3))]
    norms = sum(model.get_submodule(p).weight.abs().flatten(1).sum(1) for p in producers)
    torch.testing.assert_close(raw["conv1"], norms.double())
    normed = normalize_importance(raw)
    assert all(abs(float(s.mean()) - 1) < 1e-9 for s in normed.values())
    with pytest.raises(ValueError, match="unknown pruning criterion 'l2'"):
        channel_importance(model, graph, "l2")


def test_a_callable_criterion_is_used():
    model = TwoLayer()

    def last_first(model, graph, batches):
        return {g.name: torch.arange(g.size, dtype=torch.float64) for g in graph.prunable_groups}

    _, result = prune_channels(model, torch.randn(1, 1, 3, 3), ratio=0.5, criterion=last_first)
    assert result.record["layers"]["conv1"] == {"out": [2, 3]} and result.criterion == "last_first"


@pytest.mark.parametrize("name", ["vgg", "resnet20", "mobilenet_v2"])
def test_macs_target_is_met_closely_and_the_json_record_rebuilds_the_model(name):
    model = create_model(name).eval()
    pruned, result = prune_channels(model, X28, target="macs=0.5")
    assert 0.48 <= result.macs_ratio <= 0.5  # result.after is profiled on the pruned model
    record = json.loads(json.dumps(result.record))
    fresh = apply_channel_record_(create_model(name).eval(), record)
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(X28), pruned(X28), rtol=0, atol=0)
    json.dumps(result.to_dict())


def test_params_target_and_round_to_keep_multiples_of_eight():
    model = create_model("vgg").eval()
    pruned, result = prune_channels(model, X28, target="params=0.4", round_to=8)
    assert 0.38 <= result.params_ratio <= 0.4
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.out_channels % 8 == 0 for m in convs)
    assert any(m.out_channels < 64 for m in convs)


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(1, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 16, 3)

    def forward(self, x):  # x: (N, 1, 8, 8)
        return self.fc(self.bn(self.dw(self.expand(x))).flatten(1))


@pytest.mark.parametrize("name", ["resnet20", "depthwise"])
def test_cost_model_is_exact_for_conv_linear_batchnorm(name):
    model = create_model(name).eval() if name != "depthwise" else Depthwise().eval()
    x = X28 if name != "depthwise" else torch.randn(2, 1, 8, 8)
    graph = analyze_channels(model, x)
    report = profile(model, x)
    cost = CostModel.build(graph, report)
    assert cost({}) == (report.total_macs, report.total_params)
    keep = keep_all_but(graph, [(g.name, 0) for g in graph.prunable_groups])
    pruned = apply_channel_record_(copy.deepcopy(model), channel_record(graph, keep))
    after = profile(pruned, x)
    assert cost(keep) == (after.total_macs, after.total_params)


def test_uniform_ratio_halves_every_group():
    model = create_model("vgg").eval()
    pruned, result = prune_channels(model, X28, ratio=0.5)
    widths = [m.out_channels for m in pruned.features if isinstance(m, nn.Conv2d)]
    assert widths == [32, 32, 64, 64, 128, 128, 128, 128]
    assert pruned.classifier[0].out_features == 256 and pruned.classifier[3].out_features == 10
    assert result.target is None


def test_ratio_by_layer_name_pattern_and_default():
    model = create_model("resnet20").eval()
    pruned, _ = prune_channels(model, X28, ratio={"conv1": 0.5, "re:layer2\\..\\.conv1": 0.25, "_default": 0.0})
    assert pruned.conv1.out_channels == 8 and pruned.layer1[2].conv2.out_channels == 8
    assert [pruned.layer2[i].conv1.out_channels for i in range(3)] == [24, 24, 24]
    assert pruned.layer3[0].conv1.out_channels == 64
    with pytest.raises(ValueError, match="Did you mean 'conv1'"):
        prune_channels(model, X28, ratio={"conv11": 0.5})
    with pytest.raises(ValueError, match="'fc' of CifarResNet cannot be pruned"):
        prune_channels(model, X28, ratio={"fc": 0.5})
    with pytest.raises(ValueError, match="different ratios"):
        prune_channels(model, X28, ratio={"conv1": 0.5, "layer1.0.conv2": 0.25})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one of target"),
        ({"target": "macs=0.5", "ratio": 0.5}, "exactly one of target"),
        ({"target": "flops=0.5"}, "target must look like"),
        ({"target": "macs=1.5"}, "target must look like"),
        ({"target": "macs=0.001"}, "out of reach"),
        ({"ratio": 1.0}, "must be in \\[0, 1\\)"),
        ({"ratio": 0.5, "round_to": 0}, "round_to must be a positive int"),
        ({"ratio": 0.5, "criterion": "taylor"}, "unknown pruning criterion"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune_channels(TwoLayer(), torch.randn(1, 1, 3, 3), **kwargs)


def test_parse_target():
    assert parse_target("macs=0.5") == ("macs", 0.5) and parse_target("params=1") == ("params", 1.0)


# surgery: pruning dead channels changes nothing ------------------------------------------------------------


def test_dead_channels_of_a_cat_and_flatten_net_prune_to_the_same_outputs():
    model = randomize_batchnorms(CatFlatten())
    x = torch.randn(3, 1, 2, 2)
    pruned, record = prune_dead(model, x, [("a", 1), ("b", 0), ("fc1", 4)])
    assert record["layers"]["fc1"] == {"out": [0, 1, 2, 3, 5], "in": [0, 1, 2, 3, *range(8, 16), *range(20, 28)]}
    assert record["layers"]["bn_a"] == {"out": [0, 2, 3]}
    assert pruned.fc1.in_features == 20 and pruned.bn_a.num_features == 3


class Sequence1d(nn.Module):
    """Conv1d + BatchNorm1d, flattened into Linear -> BatchNorm1d -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 5, 3, padding=1, padding_mode="circular")
        self.bn = nn.BatchNorm1d(5)
        self.fc1 = nn.Linear(5 * 4, 6)
        self.bn1 = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x):  # x: (N, 2, 4)
        y = torch.relu(self.bn(self.conv(x))).view(x.shape[0], -1)
        return self.fc2(torch.relu(self.bn1(self.fc1(y))))


def test_dead_channels_of_a_conv1d_and_linear_net_prune_to_the_same_outputs():
    model = randomize_batchnorms(Sequence1d())
    pruned, record = prune_dead(model, torch.randn(3, 2, 4), [("conv", 2), ("fc1", 0), ("fc1", 5)])
    assert record["layers"]["fc1"] == {"out": [1, 2, 3, 4], "in": [*range(8), *range(12, 20)]}
    assert record["layers"]["bn1"] == {"out": [1, 2, 3, 4]}
    assert type(pruned.conv) is nn.Conv1d and pruned.conv.padding_mode == "circular"


def test_dead_channels_of_vgg_prune_to_the_same_outputs():
    model = randomize_batchnorms(create_model("vgg"))
    graph = analyze_channels(model, X28)
    pruned, _ = prune_dead(model, X28, [(g.name, 5) for g in graph.prunable_groups])
    assert type(pruned.features[0]) is nn.Conv2d and pruned.features[0].out_channels == 63


def test_dead_channels_of_resnet20_prune_to_the_same_outputs_through_the_pad_shortcuts():
    model = randomize_batchnorms(create_model("resnet20"))
    graph = analyze_channels(model, X28)
    # channel 0 of every group: in stage 2 and 3 a zero-padded channel of the shortcut; stage 1's channel 3
    # feeds stage 2's channel 11 through the shortcut, which must then carry nothing there
    dead = [(g.name, 0) for g in graph.prunable_groups] + [("conv1", 3)]
    pruned, record = prune_dead(model, X28, dead)
    shortcut = record["shortcuts"]["layer2.0.shortcut"]
    assert shortcut["out_channels"] == 31 and shortcut["stride"] == 2
    kept_src = [i for i in range(16) if i not in (0, 3)]
    assert shortcut["src_index"] == list(range(14))
    assert shortcut["dst_index"] == [7 + c for c in kept_src]  # channel c -> 8 + c, minus the removed 0
    assert isinstance(pruned.layer2[0].shortcut, ChannelMapShortcut)
    assert pruned.fc.in_features == 63


def test_dead_channels_of_mobilenet_prune_to_the_same_outputs_through_depthwise_and_residuals():
    model = randomize_batchnorms(create_model("mobilenet_v2"))
    graph = analyze_channels(model, X28)
    pruned, _ = prune_dead(model, X28, [(g.name, 1) for g in graph.prunable_groups])
    dw = pruned.features[2].conv[1][0]
    assert dw.groups == dw.in_channels == dw.out_channels == 47


def test_shrink_conv_copies_every_attribute_and_computes_the_kept_slice():
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), padding_mode="reflect")
    conv = conv.double()
    out_idx, in_idx = torch.tensor([0, 3, 5]), torch.tensor([1, 2])
    small = shrink_conv(conv, out_idx, in_idx)
    for attr in ("kernel_size", "stride", "padding", "dilation", "padding_mode", "groups"):
        assert getattr(small, attr) == getattr(conv, attr)
    assert small.weight.dtype == torch.float64 and small.bias is not None
    x = torch.randn(1, 4, 7, 7, dtype=torch.float64)
    x[:, [0, 3]] = 0
    torch.testing.assert_close(small(x[:, in_idx]), conv(x)[:, out_idx])


# the record ------------------------------------------------------------------------------------------------


def test_a_pruned_model_prunes_again_and_both_records_replay():
    model = create_model("resnet20").eval()
    once, first = prune_channels(model, X28, target="macs=0.7")
    twice, second = prune_channels(once, X28, target="macs=0.7")
    assert second.before == first.after and second.after.macs <= 0.7 * first.after.macs
    fresh = apply_channel_record_(apply_channel_record_(create_model("resnet20").eval(), first.record), second.record)
    fresh.load_state_dict(twice.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(X28), twice(X28), rtol=0, atol=0)


def test_caller_model_is_untouched_unless_inplace():
    model = create_model("resnet20").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, _ = prune_channels(model, X28, ratio=0.25)
    assert pruned is not model and pruned.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.conv1.out_channels == 16 and type(model.layer2[0].shortcut).__name__ == "PadShortcut"
    same, _ = prune_channels(model, X28, ratio=0.25, inplace=True)
    assert same is model and model.conv1.out_channels == 12


@pytest.mark.parametrize(
    "record, match",
    [
        ({"layers": {}, "shortcuts": {}}, "not a channel record"),
        ({"layers": {"features.0": {"out": [3, 1]}}}, "increasing list"),
        ({"layers": {"features.0": {"out": [0, 64]}}}, "increasing list"),
        ({"layers": {"features.2": {"out": [0]}}}, "only Conv1d/2d/3d, Linear"),
        ({"layers": {"features.1": {"in": [0]}}}, "takes 'out' only"),
        ({"layers": {"features.00": {"out": [0]}}}, "Did you mean"),
        ({"shortcuts": {"features.0": {"stride": 1}}}, "not a PadShortcut"),
    ],
)
def test_bad_records_are_refused_with_the_layer_named(record, match):
    base = {"format": "factorch.prune.channels", "version": 1, "layers": {}, "shortcuts": {}}
    if "layers" in record and "shortcuts" in record:
        base = record
    else:
        base.update(record)
    with pytest.raises(ValueError, match=match):
        apply_channel_record_(create_model("vgg"), base)
