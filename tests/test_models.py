import json

import pytest
import torch

import factorch
from factorch.models import create_model, list_models, model_card, weights_path
from factorch.models._io import CheckpointError, load_state_dict_file
from factorch.models._resolve import architecture_spec
from factorch.resolve import load_model

NAMES = list_models()


def test_registry_lists_reference_models():
    assert {"resnet20", "vgg", "mobilenet_v2", "lenet5"} <= set(NAMES)
    assert list_models("resnet2*") == ["resnet20", "resnet20_trl"]
    assert {"squeezenet", "mobilenet_v1", "resnext", "xception_mini", "inception_mini", "sal_resnet20"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_every_model_runs(name, in_channels, size):
    model = create_model(name, num_classes=7, in_channels=in_channels).eval()
    assert model(torch.randn(2, in_channels, size, size)).shape == (2, 7)


def test_resnet20_has_paper_parameter_count():
    # 0.27 M in He et al. 2016 (3-channel input, 10 classes, option-A shortcuts)
    model = create_model("resnet20", in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == 269_722


@pytest.mark.parametrize("depth, params", [(32, 464_154), (56, 853_018), (110, 1_727_962)])
def test_deeper_cifar_resnets_have_the_paper_parameter_counts(depth, params):
    # He et al. 2016, table 6: 0.46 M, 0.85 M, 1.7 M
    model = create_model(f"resnet{depth}", in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == params


def test_resnet50_matches_torchvision_in_parameters_and_macs():
    model = create_model("resnet50", num_classes=1000, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision.models.resnet50
    assert factorch.profile(model, input_shape=(1, 3, 224, 224)).total_macs == 4_089_184_256  # its "4.09 GFLOPS"
    small = factorch.profile(create_model("resnet50"), input_shape=(1, 1, 28, 28))
    assert small.rows[0].type_name == "Conv2d" and small.rows[0].output_shape == (1, 64, 28, 28)  # 3x3 stem


def test_vgg_is_in_the_announced_size_range():
    prof = factorch.profile(create_model("vgg"), input_shape=(1, 1, 28, 28))
    assert 50e6 <= prof.total_macs <= 100e6
    convs = [r for r in prof.rows if r.type_name == "Conv2d"]
    assert len(convs) == 8


def test_unknown_model_names_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'resnet2'.*Did you mean .*'resnet20'"):
        create_model("resnet2")


def test_pretrained_rejects_other_heads():
    with pytest.raises(ValueError, match="Fashion-MNIST only"):
        create_model("resnet20", num_classes=100, pretrained=True)


@pytest.mark.parametrize("name", ["resnet20", "vgg", "sal_resnet20", "resnext"])
def test_pretrained_weights_and_card_are_shipped(name):
    assert weights_path(name).is_file()
    card = model_card(name)
    for key in ("command", "seed", "epochs", "wall_time_s", "test_accuracy"):
        assert key in card
    model = create_model(name, pretrained=True)
    assert not model.training
    dense = create_model(name)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), dense.state_dict().values()))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_state_dict_file(bad)
    truncated = tmp_path / "trunc.pt"
    torch.save(create_model("lenet5").state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_state_dict_file(truncated)


def test_saved_folder_round_trip(tmp_path):
    model = create_model("lenet5")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "model.json").write_text(json.dumps(architecture_spec("lenet5")))
    loaded = load_model(tmp_path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_saved_folder_with_wrong_weights(tmp_path):
    torch.save(create_model("resnet20").state_dict(), tmp_path / "weights.pt")
    (tmp_path / "model.json").write_text(json.dumps(architecture_spec("lenet5")))
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        load_model(tmp_path)


def test_user_factory_spec():
    model = load_model("factorch.models.lenet:LeNet5")
    assert isinstance(model, torch.nn.Module)
    with pytest.raises(ValueError, match="no callable 'Nope'"):
        load_model("factorch.models.lenet:Nope")
    with pytest.raises(ValueError, match="cannot import module"):
        load_model("no_such_package_xyz:make")


@pytest.mark.parametrize("name", ["resnet20", "vgg"])
def test_shipped_weights_reproduce_the_model_card_on_real_data(name):
    """Runs where Fashion-MNIST is installed (the set-up step installs it); skipped elsewhere."""
    from factorch.data import DatasetNotFoundError, fashion_mnist
    from factorch.train import evaluate

    try:
        test = fashion_mnist("test")
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    result = evaluate(create_model(name, pretrained=True), test, show_progress=False)
    assert abs(result["accuracy"] - model_card(name)["test_accuracy"]) <= 0.1
    assert result["accuracy"] >= {"resnet20": 92.5, "vgg": 93.5}[name]
