"""factorch.score: the effdl and MicroNet complexity scores, pinned on the rules' own worked examples and on
published networks (parameters and operations known)."""

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import factorch
from factorch.complexity import RULES

from .nets import ResNet18Cifar, WideResNet


def one_layer(layer: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(layer)


def test_resnet18_cifar10_in_half_precision_scores_2_under_effdl():
    torch.manual_seed(0)
    model = ResNet18Cifar().eval().half()
    s = factorch.score(model, example_inputs=torch.zeros(1, 3, 32, 32).half(), rules="effdl")
    assert s.total_params == pytest.approx(11.17e6, rel=0.005)  # BatchNorms folded: their shifts become biases
    assert s.total_macs == pytest.approx(555.4e6, rel=0.001)
    assert s.score == pytest.approx(2.0, rel=0.01)
    assert s.params == pytest.approx(s.total_params / 2, rel=1e-5)  # a few initial weights are exact zeros
    assert s.ops == pytest.approx(s.total_macs / 2)


def test_wideresnet_28_10_counts_the_micronet_cifar100_reference():
    torch.manual_seed(0)
    s = factorch.score(WideResNet().eval(), example_inputs=torch.zeros(1, 3, 32, 32), rules="micronet-cifar100",
                       free_16bit=False)  # fmt: skip
    assert s.params == pytest.approx(36.5e6, rel=0.01)
    assert s.ops == pytest.approx(10.49e9, rel=0.01)
    assert s.score == pytest.approx(2.0, rel=0.01)  # the reference scores 1 + 1
    assert not s.free_16bit
    free = factorch.score(WideResNet().eval(), example_inputs=torch.zeros(1, 3, 32, 32), rules="micronet-cifar100")
    assert free.free_16bit and free.params == pytest.approx(s.params / 2, rel=1e-6)
    # multiplications at 16 bits for free, additions not
    assert free.ops == pytest.approx(s.total_mults / 2 + s.total_adds, rel=1e-6)


def test_counting_py_worked_examples():
    # Conv2D(input 5, kernel [3, 3, 2, 4], stride 1, 'same', bias, relu): 9*2 = 18 products per output, 100
    # outputs: 1800 mults + 100 relu; (18 - 1) * 100 + 100 bias adds; 72 + 4 params
    conv = one_layer(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()))
    s = factorch.score(conv, torch.randn(1, 2, 5, 5), rules="micronet-cifar100", free_16bit=False)
    assert (s.total_mults, s.total_adds, s.params) == (1900, 1800, 76)
    # half of the kernel pruned: vector length 9, a 1-bit mask over the 72 weights
    with torch.no_grad():
        conv[0][0].weight.view(-1)[::2] = 0
    s = factorch.score(conv, torch.randn(1, 2, 5, 5), rules="micronet-cifar100", free_16bit=False)
    assert (s.total_mults, s.total_adds) == (900 + 100, 8 * 100 + 100)
    assert s.params == pytest.approx((36 * 32 + 72 + 4 * 32) / 32)
    # FullyConnected([10, 3], bias): 30 mults, 27 + 3 adds, 33 params; GlobalAvg(4, 8): 8 mults, 15 * 8 adds
    s = factorch.score(one_layer(nn.Linear(10, 3)), torch.randn(1, 10), rules="micronet-cifar100", free_16bit=False)
    assert (s.total_mults, s.total_adds, s.params) == (30, 30, 33)
    s = factorch.score(nn.AdaptiveAvgPool2d(1), torch.randn(1, 8, 4, 4), rules="micronet-cifar100")
    assert (s.total_mults, s.total_adds) == (8, 120)


class Residual(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x) + x


def test_other_operations_follow_the_table_and_counts_are_per_sample():
    s = factorch.score(Residual(), torch.randn(4, 8, 4, 4), rules="micronet-cifar100", free_16bit=False)
    n = 8 * 4 * 4
    assert (s.total_mults, s.total_adds) == (2 * n, n + n)  # sigmoid 2 mults 1 add; the sum 1 add
    assert s.ops == pytest.approx(3 * n + 0 * n + n)
    pool = factorch.score(nn.MaxPool2d(2), torch.randn(1, 3, 4, 4), rules="micronet-cifar100")
    assert pool.total_adds == 3 * 2 * 2 * 3  # 3 comparisons per output


def test_effdl_formula_with_unstructured_and_structured_sparsity():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    x = torch.randn(1, 4, 6, 6)
    macs = 8 * 36 * 4 * 9
    dense = factorch.score(one_layer(conv), x, rules="effdl")
    assert (dense.params, dense.ops) == (288, macs)
    pruned, _ = factorch.compress(one_layer(conv), factorch.PruneConfig(sparsity=0.75), example_inputs=x,
                                   keep_edges=False)  # fmt: skip
    s = factorch.score(pruned, x, rules="effdl")
    assert s.params == pytest.approx(72) and s.ops == pytest.approx(macs)  # unstructured zeros still run
    structured = one_layer(conv)
    prune.ln_structured(structured[0], "weight", amount=0.5, n=1, dim=0)  # 4 of 8 filters, a torch mask
    s = factorch.score(structured, x, rules="effdl")
    assert s.params == pytest.approx(144) and s.ops == pytest.approx(macs / 2)
    assert s.layers[0].nonzeros == 144


def test_quantized_and_binary_layers_count_their_bits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.randn(8, 64)
    q, _ = factorch.compress(model, factorch.QuantConfig(weight_bits=4, act_bits=8), example_inputs=x[:1],
                             calib_data=x)  # fmt: skip
    s = factorch.score(q, x[:1], rules="effdl")
    macs = 64 * 32 + 32 * 10
    assert s.ops == pytest.approx(macs * 8 / 32)  # max(q_w, q_a) = 8
    cost = sum(layer.layer_cost().size_bits for layer in (q[0], q[2]))
    assert s.params == pytest.approx(cost / 32)  # 4-bit codes, scales, float biases as the layer stores them
    m = factorch.score(q, x[:1], rules="micronet-cifar100")
    assert not m.free_16bit  # something is below 16 bits: no freebie
    b, _ = factorch.compress(model, factorch.BinaryConfig(mode="xnor"), example_inputs=x[:1], keep_edges=False)
    s = factorch.score(b, x[:1], rules="effdl")
    assert s.ops == pytest.approx(macs / 32)  # 1-bit weights and inputs


def test_score_leaves_the_model_alone_and_rejects_bad_rules():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    factorch.score(model, torch.randn(1, 1, 6, 6))
    assert isinstance(model[1], nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="effdl"):
        factorch.score(model, torch.randn(1, 1, 6, 6), rules="cifar")
    with pytest.raises(ValueError, match="style"):
        factorch.ScoreRules("mine", 1.0, 1.0, style="flops")
    assert set(RULES) == {"effdl", "micronet-cifar100", "micronet-imagenet"}


def test_report_forms():
    s = factorch.score(one_layer(nn.Linear(10, 3)), torch.randn(1, 10), rules="effdl")
    d = s.to_dict()
    assert d["score"] == s.score and d["layers"][0]["params"] == 33
    assert "| total |" in s.to_markdown()


def test_cli_scores_a_registry_model(capsys):
    from factorch.cli import main

    assert main(["score", "lenet5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = factorch.models.create_model("lenet5")
    expected = factorch.score(model, torch.zeros(1, 1, 28, 28), rules="effdl")
    assert out["rules"]["name"] == "effdl" and out["score"] == pytest.approx(expected.score)
    assert main(["score", "lenet5", "--rules", "micronet-cifar100", "--no-free-16bit", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["free_16bit"] is False and out["params"] == expected.total_params


def test_shared_weight_layers_charge_their_codes_and_codebook_and_decoded_float_multiplies():
    """A k-means layer has no stored weight tensor (its weight is centroids[codes]): the score reads it anyway."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(8 * 6 * 6, 3))  # fmt: skip
    x = torch.randn(1, 1, 6, 6)
    k, _ = factorch.compress(m, factorch.KMeansConfig(bits=4), example_inputs=x)
    (row,) = [r for r in factorch.score(k, x).to_dict()["layers"] if r["name"] == "2"]
    assert row["weight_bits"] == 4 and row["act_bits"] == 32
    # 576 four-bit codes, 16 float32 centroids, 8 float32 biases, in 32-bit units
    assert row["param_term"] == (576 * 4 + 16 * 32 + 8 * 32) / 32
    assert row["mults"] == row["op_term"] == 8 * 8 * 9 * 36  # multiplies by the decoded float32 weights
