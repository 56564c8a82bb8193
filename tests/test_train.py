import pytest
import torch

from factorch.data import fashion_mnist
from factorch.models import create_model
from factorch.train import TrainConfig, evaluate, train


class Stop(Exception):
    pass


def test_training_learns_the_fixture(fmnist_root, tmp_path):
    data = fashion_mnist("train", fmnist_root, augment=False)
    model = create_model("lenet5")
    before = evaluate(model, data, show_progress=False)["accuracy"]
    result = train(model, data, TrainConfig(epochs=6, batch_size=16, lr=0.05), out_dir=tmp_path, show_progress=False)
    after = evaluate(model, data, show_progress=False)["accuracy"]
    assert len(result.history) == 6 and (tmp_path / "checkpoint.pt").is_file()
    assert after > max(before, 50.0)


def test_interrupted_run_resumes_to_identical_weights(fmnist_root, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=3)

    def fresh():
        torch.manual_seed(123)
        return create_model("lenet5"), fashion_mnist("train", fmnist_root, seed=3)

    model, data = fresh()
    train(model, data, cfg, out_dir=tmp_path / "full", show_progress=False)

    def interrupt(epoch, metrics):
        if epoch == 2:
            raise Stop

    model_b, data_b = fresh()
    with pytest.raises(Stop):
        train(model_b, data_b, cfg, out_dir=tmp_path / "cut", on_epoch_end=interrupt, show_progress=False)
    model_c, data_c = fresh()
    result = train(model_c, data_c, cfg, out_dir=tmp_path / "cut", resume=True, show_progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for (k, a), b in zip(model.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_with_other_settings_is_refused(fmnist_root, tmp_path):
    data = fashion_mnist("train", fmnist_root)
    train(create_model("lenet5"), data, TrainConfig(epochs=1, batch_size=32), out_dir=tmp_path, show_progress=False)
    with pytest.raises(ValueError, match="cannot resume"):
        train(
            create_model("lenet5"),
            data,
            TrainConfig(epochs=2, batch_size=32),
            out_dir=tmp_path,
            resume=True,
            show_progress=False,
        )


def test_config_validation():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0)
