import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import factorch
from factorch.train import DistillationLoss


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long())


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


def compressed():
    teacher = net().eval()
    student, _ = factorch.compress(teacher, factorch.SVDConfig(rank=2), example_inputs=torch.randn(1, 1, 8, 8))
    return teacher, student


def test_interrupted_distillation_resumes_to_the_same_weights(tmp_path):
    teacher, student = compressed()
    loader = DataLoader(data(), batch_size=16)
    kw = dict(teacher=teacher, lr=0.05, show_progress=False, hints={"2": "2"})
    full = factorch.finetune(student, loader, epochs=3, out_dir=tmp_path / "a", **kw)

    def interrupt(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        factorch.finetune(student, loader, epochs=3, out_dir=tmp_path / "b", on_epoch_end=interrupt, **kw)
    resumed = factorch.finetune(student, loader, epochs=3, out_dir=tmp_path / "b", resume=True, **kw)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_finetune_learns_and_leaves_the_input_untouched():
    teacher, student = compressed()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    ds = data(128)
    history = []
    tuned = factorch.finetune(
        student, DataLoader(ds, batch_size=32), teacher=teacher, epochs=3, lr=0.05, test_data=ds,
        show_progress=False, history=history,
    )  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert tuned is not student and len(history) == 3 and "test_accuracy" in history[-1]
    x = ds.tensors[0]
    with torch.no_grad():
        kl = lambda m: float(  # noqa: E731
            torch.nn.functional.kl_div(
                m(x).log_softmax(1), teacher(x).log_softmax(1), log_target=True, reduction="batchmean"
            )
        )
        assert kl(tuned) < kl(student)


def test_distillation_loss_terms_and_errors():
    teacher, student = compressed()
    x, y = data(8).tensors
    loss = DistillationLoss(student, teacher, temperature=2.0, alpha=1.0)
    with torch.no_grad():
        assert float(loss(teacher(x), y, x)) == pytest.approx(0.0, abs=1e-6)  # identical outputs: no KD loss
    with pytest.raises(ValueError, match="student has no module named 'nope'"):
        DistillationLoss(student, teacher, hints={"nope": "2"})
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(student, teacher, alpha=2.0)
    with pytest.raises(ValueError, match="hints need a teacher"):
        factorch.finetune(student, data(), hints={"2": "2"})
