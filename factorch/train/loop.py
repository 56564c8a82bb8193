"""Supervised training and evaluation loops: cosine schedule, progress bar, checkpoint every epoch, resume.

Knows nothing of compression or of argument parsing.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from factorch.models._io import load_checkpoint_file
from factorch.progress import progress_bar

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train` (SGD with Nesterov momentum, cosine learning-rate schedule)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    epochs: int
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    batch_size: int = 500,
    description: str = "evaluate",
    show_progress: bool = True,
) -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` on ``data``.

    ``data`` is a Dataset of ``(input, label)`` or a DataLoader yielding batches of them.
    """
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    try:
        with progress_bar(description, total=len(loader), enabled=show_progress) as advance:
            for x, y in loader:
                out = model(x)
                loss_sum += F.cross_entropy(out.float(), y, reduction="sum").item()
                correct += (out.argmax(1) == y).sum().item()
                total += len(y)
                advance()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return {"accuracy": 100.0 * correct / total, "loss": loss_sum / total, "samples": total}


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(
    model: nn.Module,
    train_data: Dataset,
    config: TrainConfig,
    *,
    out_dir: str | Path,
    test_data: Dataset | None = None,
    resume: bool = False,
    extra_state: dict | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    show_progress: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` in place with cross-entropy (or ``loss_fn(outputs, labels, inputs)``), saving
    ``out_dir/checkpoint.pt`` after every epoch.

    The data order and the dataset's augmentation (via ``set_epoch``) are seeded per epoch, so a run
    interrupted and resumed with ``resume=True`` continues exactly where the checkpoint left it. Modules with
    a ``set_training_progress(fraction)`` method (e.g. ``factorch.nn.ShiftAttentionConv2d``'s schedule) are
    called with the fraction of training done before every step, and with ``epoch / epochs`` after each epoch.

    Args:
        model: the network, trained in place.
        train_data: a Dataset of ``(input, label)``.
        config: hyper-parameters.
        out_dir: folder for the checkpoint.
        test_data: evaluated after every epoch when given.
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        extra_state: JSON-able values stored in the checkpoint (e.g. the architecture).
        on_epoch_end: called with ``(epoch, metrics)`` after each epoch's checkpoint.
        show_progress: draw a progress bar.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
    )
    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)
    result = TrainResult(epochs=config.epochs)
    start_epoch, elapsed = 0, 0.0
    ckpt_path = out_dir / CHECKPOINT
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint_file(ckpt_path)
        if ckpt.get("config") != asdict(config):
            raise ValueError(
                f"cannot resume from {ckpt_path}: it was trained with {ckpt.get('config')}, now asked for "
                f"{asdict(config)}"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, elapsed = int(ckpt["epoch"]), float(ckpt["wall_time_s"])
        result.history = json.loads(ckpt["history"])
    # layers with a training schedule (e.g. ShiftAttentionConv2d) are told the fraction of training done
    scheduled = [m for m in model.modules() if callable(getattr(m, "set_training_progress", None))]
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(epoch)
        order = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        loader = DataLoader(train_data, batch_size=config.batch_size, shuffle=True, generator=order, drop_last=False)
        torch.manual_seed(config.seed * 7_919 + epoch)  # dropout etc.
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        with progress_bar(f"epoch {epoch + 1}/{config.epochs}", total=len(loader), enabled=show_progress) as advance:
            for i, (x, y) in enumerate(loader):
                lr = _lr_at(epoch * steps_per_epoch + i, total_steps, warmup, config.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                for m in scheduled:
                    m.set_training_progress((epoch * steps_per_epoch + i) / total_steps)
                out = model(x)
                if loss_fn is None:
                    loss = F.cross_entropy(out, y, label_smoothing=config.label_smoothing)
                else:
                    loss = loss_fn(out, y, x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
                seen += len(y)
                advance()
        for m in scheduled:
            m.set_training_progress((epoch + 1) / config.epochs)
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": 100.0 * correct / seen}
        if test_data is not None:
            ev = evaluate(model, test_data, show_progress=False)
            metrics.update(test_accuracy=ev["accuracy"], test_loss=ev["loss"])
        elapsed += time.perf_counter() - t0
        metrics["wall_time_s"] = round(elapsed, 1)
        result.history.append(metrics)
        _atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "wall_time_s": elapsed,
                "config": asdict(config),
                "history": json.dumps(result.history),
                "extra": json.dumps(extra_state or {}),
            },
            ckpt_path,
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
    result.wall_time_s = elapsed
    return result
