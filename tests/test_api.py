import json

import pytest
import torch
from torch import nn

import factorch
from factorch.config import config_for_method
from factorch.layers import FactorizedLayer, Tucker2Conv
from factorch.surgery import factorized_layers


class Net(nn.Module):
    """A small network with every kind of layer the engine meets."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4, padding_mode="reflect")
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 48, 1)
        self.seq = nn.Conv1d(48, 48, 3, padding="same")
        self.hidden = nn.Linear(48, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.pw(self.dw(torch.relu(self.grouped(x))))
        x = self.seq(x.flatten(2)).mean(-1)
        return self.head(torch.relu(self.hidden(x)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = Net().eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


X = torch.randn(2, 3, 12, 12)

CONFIGS = [
    factorch.SVDConfig(rank=0.5),
    factorch.SpatialSVDConfig(rank=0.5),
    factorch.Tucker2Config(rank=0.5),
    factorch.CPConfig(rank=8, form="4", n_iter_max=20),
    factorch.CPConfig(rank=8, form="3", n_iter_max=20),
    factorch.Tucker2Config(rank="vbmf", fold_bn=True),
    factorch.SVDConfig(rank="energy:0.9"),
]


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{type(c).__name__}-{c.rank}")
def test_compress_save_load_round_trip(net, config, tmp_path):
    before = state(net)
    model2, report = factorch.compress(net, config, example_inputs=X)
    for k, v in net.state_dict().items():  # the input model is never modified
        assert torch.equal(v, before[k]), k
    assert any(isinstance(m, FactorizedLayer) for m in model2.modules())
    d = report.to_dict()
    json.dumps(d)
    row_keys = {
        "name",
        "method",
        "ranks",
        "params_before",
        "params_after",
        "macs_before",
        "macs_after",
        "rel_error",
        "skipped",
    }
    assert row_keys <= set(d["layers"][0])
    assert d["totals"]["params_after"] < d["totals"]["params_before"]
    assert d["totals"]["macs_ratio"] < 1
    rows = {r["name"]: r for r in d["layers"]}
    assert "kept dense" in rows["stem"]["skipped"] and "kept dense" in rows["head"]["skipped"]
    factorch.save(model2, tmp_path)
    loaded = factorch.load(tmp_path, base_model=Net())
    for (k, a), (k2, b) in zip(model2.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    with torch.no_grad():
        assert torch.equal(model2.eval()(X), loaded(X))
    # the weights file is an ordinary state dict, readable without unpickling code
    assert isinstance(torch.load(tmp_path / "weights.pt", weights_only=True), dict)


def test_full_rank_plan_reproduces_the_model(net):
    plan = factorch.Plan(
        {
            "_default": factorch.Tucker2Config(rank=1.0, allow_larger=True),
            "re:hidden|head": factorch.SVDConfig(rank=1.0, allow_larger=True),
            "stem": factorch.SVDConfig(rank=1.0, allow_larger=True),
        }
    )
    net = net.double()
    model2, report = factorch.compress(net, plan, example_inputs=X.double())
    names = {r.name: r for r in report.layers}
    assert names["stem"].method == "svd"  # named exactly: compressed although it is the first conv
    assert names["hidden"].method == "svd" and names["grouped"].method == "tucker2"
    assert "depthwise" in names["dw"].skipped
    with torch.no_grad():
        ref, out = net(X.double()), model2(X.double())
    assert float((out - ref).norm() / ref.norm()) < 1e-10


def test_inplace_modifies_the_model(net):
    model2, _ = factorch.compress(net, factorch.SVDConfig(rank=0.5), example_inputs=X, inplace=True)
    assert model2 is net and any(isinstance(m, FactorizedLayer) for m in net.modules())


def test_fold_bn_keeps_the_function(net):
    model2, _ = factorch.compress(
        net, factorch.Tucker2Config(rank=1.0, fold_bn=True, allow_larger=True), example_inputs=X
    )
    assert isinstance(model2.bn2, nn.Identity) and model2.conv2.last.bias is not None
    with torch.no_grad():
        assert float((model2(X) - net(X)).norm() / net(X).norm()) < 1e-5


def test_plan_resolution_order():
    plan = factorch.Plan(
        {
            "a.b": factorch.CPConfig(rank=2),
            "re:a\\..*": factorch.SVDConfig(rank=1),
            "re:.*": None,
            "_default": factorch.Tucker2Config(),
        }
    )
    assert plan.resolve("a.b")[0].method == "cp"
    assert plan.resolve("a.c")[0].method == "svd"
    assert plan.resolve("z") == (None, "re:.*")
    assert factorch.Plan({}).resolve("x") == (None, None)


def test_plan_naming_a_missing_layer(net):
    with pytest.raises(ValueError, match="no layer named 'conv3'.*Did you mean 'conv2'"):
        factorch.compress(net, factorch.Plan({"conv3": factorch.SVDConfig(rank=2)}))
    with pytest.raises(ValueError, match="matches no compressible layer"):
        factorch.compress(net, factorch.Plan({"re:nothing.*": factorch.SVDConfig(rank=2)}))


@pytest.mark.parametrize("rank,match", [(0, ">= 1"), (-3, ">= 1"), (1.5, r"\(0, 1\]"), ("fast", "cannot read")])
def test_bad_rank_values(rank, match):
    with pytest.raises(ValueError, match=match):
        factorch.SVDConfig(rank=rank)


def test_rank_above_maximum_names_the_layer(net):
    with pytest.raises(ValueError, match=r"layer 'conv2'.*above the maximum"):
        factorch.compress(net, factorch.Plan({"conv2": factorch.Tucker2Config(rank=(64, 64))}))


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'qr'"):
        config_for_method("qr", rank=2)


def test_layer_type_a_method_cannot_handle_is_skipped_with_reason(net):
    plan = factorch.Plan({"hidden": factorch.SpatialSVDConfig(rank=1), "seq": factorch.SpatialSVDConfig(rank=1)})
    _, report = factorch.compress(net, plan)
    rows = {r.name: r for r in report.layers}
    assert "does not handle Linear" in rows["hidden"].skipped
    assert "2-D" in rows["seq"].skipped


def test_layers_that_would_not_shrink_are_skipped(net):
    _, report = factorch.compress(net, factorch.Tucker2Config(rank=1.0), example_inputs=X)
    rows = {r.name: r for r in report.layers}
    assert "would not be smaller" in rows["conv2"].skipped


def test_registry_model_loads_without_base(tmp_path):
    model = factorch.models.create_model("lenet5")
    model2, _ = factorch.compress(model, factorch.Plan({"classifier.1": factorch.SVDConfig(rank=8)}))
    factorch.save(model2, tmp_path)
    loaded = factorch.load(tmp_path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model2.eval()(x), loaded(x))


def test_config_json_round_trip():
    for cfg in CONFIGS:
        again = factorch.MethodConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg or again.to_dict() == cfg.to_dict()
    plan = factorch.Plan({"a": factorch.CPConfig(rank=3, form="3"), "_default": None})
    assert factorch.Plan.from_dict(json.loads(json.dumps(plan.to_dict()))).to_dict() == plan.to_dict()


class TextNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(120, 64)
        self.proj = nn.Linear(64, 512)
        self.out = nn.Linear(512, 5)

    def forward(self, idx):
        return self.out(torch.relu(self.proj(self.emb(idx)))).mean(1)


def test_tt_compress_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = TextNet().eval()
    idx = torch.randint(0, 120, (3, 7))
    plan = factorch.Plan({"emb": factorch.TTConfig(rank=4, n_cores=2), "proj": factorch.TTConfig(rank=3)})
    model2, report = factorch.compress(model, plan, example_inputs=idx)
    rows = {r.name: r for r in report.layers}
    assert rows["emb"].method == "tt" and rows["proj"].method == "tt"
    assert rows["proj"].macs_after < rows["proj"].macs_before
    factorch.save(model2, tmp_path)
    loaded = factorch.load(tmp_path, base_model=TextNet())
    with torch.no_grad():
        assert torch.equal(model2(idx), loaded(idx))


def test_already_factorized_layers_are_reported_and_never_factorized_inside(net, tmp_path):
    once, _ = factorch.compress(net, factorch.Tucker2Config(rank=0.5), example_inputs=X)
    factorized = dict(factorized_layers(once))
    assert set(factorized) == {"conv2", "grouped", "seq"}  # pw (1x1) would not shrink
    before = state(once)
    twice, report = factorch.compress(once, factorch.SVDConfig(rank=0.5, fold_bn=True), example_inputs=X)
    rows = {r.name: r for r in report.layers}
    for name in factorized:
        assert rows[name].skipped.startswith("already factorized (tucker2 at ranks")
        assert (
            rows[name].params_after == rows[name].params_before == sum(p.numel() for p in factorized[name].parameters())
        )
        assert type(twice.get_submodule(name)) is Tucker2Conv
        assert all(type(m) in (nn.Conv1d, nn.Conv2d) for m in twice.get_submodule(name).children())
    inside = tuple(n + "." for n in factorized)
    assert not any(r.name.startswith(inside) for r in report.layers)  # the stages are not candidates
    assert rows["hidden"].method == "svd"  # the dense layers are compressed as usual
    assert all(torch.equal(v, before[k]) for k, v in once.state_dict().items())
    with pytest.raises(ValueError, match="'conv2.core', a stage inside the factorized layer 'conv2'"):
        factorch.compress(once, factorch.Plan({"conv2.core": factorch.SVDConfig(rank=2)}), example_inputs=X)
    # BatchNorm folding is recorded on top of what the model had (none here), and the model loads back
    assert [tuple(p) for p in twice._factorch_plan["folded_bn"]] == [("stem", "bn0")]  # bn2 follows a factorized conv
    factorch.save(twice, tmp_path)
    loaded = factorch.load(tmp_path, base_model=Net())
    with torch.no_grad():
        assert torch.equal(twice.eval()(X), loaded(X))
