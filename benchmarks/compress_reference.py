"""Compress the pretrained reference models at VBMF ranks with every method, no fine-tuning.

For each model (``vgg``, ``resnet20``) and each config, record the whole-model params and MACs ratios
(compressed / dense), dense and compressed top-1 accuracy on the Fashion-MNIST test set, the wall time of
``factorch.compress`` and how many layers were compressed or skipped.

Run from the repository root::

    .venv/bin/python benchmarks/compress_reference.py [--models vgg resnet20] [--configs tucker2 cp4 ...]

Writes ``benchmarks/results/compress_reference.json`` and ``.md`` after every run (partial results survive
an interrupted run). Nothing is downloaded: the weights ship with factorch and the data are read locally.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
from pathlib import Path

import torch

import factorch
from factorch.train import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
CP_TIME_LIMIT_S = 240  # a CP config slower than this is re-run with n_iter_max=50

CONFIGS: dict[str, factorch.MethodConfig] = {
    "tucker2": factorch.Tucker2Config(rank="vbmf"),
    "tucker2+fold_bn": factorch.Tucker2Config(rank="vbmf", fold_bn=True),
    "tucker2@vbmf:0.5": factorch.Tucker2Config(rank="vbmf:0.5"),
    "svd": factorch.SVDConfig(rank="vbmf"),
    "svd+fold_bn": factorch.SVDConfig(rank="vbmf", fold_bn=True),
    "spatial-svd": factorch.SpatialSVDConfig(rank="vbmf"),
    "cp4": factorch.CPConfig(rank="vbmf", form="4"),
    "cp3": factorch.CPConfig(rank="vbmf", form="3"),
    "cp4@vbmf:0.5": factorch.CPConfig(rank="vbmf:0.5", form="4"),
}


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):  # noqa: ARG001
    raise _Timeout


def _compress(model: torch.nn.Module, cfg: factorch.MethodConfig, limit_s: int | None):
    """``(compressed, report, seconds)``; raises ``_Timeout`` past ``limit_s`` (None = no limit)."""
    example = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    old = signal.signal(signal.SIGALRM, _on_alarm)
    if limit_s:
        signal.alarm(limit_s)
    try:
        t0 = time.perf_counter()
        compressed, report = factorch.compress(model, cfg, example_inputs=example)
        return compressed, report, time.perf_counter() - t0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_one(model_name: str, model: torch.nn.Module, key: str, data, dense_acc: float) -> dict:
    cfg = CONFIGS[key]
    note = ""
    is_cp = isinstance(cfg, factorch.CPConfig)
    try:
        compressed, report, secs = _compress(model, cfg, CP_TIME_LIMIT_S if is_cp else None)
    except _Timeout:
        cfg = _with_iters(cfg, 50)
        note = f"default n_iter_max took > {CP_TIME_LIMIT_S} s (stopped); re-run with n_iter_max=50"
        compressed, report, secs = _compress(model, cfg, None)
    totals = report.to_dict()["totals"]
    acc = evaluate(compressed, data, show_progress=False)["accuracy"]
    errors = [r.rel_error for r in report.layers if r.rel_error is not None]
    return {
        "model": model_name,
        "config_name": key,
        "config": cfg.to_dict(),
        "params_ratio": totals["params_ratio"],
        "macs_ratio": totals["macs_ratio"],
        "params_before": totals["params_before"],
        "params_after": totals["params_after"],
        "macs_before": totals["macs_before"],
        "macs_after": totals["macs_after"],
        "dense_accuracy": dense_acc,
        "compressed_accuracy": acc,
        "accuracy_drop": dense_acc - acc,
        "compress_time_s": secs,
        "layers_compressed": totals["layers_compressed"],
        "layers_skipped": totals["layers_skipped"],
        "max_layer_rel_error": max(errors) if errors else None,
        "ranks": {r.name: list(r.ranks) for r in report.layers if r.ranks is not None},
        "skipped": {r.name: r.skipped for r in report.layers if r.skipped is not None},
        "note": note,
    }


def _with_iters(cfg: factorch.MethodConfig, n_iter_max: int) -> factorch.MethodConfig:
    d = cfg.to_dict()
    d["n_iter_max"] = n_iter_max
    return factorch.MethodConfig.from_dict(d)


COLUMNS = [
    ("model", "model", "{}"),
    ("config", "config_name", "{}"),
    ("params ratio", "params_ratio", "{:.3f}"),
    ("MACs ratio", "macs_ratio", "{:.3f}"),
    ("dense acc %", "dense_accuracy", "{:.2f}"),
    ("compressed acc %", "compressed_accuracy", "{:.2f}"),
    ("compress s", "compress_time_s", "{:.1f}"),
    ("compressed / skipped", None, None),
    ("note", "note", "{}"),
]


def _cells(row: dict) -> list[str]:
    out = []
    for _, k, fmt in COLUMNS:
        if k is None:
            out.append(f"{row['layers_compressed']} / {row['layers_skipped']}")
        else:
            out.append(fmt.format(row[k]) if row.get(k) is not None else "-")
    return out


def to_markdown(rows: list[dict], meta: dict) -> str:
    head = [c[0] for c in COLUMNS]
    lines = [
        "# compress_reference: VBMF ranks, no fine-tuning",
        "",
        f"Fashion-MNIST test set ({meta['test_samples']} images); ratios are compressed / dense for the whole "
        "model (profiled on a 1x1x28x28 input); the first conv and the classifier stay dense. "
        f"torch {meta['torch']}, {meta['threads']} threads, {meta['platform']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def save(rows: list[dict], meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compress_reference.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2))
    (RESULTS / "compress_reference.md").write_text(to_markdown(rows, meta))


def print_table(rows: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(to_markdown(rows, META))
        return
    table = Table(title="compress_reference (VBMF ranks, no fine-tuning)")
    for name, _, _ in COLUMNS:
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(*_cells(r))
    Console(width=max(120, Console().width)).print(table)


META: dict = {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg", "resnet20"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--resume", action="store_true", help="keep the runs already in the JSON and skip those (model, config) pairs"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = factorch.data.fashion_mnist("test")
    META.update(
        torch=torch.__version__,
        factorch=factorch.__version__,
        threads=args.threads,
        platform=platform.platform(),
        test_samples=len(data),
        cp_time_limit_s=CP_TIME_LIMIT_S,
    )
    rows: list[dict] = []
    out = RESULTS / "compress_reference.json"
    if args.resume and out.exists():
        rows = json.loads(out.read_text())["runs"]
    done = {(r["model"], r["config_name"]) for r in rows}
    models, dense = {}, {}
    for model_name in args.models:
        models[model_name] = factorch.models.create_model(model_name, pretrained=True).eval()
        dense[model_name] = evaluate(models[model_name], data, show_progress=False)["accuracy"]
        print(f"{model_name}: dense accuracy {dense[model_name]:.2f} %", flush=True)
    # configs outer, models inner: the slow CP configs come last, so an interrupted run still covers
    # every cheap method on both models
    for key in args.configs:
        for model_name in args.models:
            if (model_name, key) in done:
                continue
            row = run_one(model_name, models[model_name], key, data, dense[model_name])
            rows.append(row)
            save(rows, META)
            print(
                f"  {model_name:9s} {key:18s} params x{row['params_ratio']:.3f} MACs x{row['macs_ratio']:.3f} "
                f"acc {row['compressed_accuracy']:.2f} % ({row['compress_time_s']:.1f} s) {row['note']}",
                flush=True,
            )
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
