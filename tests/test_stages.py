"""Multi-stage compression: geometric stage targets, recompression of factorized layers, fine-tuning between
stages, the accuracy tolerance, checkpoints and exact resumption."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import factorch
from factorch.layers import FactorizedLayer, Tucker2Conv
from factorch.surgery import factorized_layers

X = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long())


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip


def loader():
    return DataLoader(data(), batch_size=16)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def macs(model):
    return factorch.profile(model, X).total_macs


def run(model, config, **kw):
    kw = {"stages": 2, "train_data": loader(), "example_inputs": X, "show_progress": False, "lr": 0.05, **kw}
    return factorch.compress_in_stages(model, config, **kw)


def test_two_stages_meet_the_target_and_leave_the_input_untouched():
    model = net()
    before = state(model)
    out, report = run(model, factorch.Tucker2Config(), target="macs=0.4")
    assert [s["target_fraction"] for s in report.stages] == pytest.approx([0.4**0.5, 0.4])
    assert [s["status"] for s in report.stages] == ["accepted", "accepted"]
    for s in report.stages:
        assert s["macs_ratio"] <= s["target_fraction"] and len(s["finetune"]) == 1
    assert report.totals["macs_ratio"] <= 0.4
    assert report.totals["macs_ratio"] == pytest.approx(macs(out) / macs(model))
    assert report.stages[-1]["macs_ratio"] == report.totals["macs_ratio"]
    first, second = (s["ranks"] for s in report.stages)
    assert set(first) == set(second) == {"2", "4"}  # the first conv and the classifier stay dense
    assert all(b <= a for n in first for a, b in zip(first[n], second[n]))
    assert any(first[n] != second[n] for n in first)  # the factorized layers were shrunk further
    # recompressed as units: one Tucker-2 layer each, no factorized stage inside a factorized layer
    assert [type(out[i]) for i in (2, 4)] == [Tucker2Conv, Tucker2Conv]
    assert all(type(m) is nn.Conv2d for i in (2, 4) for m in out[i].children())
    assert not any(isinstance(m, FactorizedLayer) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert json.loads(json.dumps(report.to_dict()))["stages"][1]["stage"] == 2


def test_resume_after_the_first_stage_gives_the_same_weights(tmp_path):
    model = net()
    config = factorch.SVDConfig(rank="macs:0.3")  # per-layer ratios 0.548, then 0.3
    full, full_report = run(model, config, checkpoint_dir=tmp_path / "a")

    def interrupt(stage, record):
        if stage == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(model, config, checkpoint_dir=tmp_path / "b", on_stage_end=interrupt)
    assert json.loads((tmp_path / "b" / "stages.json").read_text())["accepted"] == 1
    with pytest.raises(ValueError, match="already holds a staged run"):
        run(model, config, checkpoint_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="other settings.*finetune_epochs"):
        run(model, config, checkpoint_dir=tmp_path / "b", resume=True, finetune_epochs=2)
    resumed, report = run(model, config, checkpoint_dir=tmp_path / "b", resume=True)
    assert full.state_dict().keys() == resumed.state_dict().keys()
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert [s["ranks"] for s in report.stages] == [s["ranks"] for s in full_report.stages]
    assert report.stages[0]["target"] == "macs:0.5477 per layer" and report.stages[1]["target"] == "macs:0.3 per layer"
    # each stage's checkpoint rebuilds the factorized structure exactly
    loaded = factorch.load(tmp_path / "a" / "stage-2", base_model=net())
    assert torch.equal(loaded(X), full(X))
    # a finished run resumes to its result at once
    again, _ = run(model, config, checkpoint_dir=tmp_path / "a", resume=True)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in full.state_dict().items())


def test_a_stage_past_the_accuracy_tolerance_is_rejected():
    model = net()
    total = macs(model)

    def score(m):  # a stand-in for accuracy: the share of the MACs left, in %
        return 100.0 * macs(m) / total

    out, report = run(
        model, factorch.SVDConfig(rank="macs:0.2"), finetune_epochs=0, eval_fn=score, max_accuracy_drop=70
    )
    first, second = report.stages
    assert first["status"] == "accepted" and first["accuracy_drop"] <= 70
    assert second["status"].startswith("rejected") and second["accuracy_drop"] > 70
    assert report.totals["stopped"] == second["status"] and report.totals["stage_accepted"] == 1
    assert macs(out) / total == pytest.approx(first["macs_ratio"])
    assert report.totals["score_after"] == pytest.approx(first["score_compressed"])

    # when even the first stage is too much, the original model comes back
    out, report = run(model, factorch.SVDConfig(rank="macs:0.2"), finetune_epochs=0, eval_fn=score,
                      max_accuracy_drop=1)  # fmt: skip
    assert report.stages[0]["status"].startswith("rejected") and len(report.stages) == 1
    assert report.totals["macs_ratio"] == 1.0 and not list(factorized_layers(out))
    assert torch.equal(out(X), model(X))


def test_vbmf_is_applied_again_to_the_factorized_layers():
    out, report = run(net(), factorch.Tucker2Config(rank="vbmf:0.6"), stages=3, finetune_epochs=1)
    ranks = [s["ranks"] for s in report.stages if s["status"] == "accepted"]
    assert len(ranks) >= 2  # VBMF of the fine-tuned cores shrinks them further, weakened toward their ranks
    for a, b in zip(ranks, ranks[1:]):
        assert all(y <= x for n in a for x, y in zip(a[n], b[n])) and a != b
    if report.stages[-1]["status"].startswith("converged"):
        assert {n: list(m.ranks) for n, m in factorized_layers(out)} == ranks[-1]


def test_autoconfig_in_two_stages():
    config = factorch.AutoConfig(
        "macs=0.5", methods=("tucker2", "svd"), levels=(0.2, 0.4, 0.6), refine=0, measure=False,
        calib_samples=16, progress=False,
    )  # fmt: skip
    out, report = run(net(), config)
    assert len(report.stages) == 2 and report.totals["macs_ratio"] <= 0.5
    assert report.stages[0]["macs_ratio"] <= 0.5**0.5 + 1e-9
    assert report.stages[0]["target"] == "macs=0.7071"
    assert all(not isinstance(m, FactorizedLayer) for _, f in factorized_layers(out) for m in f.modules() if m is not f)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"stages": 0}, "stages must be an int >= 1, got 0"),
        ({"stages": 2.0}, "stages must be an int >= 1"),
        ({"finetune_epochs": -1}, "finetune_epochs must be an int >= 0, got -1"),
        ({"train_data": None}, "train_data is needed"),
        ({"max_accuracy_drop": 1.0}, "max_accuracy_drop needs eval_fn"),
        ({"max_accuracy_drop": -1.0, "eval_fn": lambda m: 0.0}, "max_accuracy_drop must be a number >= 0"),
        ({"target": "latency=0.5"}, "'macs=F' or 'params=F'"),
        ({"target": "macs"}, "'macs=F' or 'params=F'"),
        ({"resume": True}, "resume=True needs checkpoint_dir"),
        ({"example_inputs": None}, "example_inputs is needed"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(net(), factorch.SVDConfig(rank=0.5), **kwargs)


def test_bad_autoconfig_arguments():
    with pytest.raises(ValueError, match="has no fraction"):
        run(net(), factorch.AutoConfig("macs", max_accuracy_drop=1.0))
    with pytest.raises(ValueError, match="carries its own target"):
        run(net(), factorch.AutoConfig("macs=0.5"), target="macs=0.5")
