"""Knowledge distillation from the original network (Hinton et al. 2015) with optional FitNets hints."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from factorch.train.loop import TrainConfig, TrainResult, train


class DistillationLoss:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, y) + hint_weight * hints``.

    ``hints`` maps student module names to teacher module names; each pair adds the mean squared error of
    their outputs, relative to the teacher's mean square (FitNets, Romero et al. 2015). Factorized layers
    keep their dense layer's output shape, so a layer can be paired with its own original.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        temperature: float = 4.0,
        alpha: float = 0.9,
        hints: Mapping[str, str] | None = None,
        hint_weight: float = 1.0,
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.teacher, self.temperature, self.alpha, self.hint_weight = teacher, temperature, alpha, hint_weight
        self.hints = dict(hints or {})
        self._student: dict[str, Tensor] = {}
        self._teacher: dict[str, Tensor] = {}
        self._handles = []
        s_modules, t_modules = dict(student.named_modules()), dict(teacher.named_modules())
        for s_name, t_name in self.hints.items():
            for name, modules, side in ((s_name, s_modules, "student"), (t_name, t_modules, "teacher")):
                if name not in modules or not name:
                    raise ValueError(f"hints: the {side} has no module named {name!r}")
            self._handles.append(s_modules[s_name].register_forward_hook(self._keep(self._student, s_name)))
            self._handles.append(t_modules[t_name].register_forward_hook(self._keep(self._teacher, t_name)))

    @staticmethod
    def _keep(store: dict[str, Tensor], name: str):
        def hook(_m, _args, out):
            store[name] = out

        return hook

    def __call__(self, out: Tensor, y: Tensor, x: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_out = self.teacher(x)
        t = self.temperature
        kd = F.kl_div(
            F.log_softmax(out / t, dim=1), F.log_softmax(teacher_out / t, dim=1), log_target=True, reduction="batchmean"
        )
        loss = self.alpha * kd * (t * t) + (1 - self.alpha) * F.cross_entropy(out, y)
        for s_name, t_name in self.hints.items():
            s, te = self._student.pop(s_name), self._teacher.pop(t_name).detach()
            if s.shape != te.shape:
                raise ValueError(
                    f"hint {s_name}={t_name}: output shapes differ ({tuple(s.shape)} vs {tuple(te.shape)})"
                )
            loss = loss + self.hint_weight * (s - te).pow(2).mean() / te.pow(2).mean().clamp_min(1e-12)
        return loss

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class Regularized:
    """``loss + l1 * sum |W| + group_lasso * sum_filters ||W_f||_2`` over the conv / Linear weights of ``model``.

    The L1 term drives single weights to zero (a prelude to unstructured pruning, Han et al. 2015); the group
    term (group lasso, Wen et al. 2016 / Alvarez & Salzmann 2016) drives whole output filters / neurons to zero,
    so that structured pruning can then remove them. The final layer's outputs (the classes) carry no group
    term. A pruned layer's regularised weight is its masked weight.
    """

    def __init__(self, base, model: nn.Module, *, l1: float = 0.0, group_lasso: float = 0.0) -> None:
        from factorch.layers.pruned import PrunedLayer

        self.base, self.l1, self.group_lasso = base, float(l1), float(group_lasso)
        self.weights: list[tuple[nn.Module, bool]] = []  # (layer, grouped)
        layers = [
            m for m in model.modules() if isinstance(m, PrunedLayer) or (type(m) in (nn.Conv1d, nn.Conv2d, nn.Linear))
        ]
        inside = {id(m.layer) for m in layers if isinstance(m, PrunedLayer)}
        layers = [m for m in layers if id(m) not in inside]
        for i, m in enumerate(layers):
            self.weights.append((m, i < len(layers) - 1))

    @staticmethod
    def _weight(m: nn.Module) -> Tensor:
        return m.layer.weight * m.mask if hasattr(m, "mask") else m.weight

    def penalty(self) -> Tensor:
        total = None
        for m, grouped in self.weights:
            w = self._weight(m)
            term = self.l1 * w.abs().sum() if self.l1 else 0.0
            if self.group_lasso and grouped:
                term = term + self.group_lasso * w.flatten(1).norm(dim=1).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def __call__(self, out: Tensor, y: Tensor, x: Tensor) -> Tensor:
        loss = self.base(out, y, x) if self.base is not None else F.cross_entropy(out, y)
        return loss + self.penalty()


def finetune(
    model: nn.Module,
    train_data: DataLoader | Dataset,
    *,
    teacher: nn.Module | None = None,
    epochs: int = 1,
    temperature: float = 4.0,
    alpha: float = 0.9,
    hints: Mapping[str, str] | None = None,
    hint_weight: float = 1.0,
    lr: float = 0.01,
    batch_size: int | None = None,
    weight_decay: float = 5e-4,
    seed: int = 0,
    test_data: Dataset | DataLoader | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    inplace: bool = False,
    show_progress: bool = True,
    history: list[dict[str, Any]] | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    l1: float = 0.0,
    group_lasso: float = 0.0,
) -> nn.Module:
    """Fine-tune a (compressed) model, with distillation from ``teacher`` when given.

    SGD with Nesterov momentum and a cosine schedule from ``lr``; a progress bar per epoch; evaluation on
    ``test_data`` after every epoch; a checkpoint in ``out_dir`` after every epoch, from which ``resume=True``
    continues to the same final weights as an uninterrupted run (the data order is seeded per epoch).

    Args:
        model: the network to fine-tune (copied first unless ``inplace=True``).
        train_data: a DataLoader (its dataset and batch size are used; batches are reshuffled with a seeded
            generator so runs can resume exactly) or a Dataset of ``(input, label)``.
        teacher: the original network; its softened outputs are the targets (Hinton et al. 2015).
        epochs: passes over ``train_data``.
        temperature: softmax temperature of the distillation term.
        alpha: weight of the distillation term (``1 - alpha`` for cross-entropy with the labels).
        hints: ``{student module: teacher module}`` pairs whose outputs are matched (FitNets).
        hint_weight: weight of each hint term.
        lr: initial learning rate.
        batch_size: overrides the DataLoader's batch size.
        weight_decay: on weights (not on biases / norms).
        seed: seeds data order and dropout.
        test_data: evaluated after every epoch (accuracy in the history).
        out_dir: checkpoint folder (a temporary one when omitted, so no resume).
        resume: continue from ``out_dir``'s checkpoint.
        inplace: fine-tune ``model`` itself.
        show_progress: progress bars.
        history: if given, a list that receives one dict of metrics per epoch.
        on_epoch_end: called with ``(epoch, metrics)`` after each epoch's checkpoint is written.
        l1: weight of an L1 penalty on every conv / Linear weight (sparsifies single weights).
        group_lasso: weight of a group-lasso penalty (the L2 norm of each output filter / neuron, summed)
            that drives whole channels to zero for structured pruning (see :class:`Regularized`).

    Returns:
        The fine-tuned model (in eval mode).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if hints and teacher is None:
        raise ValueError("hints need a teacher")
    dataset = train_data.dataset if isinstance(train_data, DataLoader) else train_data
    if batch_size is None:
        batch_size = (train_data.batch_size if isinstance(train_data, DataLoader) else None) or 128
    student = model if inplace else copy.deepcopy(model)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed)
    loss = None
    if teacher is not None:
        teacher = copy.deepcopy(teacher).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        loss = DistillationLoss(
            student, teacher, temperature=temperature, alpha=alpha, hints=hints, hint_weight=hint_weight
        )
    for name, value in (("l1", l1), ("group_lasso", group_lasso)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"finetune({name}=...) must be a number >= 0, got {value!r}")
    if l1 or group_lasso:
        loss = Regularized(loss, student, l1=l1, group_lasso=group_lasso)
    tmp = None
    if out_dir is None:
        if resume:
            raise ValueError("resume=True needs out_dir (where the checkpoint is)")
        tmp = tempfile.TemporaryDirectory(prefix="factorch-finetune-")
        out_dir = tmp.name
    try:
        result: TrainResult = train(
            student,
            dataset,
            config,
            out_dir=out_dir,
            test_data=test_data,
            resume=resume,
            show_progress=show_progress,
            loss_fn=loss,
            on_epoch_end=on_epoch_end,
        )
    finally:
        for closing in (loss, getattr(loss, "base", None)):
            if hasattr(closing, "close"):
                closing.close()
        if tmp is not None:
            tmp.cleanup()
    if history is not None:
        history.extend(result.history)
    return student.eval()
