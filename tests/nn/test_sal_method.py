"""SALConfig as a compression method: compress -> (fine-tune) -> binarise -> save / load -> shift form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import factorch
from factorch import SALConfig
from factorch.layers import SALConv2d
from factorch.nn import ShiftAttentionConv2d, ShiftConv2d, to_shift_model


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.body = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.point = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.point(torch.relu(self.body(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


X = torch.randn(4, 1, 12, 12)


def _compressed(keep=1):
    torch.manual_seed(0)
    model = Small().eval()
    out, _ = factorch.compress(model, SALConfig(keep=keep), example_inputs=X[:1])
    return model, out


def test_compress_turns_kxk_convs_into_sal_layers_that_start_as_the_dense_conv():
    model, out = _compressed()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert isinstance(out.body, SALConv2d)
    assert type(out.stem) is nn.Conv2d  # the first conv stays dense by default
    assert isinstance(out.point, nn.Conv2d) and not isinstance(out.point, SALConv2d)  # 1x1: nothing to choose
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched
    with torch.no_grad():
        torch.testing.assert_close(out(X), model(X), rtol=0, atol=1e-6)


@pytest.mark.parametrize("keep", [1, 2])
def test_binarised_model_saves_loads_exactly_and_its_shift_form_matches(tmp_path, keep):
    _, out = _compressed(keep)
    for m in out.modules():
        if isinstance(m, ShiftAttentionConv2d):
            with torch.no_grad():
                m.attention.normal_()
            m.binarize()
            w = m.effective_weight().detach().flatten(2)
            assert ((w != 0).sum(-1) <= keep).all()
    factorch.save(out, tmp_path / "m")
    back = factorch.load(tmp_path / "m", base_model=Small())
    with torch.no_grad():
        assert torch.equal(back(X), out(X))
    fast = to_shift_model(out.double())
    assert isinstance(fast.body, ShiftConv2d) and isinstance(out.body, SALConv2d)  # the copy, not the model
    with torch.no_grad():
        torch.testing.assert_close(fast(X.double()), out(X.double()), rtol=0, atol=1e-10)


def test_option_cost_counts_keep_weights_per_slice_and_their_positions():
    _, out = _compressed()
    spec = out.body.spec
    cost = SALConv2d.option_cost(spec, (1,), input_size=(12, 12))
    assert cost.params == 8 * 6 * 1 + 8
    assert cost.index_bits == 8 * 6 * math.ceil(math.log2(9))
    assert cost.macs == (8 * 6 * 9 * 6 * 6) // 9
    two = SALConv2d.option_cost(spec, (2,), input_size=(12, 12))
    assert two.params == 8 * 6 * 2 + 8 and two.macs == 2 * cost.macs


def test_position_groups_through_compress_save_load_and_the_shift_form(tmp_path):
    torch.manual_seed(0)
    model = Small().eval()
    out, report = factorch.compress(model, SALConfig(position_groups=2), example_inputs=X[:1])
    assert out.body.attention.shape == (2, 6, 9) and out.body.options["position_groups"] == 2
    # stored: 48 weights + 8 biases at 32 bits, and a 4-bit position per (group, input channel), not per weight
    (body,) = [r for r in report.to_dict()["layers"] if r["name"] == "body"]
    assert body["size_after"] == (48 + 8) * 4 + 2 * 6 * math.ceil(math.log2(9)) // 8
    with torch.no_grad():
        out.body.attention.normal_()
    out.body.binarize()
    factorch.save(out, tmp_path / "m")
    back = factorch.load(tmp_path / "m", base_model=Small())
    assert back.body.position_groups == 2
    with torch.no_grad():
        assert torch.equal(back(X), out(X))
    fast = to_shift_model(out.double())
    assert fast.body.shifted_channels <= 2 * 6
    with torch.no_grad():
        torch.testing.assert_close(fast(X.double()), out(X.double()), rtol=0, atol=1e-10)
    # a layer whose out_channels the groups do not divide is skipped, with the reason
    kept, report = factorch.compress(model, factorch.Plan({"body": SALConfig(position_groups=3)}),
                                     example_inputs=X[:1])  # fmt: skip
    assert type(kept.body) is nn.Conv2d
    (body,) = [r for r in report.to_dict()["layers"] if r["name"] == "body"]
    assert body["skipped"] == "sal: position_groups=3 does not divide out_channels=8"


@pytest.mark.parametrize(
    "kwargs, message",
    [({"keep": 0}, "keep"), ({"keep": 1.5}, "keep"), ({"ramp": 0.0}, "ramp"), ({"ramp": 2}, "ramp"),
     ({"position_groups": 0}, "position_groups"), ({"position_groups": True}, "position_groups")],
)  # fmt: skip
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SALConfig(**kwargs)


def test_keep_beyond_the_kernel_is_refused_with_the_layer_name():
    with pytest.raises(ValueError, match="keep"):
        factorch.compress(Small(), factorch.Plan({"body": SALConfig(keep=10)}), example_inputs=X[:1])


def test_finetune_binarises_and_trains_the_kept_weights():
    _, out = _compressed()
    data = torch.utils.data.TensorDataset(torch.randn(32, 1, 12, 12), torch.randint(0, 3, (32,)))
    tuned = factorch.finetune(out, data, epochs=2, batch_size=8, show_progress=False)
    for m in tuned.modules():
        if isinstance(m, ShiftAttentionConv2d):
            assert float(m.progress) == pytest.approx(1.0, abs=0.1) and m.hardness == 1.0
            assert ((m.effective_weight().detach().flatten(2) != 0).sum(-1) <= 1).all()


def test_shifted_sal_model_exports_to_onnx_with_the_same_outputs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, out = _compressed()
    for m in out.modules():
        if isinstance(m, ShiftAttentionConv2d):
            m.binarize()
    fast = to_shift_model(out)
    path = factorch.export_onnx(fast, tmp_path / "sal.onnx", X[:2])
    session = ort.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: X[:2].numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), out(X[:2]), rtol=1e-4, atol=1e-5)


def test_shipped_sal_resnet20_keeps_one_weight_per_slice_and_its_shift_form_is_exact():
    model = factorch.models.create_model("sal_resnet20", pretrained=True).double()
    layers = [m for m in model.modules() if isinstance(m, ShiftAttentionConv2d)]
    assert len(layers) == 18
    for m in layers:
        assert m.hardness == 1.0
        w = m.effective_weight().detach().flatten(2)
        assert ((w != 0).sum(-1) <= 1).all()
    dense_convs = sum(m.conv.weight.numel() for m in layers)
    kept = sum(int((m.effective_weight() != 0).sum()) for m in layers)
    assert kept <= dense_convs // 9
    fast = to_shift_model(model)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-10)
    card = factorch.models.model_card("sal_resnet20")
    assert card["test_accuracy"] >= 93.0 and card["keep"] == 1


def test_shipped_shift_resnet20_runs_as_one_learned_shift_per_input_channel():
    model = factorch.models.create_model("shift_resnet20", pretrained=True).double()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ShiftAttentionConv2d)}
    assert len(layers) == 18 and all(m.position_groups == 1 and m.hardness == 1.0 for m in layers.values())
    fast = to_shift_model(model)
    for name, m in layers.items():  # one shifted copy per input channel: a 1x1 conv of the layer's own width
        assert fast.get_submodule(name).shifted_channels == m.conv.in_channels
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-10)
    card = factorch.models.model_card("shift_resnet20")
    assert card["test_accuracy"] >= 91.9 and card["position_groups"] == 1
