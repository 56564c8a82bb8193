"""factorch vs tensorly-torch vs hand-rolled tensorly Tucker-2 on the pretrained models, at one MACs target.

For vgg and resnet20 (the shipped Fashion-MNIST weights), every row at a whole-model MACs ratio <= ``--target``
(default 0.33) and as close to it as each method allows; the first conv and the final classifier stay dense
everywhere (factorch's ``keep_edges`` default). Rows, all built in one process from the same dense model:

* ``factorch auto``: ``AutoConfig("macs=T")``, all four methods, candidates scored on the calibration images;
* ``factorch auto + calib``: the same with ``calibrate=CalibrationConfig(n_samples=512)``. Both rows keep
  AutoConfig's sensitivity tables in one folder, emptied before the plain row (a cold search, honestly timed;
  kept with ``--resume``, so an interrupted search goes on and the row says how many candidates were cached);
  the calibrated row reuses them, and its wall time is shown with the plain row's search time added;
* ``factorch uniform tucker2``: ``factorch.auto.uniform_compress(model, "tucker2", "macs=T")``, one MACs ratio
  for every layer (bisection; its wall time includes the 12 bisection ``compress`` calls);
* ``tltorch tucker`` / ``tltorch cp``: ``tltorch.FactorizedConv.from_conv(conv, rank=R, factorization=...,
  implementation="factorized")`` for every spatial conv but the first (Tucker with
  ``fixed_rank_modes="spatial"``, i.e. Tucker-2), one rank fraction ``R`` for all layers, the largest found by
  bisection whose whole-model MACs meet the target. ``from_conv``'s default ``implementation="reconstructed"``
  rebuilds the full kernel and runs a dense conv on every call (no MACs saved), hence ``"factorized"``. MACs are
  computed analytically per sample from the layer's ranks and geometry, for the ops ``tltorch`` runs:
  Tucker: 1x1 (C_in -> R_in) -> kxk core conv (R_in -> R_out, the conv's stride/padding) -> 1x1 (R_out -> C_out);
  CP: 1x1 (C_in -> R) -> depthwise kx1 along H (stride on H) -> depthwise 1xk along W -> 1x1 (R -> C_out).
  The per-call rebuild of the core kernel (Tucker) and the CP weight scaling are not per-sample and not
  counted there; the ``profiled`` column (``factorch.profile`` at batch 1) counts everything that runs;
* ``tensorly partial_tucker``: the common hand-rolled Tucker-2: per conv
  ``tensorly.decomposition.partial_tucker(W, rank=[r_out, r_in], modes=[0, 1])`` (pytorch backend, float64,
  tensorly's defaults) -> ``nn.Sequential(1x1, kxk core conv, 1x1 with the bias)``, ranks ``round(f * C)`` with
  one fraction ``f`` for all layers (bisection), MACs by ``factorch.profile``.

musco-pytorch gets no row (see ``MUSCO_NOTE``). Per row: parameters and MACs (compressed / dense), test accuracy
without fine-tuning and after ``--epochs`` of the same distillation recipe for every row
(``factorch.finetune(..., teacher=dense)``: KD at T=4, alpha=0.9, SGD + cosine from lr 0.01, batch 128,
augmented training images), compression wall time, and latency (compressed / dense, median of the per-pair
ratios of alternating calls, ``factorch.compare_latency``) at batch 1 and 64. Run from the repository root::

    .venv/bin/pip install -c constraints.txt tensorly-torch opt-einsum packaging   # or: pip install -e '.[peers]'
    .venv/bin/python benchmarks/peers.py [--models vgg,resnet20] [--target 0.33] [--epochs 1] [--resume]

Writes ``benchmarks/results/peers.{json,md}`` (``--out`` elsewhere) after every row; ``--resume`` keeps finished
rows, and fine-tuning continues from its last epoch checkpoint under ``runs/bench-peers``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

import factorch
from factorch.data import calibration_subset, fashion_mnist
from factorch.train import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs") / "bench-peers"
ROWS = (
    "factorch auto",
    "factorch auto + calib",
    "factorch uniform tucker2",
    "tltorch tucker",
    "tltorch cp",
    "tensorly partial_tucker",
)
FACTORCH_ROWS = ROWS[:3]
MUSCO_NOTE = (
    "musco-pytorch: no row. musco-pytorch 1.0.6 cannot be installed as declared on Python 3.11: it pins "
    "tensorly 0.4.5 and scikit-tensor-py3, which pins numpy 1.16 / scipy 1.3. It only runs from a separate "
    "virtualenv installed with --no-deps and numpy 1.23.5 + scipy 1.10, driven as a subprocess; even then its CP "
    "path calls the removed torch.solve (needs a shim to torch.linalg.solve) and its SVD layer for 1x1 convs fails "
    "on a missing min_rank attribute (shared/PEERS.md)."
)
VERIFY_TOL = 1e-4  # relative output error allowed when checking that a tltorch layer computes the conv it replaces


# --------------------------------------------------------------------------------------------- model surgery


def conv_geometry(model: nn.Module, x: Tensor) -> dict[str, tuple[nn.Conv2d, tuple[int, ...], tuple[int, ...]]]:
    """``{name: (conv, input shape, output shape)}`` of every ``nn.Conv2d``, in execution order (batch 1)."""
    seen: dict[str, tuple[nn.Conv2d, tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):

            def hook(mod, args, out, name=name):
                seen.setdefault(name, (mod, tuple(args[0].shape), tuple(out.shape)))

            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def spatial_convs(model: nn.Module, x: Tensor) -> dict[str, tuple[nn.Conv2d, tuple[int, ...], tuple[int, ...]]]:
    """The convs with a kernel larger than 1x1, except the first conv the input meets (kept dense)."""
    geometry = conv_geometry(model, x)
    first = next(iter(geometry))
    return {n: g for n, g in geometry.items() if n != first and tuple(g[0].kernel_size) != (1, 1)}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule ``name``; raises if its parent or the child itself is missing."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child not in parent._modules:
        raise ValueError(f"{name!r}: {type(parent).__name__} has no child {child!r}")
    parent._modules[child] = new


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dense_conv_macs(conv: nn.Conv2d, out_shape: tuple[int, ...]) -> int:
    """Per-sample MACs of a plain conv (bias not counted, as ``factorch.profile``)."""
    c_out, c_in_g, kh, kw = conv.weight.shape
    return c_out * c_in_g * kh * kw * out_shape[2] * out_shape[3]


# --------------------------------------------------------------------------------------------- tensorly-torch


def tltorch_macs(layer: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Per-sample MACs of the ops a ``FactorizedConv`` with ``implementation="factorized"`` runs (2-D convs).

    Tucker (``tltorch.functional.tucker_conv``): 1x1 conv C_in -> R_in on the input grid, a dense kxk conv
    R_in -> R_out with the layer's stride/padding/dilation, 1x1 conv R_out -> C_out on the output grid.
    CP (``cp_conv``): 1x1 conv C_in -> R on the input grid, a depthwise k_h x 1 conv along H (stride on H only:
    output H_out x W_in), a depthwise 1 x k_w conv along W (H_out x W_out), 1x1 conv R -> C_out.
    Not counted: the batch-independent rebuild of the Tucker kxk kernel from the core and the spatial factors
    on every call, the CP weights' element-wise scaling, bias additions.
    """
    if layer.implementation != "factorized":
        raise ValueError(f"tltorch_macs counts implementation='factorized', got {layer.implementation!r}")
    if layer.order != 2 or layer.n_layers != 1:
        raise ValueError("tltorch_macs counts single 2-D convolutions")
    c_out, c_in = layer.out_channels, layer.in_channels
    kh, kw = layer.kernel_size
    hw_in = in_shape[2] * in_shape[3]
    h_out, w_out = out_shape[2], out_shape[3]
    kind = type(layer.weight).__name__
    if kind == "TuckerTensor":
        r_out, r_in = layer.rank[0], layer.rank[1]
        return c_in * r_in * hw_in + r_in * r_out * kh * kw * h_out * w_out + r_out * c_out * h_out * w_out
    if kind == "CPTensor":
        r = layer.rank
        return c_in * r * hw_in + r * kh * h_out * in_shape[3] + r * kw * h_out * w_out + r * c_out * h_out * w_out
    raise ValueError(f"tltorch_macs: no formula for {kind}")


def tltorch_layer(conv: nn.Conv2d, factorization: str, rank: float | tuple[int, ...], *, decompose: bool) -> nn.Module:
    import tltorch

    extra = {"fixed_rank_modes": "spatial"} if factorization == "tucker" and isinstance(rank, float) else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return tltorch.FactorizedConv.from_conv(
            conv,
            rank=rank,
            factorization=factorization,
            implementation="factorized",
            decompose_weights=decompose,
            **extra,
        )


def tltorch_cannot(conv: nn.Conv2d, in_shape: tuple[int, ...]) -> str | None:
    """Why tltorch's ``FactorizedConv.from_conv`` cannot represent ``conv`` (``None``: it can, checked on one input)."""
    if conv.groups != 1:
        return f"groups={conv.groups} (FactorizedConv has no groups)"
    if len(set(conv.stride)) != 1:
        return f"stride={conv.stride} (from_conv keeps stride[0] only)"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r} (FactorizedConv pads with zeros)"
    torch.manual_seed(0)
    x = torch.randn(1, *in_shape[1:])
    c_out, c_in, kh, kw = conv.weight.shape
    with torch.no_grad():
        ref = conv(x)
        # full-rank Tucker reproduces the kernel: the output must be the dense conv's
        full = tltorch_layer(conv, "tucker", (c_out, c_in, kh, kw), decompose=True)
        checks = [("tucker at full rank vs the dense conv", full(x), ref)]
        # CP at any rank: the output must be the conv, with this geometry, of its own reconstructed kernel
        cp = tltorch_layer(conv, "cp", 0.25, decompose=False)
        cp_ref = F.conv2d(x, cp.weight.to_tensor(), cp.bias, conv.stride, conv.padding, conv.dilation)
        checks.append(("cp vs a conv with its reconstructed kernel", cp(x), cp_ref))
    for label, out, expected in checks:
        if out.shape != expected.shape:
            return f"{label}: output shape {tuple(out.shape)} instead of {tuple(expected.shape)}"
        err = float((out - expected).norm() / expected.norm().clamp_min(1e-12))
        if not err < VERIFY_TOL:
            return f"{label}: relative output error {err:.2e} > {VERIFY_TOL:g}"
    return None


def bisect(ratio_of: Callable[[float], float], target: float, steps: int = 20) -> float | None:
    """The largest ``f`` in (0, 1) found by bisection with ``ratio_of(f) <= target`` (``None``: none found)."""
    lo, hi, best = 0.0, 1.0, None
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if ratio_of(mid) <= target:
            lo, best = mid, mid
        else:
            hi = mid
    return best


def build_tltorch(dense: nn.Module, x: Tensor, target: float, factorization: str) -> tuple[nn.Module, dict]:
    import tltorch  # noqa: F401  (sets tensorly's global backend to pytorch on import)

    layers = spatial_convs(dense, x)
    dense_macs = factorch.profile(dense, (x,)).total_macs
    skipped, todo = {}, {}
    for name, (conv, in_shape, out_shape) in layers.items():
        reason = tltorch_cannot(conv, in_shape)
        if reason:
            skipped[name] = reason
        else:
            todo[name] = (conv, in_shape, out_shape)
    replaced_dense = sum(dense_conv_macs(c, o) for c, _, o in todo.values())

    def macs_at(rank: float) -> int:
        return sum(
            tltorch_macs(tltorch_layer(c, factorization, rank, decompose=False), i, o) for c, i, o in todo.values()
        )

    t0 = time.perf_counter()
    rank = bisect(lambda r: (dense_macs - replaced_dense + macs_at(r)) / dense_macs, target)
    if rank is None:
        raise ValueError(f"no tltorch {factorization} rank fraction reaches macs={target:g}")
    model = copy.deepcopy(dense)
    ranks, macs = {}, dense_macs - replaced_dense
    for name, (conv, in_shape, out_shape) in todo.items():
        layer = tltorch_layer(conv, factorization, rank, decompose=True)
        replace_module(model, name, layer)
        macs += tltorch_macs(layer, in_shape, out_shape)
        ranks[name] = list(layer.rank) if isinstance(layer.rank, (tuple, list)) else layer.rank
    seconds = time.perf_counter() - t0
    form = (
        "analytic: 1x1 -> kxk core -> 1x1"
        if factorization == "tucker"
        else "analytic: 1x1 -> depthwise kx1 -> depthwise 1xk -> 1x1"
    )
    return model.eval(), {
        "compress_s": seconds,
        "macs_ratio": macs / dense_macs,
        "macs_counted": form + " (per sample, implementation='factorized')",
        "setting": f"rank={rank:.4f}" + (", fixed_rank_modes='spatial'" if factorization == "tucker" else ""),
        "ranks": ranks,
        "skipped": skipped,
    }


# --------------------------------------------------------------------------------------------- hand-rolled


def tucker2_sequential(conv: nn.Conv2d, r_out: int, r_in: int) -> nn.Sequential:
    """``1x1 (C_in -> r_in) -> kxk (r_in -> r_out, the conv's geometry) -> 1x1 (r_out -> C_out, the conv's bias)``."""
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
    core = nn.Conv2d(
        r_in,
        r_out,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        padding_mode=conv.padding_mode,
        bias=False,
    )
    last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
    return nn.Sequential(first, core, last)


def hand_ranks(conv: nn.Conv2d, fraction: float) -> tuple[int, int]:
    return max(1, round(fraction * conv.out_channels)), max(1, round(fraction * conv.in_channels))


def build_partial_tucker(dense: nn.Module, x: Tensor, target: float) -> tuple[nn.Module, dict]:
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    layers = spatial_convs(dense, x)
    skipped = {n: f"groups={c.groups}" for n, (c, _, _) in layers.items() if c.groups != 1}
    todo = {n: c for n, (c, _, _) in layers.items() if n not in skipped}
    dense_macs = factorch.profile(dense, (x,)).total_macs

    def skeleton(fraction: float) -> nn.Module:
        model = copy.deepcopy(dense)
        for name, conv in todo.items():
            replace_module(model, name, tucker2_sequential(conv, *hand_ranks(conv, fraction)))
        return model

    t0 = time.perf_counter()
    fraction = bisect(lambda f: factorch.profile(skeleton(f), (x,)).total_macs / dense_macs, target)
    if fraction is None:
        raise ValueError(f"no partial_tucker rank fraction reaches macs={target:g}")
    model, ranks = copy.deepcopy(dense), {}
    with tl.backend_context("pytorch"), torch.no_grad():
        for name, conv in todo.items():
            r_out, r_in = hand_ranks(conv, fraction)
            (core, (u_out, u_in)), _errors = partial_tucker(
                conv.weight.detach().double(), rank=[r_out, r_in], modes=[0, 1]
            )
            seq = tucker2_sequential(conv, r_out, r_in)
            seq[0].weight.copy_(u_in.t()[:, :, None, None])
            seq[1].weight.copy_(core)
            seq[2].weight.copy_(u_out[:, :, None, None])
            if conv.bias is not None:
                seq[2].bias.copy_(conv.bias)
            replace_module(model, name, seq)
            ranks[name] = [r_out, r_in]
    seconds = time.perf_counter() - t0
    return model.eval(), {
        "compress_s": seconds,
        "macs_ratio": factorch.profile(model, (x,)).total_macs / dense_macs,
        "macs_counted": "factorch.profile (plain convs)",
        "setting": f"ranks = round({fraction:.4f} * C)",
        "ranks": ranks,
        "skipped": skipped,
    }


# --------------------------------------------------------------------------------------------- factorch


def build_factorch_auto(
    dense: nn.Module,
    x: Tensor,
    target: float,
    calib: DataLoader,
    samples: int,
    cache_dir: Path,
    calibrated: bool,
    fresh: bool,
) -> tuple[nn.Module, dict]:
    """``AutoConfig`` with its sensitivity tables in ``cache_dir``: emptied first when ``fresh`` (the plain row
    of a run without ``--resume``: a cold search, honestly timed), reused by the calibrated row (same tables: the
    search is shared; the row says so) and by a resumed plain row (an interrupted search goes on; the row's
    ``search.cached`` says how many candidates it did not score again)."""
    if fresh:
        shutil.rmtree(cache_dir, ignore_errors=True)
    cfg = factorch.AutoConfig(
        f"macs={target:g}",
        calib_samples=samples,
        measure=False,
        cache_dir=str(cache_dir),
        progress=False,
        calibrate=factorch.CalibrationConfig(n_samples=samples) if calibrated else None,
    )
    t0 = time.perf_counter()
    model, report = factorch.compress(dense, cfg, example_inputs=x, calib_data=calib)
    seconds = time.perf_counter() - t0
    info = _factorch_info(report, seconds)
    info["setting"] = "AutoConfig, methods " + ", ".join(cfg.methods) + (", calibrated" if calibrated else "")
    stats = report.totals.get("sensitivity", {})
    info["search"] = {k: stats[k] for k in ("scored", "cached", "refined", "chosen") if k in stats}
    if calibrated:
        info["calibration_s"] = report.totals["calibration"]["seconds"]
    return model.eval(), info


def build_factorch_uniform(dense: nn.Module, x: Tensor, target: float) -> tuple[nn.Module, dict]:
    t0 = time.perf_counter()
    model, report, cfg = factorch.auto.uniform_compress(dense, "tucker2", f"macs={target:g}", example_inputs=x)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    factorch.compress(dense, cfg, example_inputs=x)
    info = _factorch_info(report, seconds)
    info["setting"] = (
        f"Tucker2Config(rank=MACRatioRank({cfg.rank.ratio:.4f})), 12 bisection steps; "
        f"one compress call {time.perf_counter() - t1:.1f} s"
    )
    return model.eval(), info


def _factorch_info(report: factorch.CompressionReport, seconds: float) -> dict:
    return {
        "compress_s": seconds,
        "macs_ratio": report.totals["macs_ratio"],
        "macs_counted": "factorch report (factorch.profile)",
        "methods": sorted({r.method for r in report.layers if r.skipped is None}),
        "ranks": {r.name: [r.method, *(r.ranks or ())] for r in report.layers if r.skipped is None},
        "skipped": {r.name: r.skipped for r in report.layers if r.skipped is not None},
    }


# --------------------------------------------------------------------------------------------- the run


class EpochSubset(Subset):
    """A subset that passes ``set_epoch`` on, so the augmentation of every fine-tuning run starts alike."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def row_done(row: dict | None, finetune: bool) -> bool:
    return bool(row) and "error" not in row and "accuracy" in row and (not finetune or "finetuned_accuracy" in row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vgg,resnet20")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
    parser.add_argument("--target", type=float, default=0.33, help="whole-model MACs ratio to stay at or below")
    parser.add_argument("--epochs", type=int, default=1, help="distillation epochs for every row")
    parser.add_argument("--samples", type=int, default=512, help="calibration / scoring images for factorch")
    parser.add_argument("--train-subset", type=int, default=None, help="fine-tune on this many training images")
    parser.add_argument("--test-subset", type=int, default=None, help="evaluate on this many test images")
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--repeats", type=int, default=30, help="timed pairs per batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for peers.json / peers.md")
    parser.add_argument("--resume", action="store_true", help="keep finished rows of an earlier run")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        if r not in ROWS:
            parser.error(f"--rows: unknown row {r!r}; choose from {', '.join(ROWS)}")
    torch.set_num_threads(args.threads)
    finetune = not args.no_finetune

    train = fashion_mnist("train")  # augmented, as in recover.py
    train_plain = fashion_mnist("train", augment=False)
    test = fashion_mnist("test")
    if args.train_subset:
        train = EpochSubset(train, calibration_subset(train, args.train_subset).indices)
    if args.test_subset:
        test = calibration_subset(test, args.test_subset)
    calib = DataLoader(calibration_subset(train_plain, args.samples), batch_size=128)
    x = fashion_mnist("test")[0][0][None]

    path = args.out / "peers.json"
    out = json.loads(path.read_text()) if args.resume and path.is_file() else {"models": {}}
    try:
        import tltorch

        tltorch_version = getattr(tltorch, "__version__", "installed")
    except ImportError as err:
        tltorch_version = f"not installed ({err})"
    import tensorly

    out["setup"] = {
        "torch": torch.__version__,
        "factorch": factorch.__version__,
        "tensorly": tensorly.__version__,
        "tltorch": tltorch_version,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "target": f"macs<={args.target:g}",
        "calibration": f"{args.samples} Fashion-MNIST training images (no labels)",
        "finetune": f"{args.epochs} epoch(s) of distillation from the dense model, T=4, alpha=0.9, lr 0.01 cosine, "
        f"batch 128, {len(train)} augmented training images",
        "test_images": len(test),
        "latency": f"compressed / dense, median of {args.repeats} paired alternating calls (factorch.compare_latency)",
        "musco": MUSCO_NOTE,
    }
    print(MUSCO_NOTE, flush=True)

    def acc(m: nn.Module) -> float:
        return round(evaluate(m, test, show_progress=False)["accuracy"], 2)

    for name in args.models.split(","):
        dense = factorch.models.create_model(name, pretrained=True).eval()
        res = out["models"].setdefault(name, {"rows": {}})
        res.update(
            dense_accuracy=acc(dense),
            dense_params=count_params(dense),
            dense_macs=factorch.profile(dense, (x,)).total_macs,
        )
        print(f"== {name}: dense {res['dense_accuracy']} %, {res['dense_params']} params, {res['dense_macs']} MACs")
        cache = RUNS / f"sensitivity-{name}-s{args.samples}"
        builders: dict[str, Callable[[], tuple[nn.Module, dict]]] = {
            "factorch auto": lambda: build_factorch_auto(
                dense, x, args.target, calib, args.samples, cache, False, not args.resume
            ),
            "factorch auto + calib": lambda: build_factorch_auto(
                dense, x, args.target, calib, args.samples, cache, True, False
            ),
            "factorch uniform tucker2": lambda: build_factorch_uniform(dense, x, args.target),
            "tltorch tucker": lambda: build_tltorch(dense, x, args.target, "tucker"),
            "tltorch cp": lambda: build_tltorch(dense, x, args.target, "cp"),
            "tensorly partial_tucker": lambda: build_partial_tucker(dense, x, args.target),
        }
        for key in rows:
            if args.resume and row_done(res["rows"].get(key), finetune):
                continue
            print(f"-- {name}: {key}", flush=True)
            torch.manual_seed(0)
            np.random.seed(0)  # tensorly's random initialisations (e.g. CP ranks above a mode's size) use numpy's
            try:
                model, info = builders[key]()
            except Exception as err:  # a peer failing is a result, not a crash of the benchmark
                traceback.print_exc()
                res["rows"][key] = {"row": key, "error": f"{type(err).__name__}: {err}"}
                write(out, args.out)
                continue
            cmp = factorch.compare_latency(
                dense, model, (x,), batch_sizes=(1, 64), threads=args.threads, repeats=args.repeats
            )
            row = {
                "row": key,
                **info,
                "params_ratio": count_params(model) / res["dense_params"],
                "profiled_macs_ratio": factorch.profile(model, (x,)).total_macs / res["dense_macs"],
                "accuracy": acc(model),
                "latency_ratio_b1": cmp.ratio(1),
                "latency_ratio_b64": cmp.ratio(64),
            }
            search = info.get("search", {})
            if key == "factorch auto + calib" and search.get("scored") == 0 and "factorch auto" in res["rows"]:
                # the sensitivity tables came from the plain row's cold search: count its time too
                row["shared_search_s"] = res["rows"]["factorch auto"].get("compress_s")
            res["rows"][key] = row
            print(json.dumps({k: v for k, v in row.items() if k not in ("ranks", "skipped")}), flush=True)
            write(out, args.out)
            if finetune:
                folder = RUNS / f"{name}-{key.replace(' ', '_').replace('+', 'plus')}-n{len(train)}-e{args.epochs}"
                resume = args.resume and (folder / "checkpoint.pt").is_file()
                history: list[dict] = []
                t0 = time.perf_counter()
                factorch.finetune(
                    model,
                    DataLoader(train, batch_size=128),
                    teacher=dense,
                    epochs=args.epochs,
                    test_data=test,
                    out_dir=folder,
                    resume=resume,
                    history=history,
                    show_progress=sys.stdout.isatty(),
                )
                row["finetuned_accuracy"] = round(history[-1]["test_accuracy"], 2)
                row["finetune"] = {
                    "epochs": args.epochs,
                    "per_epoch_accuracy": [round(h["test_accuracy"], 2) for h in history],
                    "per_epoch_train_loss": [round(h["train_loss"], 4) for h in history],
                    "per_epoch_test_loss": [round(h["test_loss"], 4) for h in history],
                    "seconds": round(time.perf_counter() - t0, 1),
                    "resumed": resume,
                }
                print(json.dumps(row["finetune"]), flush=True)
                write(out, args.out)
        verdict = acceptance(res)
        if verdict:
            res["acceptance"] = verdict
            print(verdict, flush=True)
        write(out, args.out)
    print((args.out / "peers.md").read_text())


def acceptance(res: dict) -> str:
    """Which factorch rows beat every peer row, without and with fine-tuning."""
    lines = []
    for field, label in (("accuracy", "no fine-tuning"), ("finetuned_accuracy", "after fine-tuning")):
        peers = {k: r[field] for k, r in res["rows"].items() if k not in FACTORCH_ROWS and field in r}
        ours = {k: r[field] for k, r in res["rows"].items() if k in FACTORCH_ROWS and field in r}
        if not peers or not ours:
            continue
        best_peer = max(peers, key=peers.get)
        above = [k for k, a in ours.items() if a > peers[best_peer]]
        lines.append(
            f"{label}: best peer {best_peer} {peers[best_peer]:.2f} %; factorch rows above every peer: "
            + (", ".join(f"{k} ({ours[k]:.2f} %)" for k in above) if above else "none")
        )
    return "; ".join(lines)


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def write(out: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "peers.json").write_text(json.dumps(out, indent=2) + "\n")
    s = out["setup"]
    lines = [
        f"# peers: factorch vs tensorly-torch vs hand-rolled tensorly Tucker-2 at {s['target']}",
        "",
        f"torch {s['torch']}, tensorly {s['tensorly']}, tensorly-torch {s['tltorch']}, {s['threads']} threads, "
        f"{s['platform']}. Fine-tuning (every row): {s['finetune']}. factorch calibration / scoring: "
        f"{s['calibration']}. Accuracy on {s['test_images']} Fashion-MNIST test images. Latency: {s['latency']}. "
        "First conv and classifier dense in every row. 'MACs x' is counted as the 'MACs counted' column says; "
        "'profiled' is factorch.profile at batch 1 for every row (it also counts tltorch's per-call kernel "
        "rebuild). Compress s includes each row's rank search.",
        "",
        f"{s['musco']}",
        "",
    ]
    for name, res in out["models"].items():
        d = res["dense_accuracy"]
        lines += [
            f"## {name} (dense {d:.2f} %, {res['dense_params']:,} params, {res['dense_macs']:,} MACs)",
            "",
            "| row | setting | params x | MACs x | MACs counted | profiled MACs x | acc. no FT % | "
            "acc. FT % | FT train loss | compress s | latency x b1 | latency x b64 | layers skipped |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(res["rows"].values(), key=lambda r: ROWS.index(r["row"]) if r["row"] in ROWS else len(ROWS)):
            if "error" in r:
                lines.append(f"| {r['row']} | failed: {r['error']} |" + " - |" * 11)
                continue
            ft = r.get("finetuned_accuracy")
            cells = [
                r["row"],
                r.get("setting", "-"),
                _f(r["params_ratio"], ".3f"),
                _f(r["macs_ratio"], ".3f"),
                r["macs_counted"],
                _f(r["profiled_macs_ratio"], ".3f"),
                _f(r["accuracy"], ".2f"),
                _f(ft, ".2f"),
                _f((r.get("finetune", {}).get("per_epoch_train_loss") or [None])[-1], ".3f"),
                _f(r["compress_s"], ".1f")
                + (
                    f" ({r['search']['cached']} of {r['search']['cached'] + r['search']['scored']} candidates cached)"
                    if r["row"] == "factorch auto" and r.get("search", {}).get("cached")
                    else ""
                )
                + (
                    f" (+ {r['shared_search_s']:.1f} search shared with factorch auto)"
                    if r.get("shared_search_s")
                    else ""
                ),
                _f(r["latency_ratio_b1"], ".2f"),
                _f(r["latency_ratio_b64"], ".2f"),
                "; ".join(f"{k}: {v.split(' (')[0]}" for k, v in r.get("skipped", {}).items()) or "-",
            ]
            lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
        if res.get("acceptance"):
            lines += ["", res["acceptance"]]
        lines.append("")
    (folder / "peers.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
