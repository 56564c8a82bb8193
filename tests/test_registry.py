"""One method registry: a method registered from outside the package works through Plan, config JSON,
AutoConfig, the CLI and save / load, with no other change."""

import json
import sys
import textwrap
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

import factorch
from factorch import registry
from factorch.cli import main
from factorch.layers import LowRankLinear


class ToyLinear(LowRankLinear):
    """A toy method: a low-rank Linear under another name (the plumbing, not the math, is under test)."""

    method = "toy"


@dataclass
class ToyConfig(factorch.FactorizationConfig):
    method: ClassVar[str] = "toy"


@pytest.fixture
def toy():
    factorch.register_method("toy", config=ToyConfig, layers={(nn.Linear,): ToyLinear})
    yield
    registry.unregister_method("toy")


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()


X = torch.randn(1, 16)


def test_registry_rejects_inconsistent_entries(toy):
    with pytest.raises(ValueError, match="already registered"):
        factorch.register_method("toy", config=ToyConfig, layers={(nn.Linear,): ToyLinear})
    with pytest.raises(ValueError, match="method must be 'other'"):
        factorch.register_method("other", config=ToyConfig, layers={(nn.Linear,): ToyLinear})
    with pytest.raises(ValueError, match="unknown method 'tucker'.*Did you mean 'tucker2'"):
        registry.get_method("tucker")


def test_toy_method_through_plan_json_and_load(toy, tmp_path):
    assert "toy" in factorch.list_methods()
    plan = factorch.Plan({"2": ToyConfig(rank=4)})
    out, report = factorch.compress(mlp(), plan, example_inputs=X)
    assert isinstance(out[2], ToyLinear) and out[2].ranks == (4,)
    assert report.layers[1].method == "toy"
    again = factorch.Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert isinstance(again.layers["2"], ToyConfig)
    factorch.save(out, tmp_path / "m")
    back = factorch.load(tmp_path / "m", base_model=mlp())
    assert isinstance(back[2], ToyLinear)
    torch.testing.assert_close(back(X), out(X))


def test_toy_method_through_autoconfig(toy):
    calib = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    cfg = factorch.AutoConfig("params=0.6", methods=["toy"], levels=(0.2, 0.5), measure=False, refine=0, polish=0,
                              progress=False, cache=False)  # fmt: skip
    out, report = factorch.compress(mlp(), cfg, example_inputs=X, calib_data=calib)
    assert isinstance(out[2], ToyLinear)
    assert report.totals["params_ratio"] <= 0.6


def test_unregistered_method_is_refused_by_autoconfig():
    with pytest.raises(ValueError, match="unknown method 'toy'"):
        factorch.AutoConfig("macs=0.5", methods=["toy"])


def test_toy_method_through_the_cli(toy, tmp_path, monkeypatch):
    (tmp_path / "toynet.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def make():
                torch.manual_seed(0)
                return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toynet", None)
    out = tmp_path / "out"
    code = main(["compress", "toynet:make", "--method", "toy", "--rank", "4", "--input-shape", "1,16",
                 "--no-eval", "--out", str(out)])  # fmt: skip
    assert code == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["layers"]["2"]["class"] == "ToyLinear" and plan["layers"]["2"]["ranks"] == [4]
