"""Asymmetric, data-driven reconstruction of factorized layers (Zhang et al. 2016), layer after layer."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorch.calibrate.config import CalibrationConfig
from factorch.layers import FactorizedLayer
from factorch.progress import progress_bar

ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
)
# modules applied position-wise after a layer, through which its responses can be fitted
ELEMENTWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, nn.Dropout, *ACTIVATIONS)


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


@dataclass
class LayerCalibration:
    name: str
    rel_error_before: float | None = None  # ||y - layer(x)|| / ||y|| with the decomposed weights
    rel_error_linear: float | None = None  # after the closed-form refit of the last stage
    nonlinearity: str | None = None  # the activation chain fitted through, if any
    act_error_before: float | None = None  # the same errors after that chain
    act_error_after: float | None = None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CalibrationReport:
    layers: list[LayerCalibration] = field(default_factory=list)
    n_samples: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "seconds": self.seconds, "layers": [r.to_dict() for r in self.layers]}


def capture(model: nn.Module, module: nn.Module, batch: Tensor, what: str) -> Tensor:
    """The input (``what="input"``) or output of ``module`` when ``model`` runs on ``batch`` (the pass stops
    there)."""
    store: dict[str, Tensor] = {}

    def hook(_m, args, out):
        store["t"] = (args[0] if what == "input" else out).detach().clone()
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "t" not in store:
        raise ValueError(f"calibration: the layer was not called in the model's forward pass ({type(module).__name__})")
    return store["t"]


def execution_order(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the modules in the order their forward passes start (first call of each)."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda _m, _a, _n=name: order.append(_n)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


def following_chain(model: nn.Module, order: list[str], name: str) -> list[nn.Module]:
    """The elementwise modules executed right after ``name`` (e.g. its BatchNorm and ReLU)."""
    modules = dict(model.named_modules())
    if name not in order:
        return []
    chain = []
    for other in order[order.index(name) + 1 :]:
        if other.startswith(name + "."):
            continue
        module = modules[other]
        if isinstance(module, ELEMENTWISE) and not list(module.children()):
            chain.append(module)
            continue
        break
    return chain


def _patches(last: nn.Module, z: Tensor) -> list[Tensor]:
    """Per group, the rows ``(pixels, inputs of one output)`` that ``last`` multiplies by its weight."""
    if isinstance(last, nn.Linear):
        return [z.reshape(-1, z.shape[-1])]
    if isinstance(last, nn.Conv1d):
        z = z.unsqueeze(2)
        kernel, dilation, stride = (1, *last.kernel_size), (1, *last.dilation), (1, *last.stride)
        pads = (*last._reversed_padding_repeated_twice, 0, 0)
    else:
        kernel, dilation, stride = last.kernel_size, last.dilation, last.stride
        pads = last._reversed_padding_repeated_twice
    mode = "constant" if last.padding_mode == "zeros" else last.padding_mode
    if any(pads):
        z = F.pad(z, pads, mode=mode)
    cols = F.unfold(z, kernel, dilation=dilation, stride=stride)  # (N, C * kh * kw, L)
    cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return list(cols.chunk(last.groups, dim=1))


def _targets(last: nn.Module, y: Tensor) -> list[Tensor]:
    if isinstance(last, nn.Linear):
        return [y.reshape(-1, y.shape[-1])]
    rows = y.movedim(1, -1).reshape(-1, y.shape[1]) if y.ndim > 2 else y
    return list(rows.chunk(last.groups, dim=1))


def _weight_matrices(last: nn.Module) -> list[Tensor]:
    w = last.weight.detach().double()
    return [g.reshape(g.shape[0], -1) for g in w.chunk(getattr(last, "groups", 1))]


class _Normal:
    """Accumulated normal equations of ``Y ~ P W^T (+ b)`` for one group."""

    def __init__(self, d: int, out: int, bias: bool) -> None:
        self.bias = bias
        n = d + int(bias)
        self.a = torch.zeros(n, n, dtype=torch.float64)
        self.b = torch.zeros(n, out, dtype=torch.float64)
        self.yy = 0.0

    def add(self, p: Tensor, y: Tensor) -> None:
        p, y = p.double(), y.double()
        if self.bias:
            p = torch.cat([p, torch.ones(p.shape[0], 1, dtype=p.dtype)], dim=1)
        self.a += p.T @ p
        self.b += p.T @ y
        self.yy += float(y.pow(2).sum())

    def error(self, w: Tensor) -> float:  # ||Y - P w||^2 from the accumulated statistics
        return max(0.0, self.yy - 2 * float((w * self.b).sum()) + float((w * (self.a @ w)).sum()))

    def solve(self, ridge: float) -> Tensor:
        n = self.a.shape[0]
        lam = ridge * float(self.a.diagonal().mean()) + 1e-30
        return torch.linalg.solve(self.a + lam * torch.eye(n, dtype=self.a.dtype), self.b)


def _fit_last_stage(
    layer: FactorizedLayer, xs: list[Tensor], ys: list[Tensor], ridge: float
) -> tuple[float, float] | str:
    stages = list(layer.children())
    last = stages[-1]
    if not isinstance(last, (nn.Linear, nn.Conv1d, nn.Conv2d)) or len(stages) < 2:
        return f"{type(layer).__name__} has no linear last stage to refit"
    return fit_linear_(last, xs, ys, ridge, pre=nn.Sequential(*stages[:-1]))


def fit_linear_(
    last: nn.Module, xs: list[Tensor], ys: list[Tensor], ridge: float, pre: nn.Module | None = None
) -> tuple[float, float]:
    """Refit ``last`` (a Conv1d / Conv2d / Linear, in place) by ridge least squares so that
    ``last(pre(x))`` reproduces ``y`` over the pairs ``xs``, ``ys``; the new weights are kept only when they
    lower the error. Returns the relative errors ``(before, after)``."""
    pre = pre if pre is not None else nn.Identity()
    groups = getattr(last, "groups", 1)
    bias = last.bias is not None
    w_old = _weight_matrices(last)
    eqs = [_Normal(w.shape[1], w.shape[0], bias) for w in w_old]
    with torch.no_grad():
        for x, y in zip(xs, ys, strict=True):
            for eq, p, t in zip(eqs, _patches(last, pre(x)), _targets(last, y), strict=True):
                eq.add(p, t)
    old = []
    for g, w in enumerate(w_old):
        cols = w.T
        if bias:
            cols = torch.cat([cols, last.bias.detach().double().chunk(groups)[g][None, :]], dim=0)
        old.append(cols)
    new = [eq.solve(ridge) for eq in eqs]
    yy = sum(eq.yy for eq in eqs) or 1e-300
    err_old = math.sqrt(sum(eq.error(w) for eq, w in zip(eqs, old, strict=True)) / yy)
    err_new = math.sqrt(sum(eq.error(w) for eq, w in zip(eqs, new, strict=True)) / yy)
    if err_new < err_old:
        d = w_old[0].shape[1]
        weight = torch.cat([w[:d].T for w in new]).reshape(last.weight.shape)
        with torch.no_grad():
            last.weight.copy_(weight.to(last.weight.dtype))
            if bias:
                last.bias.copy_(torch.cat([w[d] for w in new]).to(last.bias.dtype))
    return err_old, min(err_old, err_new)


def _fit_nonlinear(
    layer: FactorizedLayer, chain: nn.Module, xs: list[Tensor], ys: list[Tensor], cfg: CalibrationConfig
) -> tuple[float, float]:
    """A few Adam steps on the layer's factors to match ``chain(dense output)``; kept only if it helps."""
    for p in chain.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        targets = [chain(y) for y in ys]
    norm = sum(float(t.pow(2).sum()) for t in targets) or 1e-300

    def error() -> float:
        with torch.no_grad():
            return math.sqrt(sum(float((chain(layer(x)) - t).pow(2).sum()) for x, t in zip(xs, targets)) / norm)

    before = error()
    saved = copy.deepcopy(layer.state_dict())
    params = [p for p in layer.parameters() if p.requires_grad]
    groups = [{"params": [p], "lr": cfg.lr * float(p.detach().pow(2).mean().sqrt()) + 1e-12} for p in params]
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        for _ in range(cfg.steps):
            i = int(torch.randint(len(xs), (1,), generator=gen))
            opt.zero_grad(set_to_none=True)
            loss = (chain(layer(xs[i])) - targets[i]).pow(2).mean()
            loss.backward()
            opt.step()
    after = error()
    if not after < before:
        layer.load_state_dict(saved)
        after = before
    return before, after


def _batches(inputs: Tensor, size: int) -> list[Tensor]:
    return [inputs[i : i + size] for i in range(0, inputs.shape[0], size)]


def calibrate_(
    model: nn.Module,
    dense: nn.Module,
    calib_data: Any,
    *,
    config: CalibrationConfig | None = None,
    layers: Sequence[str] | None = None,
) -> CalibrationReport:
    """Reconstruct the factorized layers of ``model`` (in place) from ``dense``'s responses.

    Args:
        model: the compressed network (modified in place).
        dense: the network it was compressed from; its modules have the same names (with BatchNorms folded
            where ``model``'s were).
        calib_data: calibration inputs: a tensor, or a DataLoader yielding ``(inputs, targets)`` or inputs.
        config: the calibration settings.
        layers: names of the factorized layers to calibrate (default: all, in execution order).

    Returns:
        Per layer the relative output errors before and after.

    References:
        Zhang et al. 2016, "Accelerating Very Deep Convolutional Networks for Classification and Detection"
        (asymmetric reconstruction of responses).
    """
    import time

    from factorch.data.calib import calibration_inputs

    cfg = config or CalibrationConfig()
    t0 = time.perf_counter()
    inputs = calibration_inputs(calib_data, cfg.n_samples)
    modules = dict(model.named_modules())
    dense_modules = dict(dense.named_modules())
    flags = {m: m.training for m in (model, dense)}
    model.eval()
    dense.eval()
    report = CalibrationReport(n_samples=int(inputs.shape[0]))
    try:
        order = execution_order(model, inputs[:1])
        names = [n for n in order if isinstance(modules[n], FactorizedLayer)]
        if layers is not None:
            unknown = [n for n in layers if n not in modules]
            if unknown:
                raise ValueError(f"calibrate_: no layer named {unknown[0]!r} in the model")
            names = [n for n in names if n in set(layers)]
        batches = _batches(inputs, cfg.batch_size)
        with progress_bar("calibrating", len(names), enabled=cfg.progress) as advance:
            for name in names:
                row = LayerCalibration(name)
                report.layers.append(row)
                layer = modules[name]
                if name not in dense_modules:
                    row.skipped = "no layer of that name in the dense model"
                    advance()
                    continue
                xs = [capture(model, layer, b, "input") for b in batches]
                ys = [capture(dense, dense_modules[name], b, "output") for b in batches]
                fitted = _fit_last_stage(layer, xs, ys, cfg.ridge)
                if isinstance(fitted, str):
                    row.skipped = fitted
                    advance()
                    continue
                row.rel_error_before, row.rel_error_linear = fitted
                chain = following_chain(model, order, name)
                if cfg.nonlinear and cfg.steps > 0 and any(isinstance(m, ACTIVATIONS) for m in chain):
                    copies = [copy.deepcopy(m).eval() for m in chain]
                    for m in copies:
                        if hasattr(m, "inplace"):
                            m.inplace = False
                    row.nonlinearity = " -> ".join(type(m).__name__ for m in copies)
                    rows_per_sample = max(1, ys[0][0].numel() // ys[0].shape[1] if ys[0].ndim > 2 else 1)
                    keep = max(1, cfg.max_rows // rows_per_sample)
                    xs_nl, ys_nl = _subsample(xs, ys, keep)
                    for p in layer.parameters():
                        p.requires_grad_(True)
                    row.act_error_before, row.act_error_after = _fit_nonlinear(
                        layer, nn.Sequential(*copies), xs_nl, ys_nl, cfg
                    )
                advance()
    finally:
        for m, flag in flags.items():
            m.train(flag)
    report.seconds = time.perf_counter() - t0
    return report


def _subsample(xs: list[Tensor], ys: list[Tensor], keep: int) -> tuple[list[Tensor], list[Tensor]]:
    out_x, out_y, n = [], [], 0
    for x, y in zip(xs, ys, strict=True):
        if n >= keep:
            break
        out_x.append(x[: keep - n])
        out_y.append(y[: keep - n])
        n += out_x[-1].shape[0]
    return out_x, out_y
