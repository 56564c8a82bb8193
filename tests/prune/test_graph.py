"""Channel dependency analysis: groups, couplings and the reasons a channel cannot be pruned."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from factorch.models import create_model
from factorch.models.resnet import PadShortcut
from factorch.prune.graph import ChannelMapShortcut, ChannelTraceError, Slice, analyze_channels, channel_map_of

X28 = torch.randn(1, 1, 28, 28)


def slices(group, role=None):
    """{(module, role): [indices in channel order]} of a group (one index per channel, first slice)."""
    out = {}
    for channel in group.channels:
        for s in channel:
            if role is None or s.role == role:
                out.setdefault((s.module, s.role), []).append(s.index)
    return out


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1)
        self.b = nn.Conv2d(1, 3, 1)
        self.c = nn.Conv2d(7, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), F.relu(self.b(x))], dim=1))


class FlattenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.fc1 = nn.Linear(12, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x):  # x: (N, 1, 2, 2)
        return self.fc2(torch.relu(self.fc1(self.bn(self.conv(x)).flatten(1))))


class AddNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.a(x) + self.b(x))


def test_cat_on_channels_gives_each_branch_its_offsets():
    graph = analyze_channels(CatNet(), torch.randn(1, 1, 4, 4))
    a, b = graph.group("a"), graph.group("b")
    assert slices(a)[("c", "in")] == [0, 1, 2, 3]
    assert slices(b)[("c", "in")] == [4, 5, 6]
    assert slices(b)[("b", "out")] == [0, 1, 2]
    assert graph.unprunable == {"a:in": ("network input 'x'",), "c": ("network output",)}


def test_flatten_maps_a_channel_to_its_consecutive_features_and_linear_to_neurons():
    graph = analyze_channels(FlattenNet(), torch.randn(2, 1, 2, 2))
    conv = graph.group("conv")
    assert [sorted(s.index for s in ch if s.module == "fc1") for ch in conv.channels] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
    ]
    assert ("bn", "out") in conv.layers
    assert slices(graph.group("fc1")) == {("fc1", "out"): [0, 1, 2, 3, 4], ("fc2", "in"): [0, 1, 2, 3, 4]}
    assert not graph.group("fc2").prunable


def test_residual_add_couples_both_producers():
    graph = analyze_channels(AddNet(), torch.randn(1, 1, 5, 5))
    (group,) = graph.prunable_groups
    assert set(group.layers) == {("a", "out"), ("b", "out"), ("head", "in")}
    assert all(len({s.index for s in ch}) == 1 for ch in group.channels)  # channel i of a is channel i of b


def test_vgg_groups_one_per_conv_and_hidden_linear():
    graph = analyze_channels(create_model("vgg"), X28)
    assert [(g.name, g.size) for g in graph.prunable_groups] == [
        ("features.0", 64),
        ("features.4", 64),
        ("features.7", 128),
        ("features.11", 128),
        ("features.14", 256),
        ("features.17", 256),
        ("features.21", 256),
        ("features.24", 256),
        ("classifier.0", 512),
    ]
    assert set(graph.group("features.24").layers) == {
        ("features.24", "out"),
        ("features.25", "out"),
        ("classifier.0", "in"),
    }
    assert graph.unprunable["classifier.3"] == ("network output",)


def test_resnet20_pad_shortcut_is_a_channel_map_not_a_coupling():
    graph = analyze_channels(create_model("resnet20"), X28)
    assert [g.size for g in graph.prunable_groups if "shortcut" in str(g.layers)] == [16, 32, 64]
    stage1, stage2 = graph.group("conv1"), graph.group("layer2.0.conv2")
    assert {m for m, r in stage1.layers if r == "out"} == {
        "conv1",
        "bn1",
        *(f"layer1.{i}.{n}" for i in range(3) for n in ("conv2", "bn2")),
    }
    assert ("layer2.0.shortcut", "in") in stage1.layers and ("layer2.0.shortcut", "out") in stage2.layers
    assert graph.channel_maps["layer2.0.shortcut"].dst == tuple(range(8, 24))
    assert graph.channel_maps["layer3.0.shortcut"].src == tuple(range(32))
    assert set(graph.unprunable) == {"conv1:in", "fc"}


def test_mobilenet_depthwise_conv_couples_its_input_and_output_channel():
    graph = analyze_channels(create_model("mobilenet_v2"), X28)
    expand = graph.group("features.2.conv.0.0")
    assert set(expand.layers) >= {("features.2.conv.1.0", "in"), ("features.2.conv.1.0", "out")}
    for channel in expand.channels:
        assert len({s.index for s in channel}) == 1
    assert graph.layers["features.2.conv.1.0"].kind == "depthwise"
    # the residual stream of the 24-channel stage spans both blocks' projections and the next block's input
    stream = graph.group("features.2.conv.2.0")
    assert {("features.3.conv.2.0", "out"), ("features.3.conv.0.0", "in"), ("features.4.conv.0.0", "in")} <= set(
        stream.layers
    )


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1)
        self.g = nn.Conv2d(4, 4, 1, groups=2)
        self.h = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.h(self.g(self.a(x)))


def test_general_grouped_conv_makes_its_channels_unprunable():
    graph = analyze_channels(Grouped(), torch.randn(1, 1, 3, 3))
    assert not graph.group("a").prunable and "groups=2" in graph.group("a").reasons[0]
    assert not graph.prunable_groups


class Unknown(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.a, self.b, self.c, self.op = nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1), op

    def forward(self, x):
        y = self.b(self.a(x))
        if self.op == "softmax":
            y = y.softmax(1)
        elif self.op == "pad":
            y = F.pad(y, (0, 0, 0, 0, 1, 1))[:, 1:5]
        elif self.op == "shuffle":
            y = y.view(y.shape[0], 2, 2, 3, 3).transpose(1, 2).reshape(y.shape[0], 4, 3, 3)
        elif self.op == "param":
            y = y * self.scale
        return self.c(y)


@pytest.mark.parametrize("op", ["softmax", "pad", "shuffle", "param"])
def test_an_operation_the_analysis_does_not_know_blocks_the_channels_it_touches(op):
    model = Unknown(op)
    model.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
    graph = analyze_channels(model, torch.randn(1, 1, 3, 3))
    assert graph.group("a").prunable  # a -> b is untouched
    assert not graph.group("b").prunable
    assert graph.group("b").reasons
    assert all(g.name.startswith("a") or not g.prunable for g in graph.groups)


def test_spatial_pad_slice_and_reduction_pass_channels_through():
    class Spatial(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Conv2d(1, 4, 1), nn.Linear(4, 2)

        def forward(self, x):
            y = F.pad(self.a(x), (1, 1, 1, 1))[:, :, ::2, 1:]
            return self.fc(y.mean((2, 3)))

    graph = analyze_channels(Spatial(), torch.randn(1, 1, 4, 4))
    assert graph.group("a").prunable and ("fc", "in") in graph.group("a").layers


def test_squeeze_excitation_gate_couples_gate_and_features():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc1, self.fc2, self.out = (
                nn.Conv2d(1, 4, 1),
                nn.Conv2d(4, 2, 1),
                nn.Conv2d(2, 4, 1),
                nn.Conv2d(4, 1, 1),
            )

        def forward(self, x):
            y = self.a(x)
            gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
            return self.out(y * gate)

    graph = analyze_channels(SE(), torch.randn(1, 1, 3, 3))
    assert {("a", "out"), ("fc2", "out"), ("fc1", "in"), ("out", "in")} == set(graph.group("a").layers)


def test_ignored_modules_stay_and_unknown_names_suggest_close_ones():
    model = create_model("vgg")
    graph = analyze_channels(model, X28, ignored=["features.4"])
    assert graph.group("features.4").reasons == ("'features.4' is ignored",)
    assert not graph.group("features.0").prunable  # features.4 reads its channels
    assert graph.group("features.7").prunable
    with pytest.raises(ValueError, match="Did you mean 'features.4'"):
        analyze_channels(model, X28, ignored=["features.44"])


def test_untraceable_model_raises_an_error_naming_it():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else x

    with pytest.raises(ChannelTraceError, match="Branchy"):
        analyze_channels(Branchy(), torch.randn(1, 1, 2, 2))


def test_analysis_leaves_training_flags_and_running_stats_alone():
    model = create_model("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze_channels(model, torch.randn(2, 1, 28, 28))
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_channel_map_shortcut_computes_the_pad_shortcut_and_describes_itself():
    pad = PadShortcut(4, 8, 2)
    cmap = ChannelMapShortcut.from_pad_shortcut(pad)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(cmap(x), pad(x), rtol=0, atol=0)
    assert cmap.to_dict() == {"stride": 2, "src_index": [0, 1, 2, 3], "dst_index": [2, 3, 4, 5], "out_channels": 8}
    assert channel_map_of(pad) == channel_map_of(cmap)._replace(in_channels=4)
    assert not cmap.state_dict()  # the maps are described by JSON, not weights
    part = ChannelMapShortcut(1, [2, 0], [0, 3], 4)
    out = part(x)
    torch.testing.assert_close(out[:, 0], x[:, 2])
    torch.testing.assert_close(out[:, 3], x[:, 0])
    assert not out[:, 1:3].any()
    torch.fx.symbolic_trace(nn.Sequential(part))  # plain fx can trace a pruned model too


@pytest.mark.parametrize(
    "args", [(0, [0], [0], 2), (1, [0, 1], [0], 2), (1, [0, 1], [1, 1], 2), (1, [0], [2], 2), (1, [-1], [0], 2)]
)
def test_channel_map_shortcut_rejects_bad_maps(args):
    with pytest.raises(ValueError, match="ChannelMapShortcut"):
        ChannelMapShortcut(*args)


def test_slices_are_named_tuples():
    assert Slice("a", "out", 3) == ("a", "out", 3)
