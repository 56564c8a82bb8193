"""Accuracy recovery on the pretrained reference models: plain decomposition vs calibration vs distillation.

For vgg and resnet20 (the shipped Fashion-MNIST weights), at whole-model MACs targets (``AutoConfig``, all
four methods, candidates scored on 512 training images), one process:

* **plain**: the factorized model as decomposed (weights only), no data used to fit it;
* **calibrated**: the same choice, then ``CalibrationConfig(n_samples=512)`` (asymmetric reconstruction of
  each layer's responses, layer after layer; no labels, no SGD over the network), with its wall time;
* **+ distillation**: the calibrated model fine-tuned with ``factorch.finetune(..., teacher=dense)`` for
  ``--epochs`` epochs (KD at T=4, alpha=0.9, SGD + cosine from lr 0.01), test accuracy after every epoch;
* **CP only** (``--cp-epochs``, at the fine-tuning targets): the same with ``methods=("cp",)``, fine-tuned
  for more epochs, to show that CP layers stay stable under the same recipe (accuracy per epoch).

Accuracy is on the full Fashion-MNIST test set (10 000 images). Run from the repository root::

    .venv/bin/python benchmarks/recover.py [--models vgg,resnet20] [--targets 0.33,0.25,0.2]
        [--finetune-targets 0.33] [--epochs 1] [--resume]

Writes ``benchmarks/results/recover.{json,md}`` after every run; ``--resume`` keeps finished runs (and
fine-tuning continues from its last epoch checkpoint under ``runs/bench-recover``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import factorch
from factorch.data import calibration_subset, fashion_mnist
from factorch.train import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs") / "bench-recover"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vgg,resnet20")
    parser.add_argument("--targets", default="0.33,0.25,0.2")
    parser.add_argument("--finetune-targets", default="0.33", help="targets whose calibrated model is fine-tuned")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--cp-epochs", type=int, default=2, help="epochs of the CP-only rows (0: no such rows)")
    parser.add_argument("--samples", type=int, default=512, help="calibration samples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = fashion_mnist("train"), fashion_mnist("test")
    calib = DataLoader(calibration_subset(fashion_mnist("train", augment=False), args.samples), batch_size=128)
    x = test[0][0][None]
    path = RESULTS / "recover.json"
    out = json.loads(path.read_text()) if args.resume and path.is_file() else {"models": {}}
    out["setup"] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "calibration": f"{args.samples} Fashion-MNIST training images (no labels)",
        "finetune": f"{args.epochs} epoch(s) ({args.cp_epochs} for the CP-only rows) of distillation from the "
        "dense model, T=4, alpha=0.9, lr 0.01 cosine",
    }

    def acc(m: torch.nn.Module) -> float:
        return round(evaluate(m, test, show_progress=False)["accuracy"], 2)

    for name in args.models.split(","):
        dense = factorch.models.create_model(name, pretrained=True).eval()
        res = out["models"].setdefault(name, {"dense_accuracy": acc(dense), "rows": {}})
        print(f"== {name}: dense {res['dense_accuracy']} %", flush=True)
        runs = [(t, "all", args.epochs) for t in args.targets.split(",")]
        if args.cp_epochs:
            runs += [(t, "cp", args.cp_epochs) for t in args.finetune_targets.split(",")]
        for target, methods, epochs in runs:
            key = f"macs={float(target):g}"
            row_key = key if methods == "all" else f"{key} {methods}"
            row = res["rows"].get(row_key, {})
            tune = target in args.finetune_targets.split(",")
            if row.get("done") and (not tune or row.get("finetune")):
                continue
            chosen = ("tucker2", "cp", "svd", "spatial-svd") if methods == "all" else tuple(methods.split("+"))
            cfg = dict(methods=chosen, calib_samples=args.samples, measure=False)
            t0 = time.perf_counter()
            plain, report = factorch.compress(
                dense, factorch.AutoConfig(key, **cfg), example_inputs=x, calib_data=calib
            )
            row.update(
                target=key,
                method_set=methods,
                macs_ratio=round(report.totals["macs_ratio"], 4),
                params_ratio=round(report.totals["params_ratio"], 4),
                methods=sorted({r.method for r in report.layers if r.skipped is None}),
                plain_accuracy=acc(plain),
                search_s=round(time.perf_counter() - t0, 1),
            )
            calibration = factorch.CalibrationConfig(n_samples=args.samples)
            calibrated, report = factorch.compress(
                dense, factorch.AutoConfig(key, calibrate=calibration, **cfg), example_inputs=x, calib_data=calib
            )
            cal = report.totals["calibration"]
            row.update(calibrated_accuracy=acc(calibrated), calibration_s=round(cal["seconds"], 1), done=True)
            res["rows"][row_key] = row
            print(json.dumps(row), flush=True)
            write(out)
            if tune:
                history: list[dict] = []
                folder = RUNS / f"{name}-{row_key.replace(' ', '-')}"
                # without --resume a checkpoint left by an earlier run (maybe of another model) is not reused
                resume = args.resume and (folder / "checkpoint.pt").is_file()
                t0 = time.perf_counter()
                factorch.finetune(
                    calibrated,
                    DataLoader(train, batch_size=128),
                    teacher=dense,
                    epochs=epochs,
                    test_data=test,
                    out_dir=folder,
                    resume=resume,
                    history=history,
                )
                row["finetune"] = {
                    "epochs": epochs,
                    "per_epoch_accuracy": [round(h["test_accuracy"], 2) for h in history],
                    "seconds": round(time.perf_counter() - t0, 1),
                    "resumed": resume,
                }
                print(json.dumps(row["finetune"]), flush=True)
                write(out)


def write(out: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recover.json").write_text(json.dumps(out, indent=2) + "\n")
    s = out["setup"]
    lines = [
        "# recover: plain decomposition vs calibration vs distillation (AutoConfig, all methods)",
        "",
        f"torch {s['torch']}, {s['threads']} threads, {s['platform']}. Calibration: {s['calibration']}. "
        f"Fine-tuning: {s['finetune']}. Accuracy: Fashion-MNIST test set (10 000 images); 'loss' = points "
        "below the dense model.",
        "",
    ]
    for name, res in out["models"].items():
        d = res["dense_accuracy"]
        lines += [
            f"## {name} (dense {d:.2f} %)",
            "",
            "| target | searched | search s | MACs x | params x | methods | plain % (loss) | calibrated % (loss) "
            "| calibration s | + distillation % per epoch (loss) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"].values():
            ft = r.get("finetune")
            tuned = (
                ", ".join(f"{a:.2f}" for a in ft["per_epoch_accuracy"]) + f" ({d - ft['per_epoch_accuracy'][-1]:.2f})"
                if ft
                else "-"
            )
            lines.append(
                f"| {r['target']} | {r.get('method_set', 'all')} | {r.get('search_s', float('nan')):.0f} "
                f"| {r['macs_ratio']:.3f} | {r['params_ratio']:.3f} "
                f"| {', '.join(r['methods'])} "
                f"| {r['plain_accuracy']:.2f} ({d - r['plain_accuracy']:.2f}) "
                f"| {r['calibrated_accuracy']:.2f} ({d - r['calibrated_accuracy']:.2f}) | {r['calibration_s']:.1f} "
                f"| {tuned} |"
            )
        lines.append("")
    lines += [
        "'search s': wall time of the plain row's AutoConfig search (the sensitivity table is shared by a model's "
        "rows, so the first row of a model pays for scoring; later rows re-use it).",
        "",
    ]
    (RESULTS / "recover.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
