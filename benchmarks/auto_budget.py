"""AutoConfig vs uniform compression at the same whole-model target, and latency targets, on pretrained models.

For vgg and resnet20 (the shipped Fashion-MNIST weights), no fine-tuning, one process:

* at ``macs=0.33``, for each method (Tucker-2, CP, SVD, spatial SVD): the uniform baseline (one per-layer MACs
  ratio for every layer, the largest whose whole model meets the target: ``factorch.auto.uniform_compress``,
  decomposed with the same fit as AutoConfig's candidates) vs ``AutoConfig`` restricted to that method; then
  ``AutoConfig`` with all four methods;
* ``params=0.25`` with all methods (target accuracy of the budget);
* ``latency=0.5`` at batch 64 (2 threads): the measured whole-model latency ratio (median of paired runs,
  ``factorch.compare_latency``-style alternation, 20 pairs) and each accepted layer's measured ratio, with
  AutoConfig's default for latency targets (BatchNorms folded) and with ``fold_bn=False``, on eager torch; and,
  with the ``onnx`` extra installed, with ``runtime="onnxruntime"`` (candidates, dense layers and both whole
  models timed as ONNX Runtime sessions).

Accuracy is on the full Fashion-MNIST test set (10 000 images); candidates are scored on ``--calib`` training
images (default: AutoConfig's, 1024).
Run from the repository root (Fashion-MNIST from Debian's ``dataset-fashion-mnist``)::

    .venv/bin/python benchmarks/auto_budget.py [--models vgg,resnet20]

Writes ``benchmarks/results/auto_budget.{json,md}``; the sensitivity tables are cached (FACTORCH_CACHE).
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
from factorch.auto import AutoConfig, uniform_compress
from factorch.auto.search import fit_options
from factorch.auto.timing import has_onnxruntime
from factorch.data import calibration_subset, fashion_mnist
from factorch.train import evaluate

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,vgg")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--methods", default="tucker2,cp,svd,spatial-svd", help="methods compared with their uniform baseline"
    )
    parser.add_argument("--refine", type=int, default=1, help="AutoConfig(refine=...) rounds")
    parser.add_argument(
        "--polish", type=int, default=AutoConfig.polish, help="AutoConfig(polish=...): choices the local search may try"
    )
    parser.add_argument(
        "--calib", type=int, default=AutoConfig.calib_samples, help="training images the candidates are scored on"
    )
    parser.add_argument(
        "--keep-latency",
        action="store_true",
        help="skip the latency=0.5 rows and keep them from the last results (marked as from an earlier run)",
    )
    parser.add_argument(
        "--only-methods",
        action="store_true",
        help="only the per-method auto vs uniform rows; the model's other rows are kept from the last results "
        "(marked as from an earlier run)",
    )
    parser.add_argument(
        "--only-latency",
        action="store_true",
        help="only the latency=0.5 rows; the model's other (untimed) rows are kept from the last results",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = fashion_mnist("train", augment=False), fashion_mnist("test")
    calib = DataLoader(calibration_subset(train, args.calib), batch_size=128)
    x = test[0][0][None]

    def acc(m: torch.nn.Module) -> float:
        return round(evaluate(m, test, show_progress=False)["accuracy"], 2)

    out: dict = {
        "setup": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "calibration": f"{args.calib} Fashion-MNIST training images",
            "accuracy": "Fashion-MNIST test set, 10 000 images, no fine-tuning",
            "refine": args.refine,
            "polish": args.polish,
        },
        "models": {},
    }
    previous = RESULTS / "auto_budget.json"
    earlier = json.loads(previous.read_text())["models"] if previous.is_file() else {}
    out["models"] = {k: v for k, v in earlier.items() if k not in args.models.split(",")}  # not run now: kept
    for name in args.models.split(","):
        model = factorch.models.create_model(name, pretrained=True).eval()
        rows = []
        res = {"dense_accuracy": acc(model), "rows": rows}
        out["models"][name] = res
        print(f"== {name}: dense {res['dense_accuracy']} %", flush=True)

        def record(run: str, report, built, seconds: float, target: str | None = None) -> None:
            t = report.totals
            row = {
                "run": run,
                "target": target or t.get("target"),
                "params_ratio": round(t["params_ratio"], 4),
                "macs_ratio": round(t["macs_ratio"], 4),
                "latency_ratio": round(t["latency_ratio"], 4) if t.get("latency_ratio") else None,
                "latency_ratio_b1": round(t["latency_ratio_b1"], 4) if t.get("latency_ratio_b1") else None,
                "max_layer_latency_ratio": max(
                    (r.latency_ratio for r in report.layers if r.latency_ratio is not None), default=None
                ),
                "accuracy": acc(built),
                "methods": sorted({r.method for r in report.layers if r.skipped is None}),
                "layers_compressed": t["layers_compressed"],
                "time_s": round(seconds, 1),
                "calibration": args.calib,
                "polish": args.polish,
                "chosen": (t.get("sensitivity") or {}).get("chosen"),
                "sensitivity": t.get("sensitivity"),
            }
            if run.startswith("auto ") and f"uniform {run[5:]}" in {r["run"] for r in rows}:
                base = next(r for r in rows if r["run"] == f"uniform {run[5:]}")
                row["vs_uniform"] = round(row["accuracy"] - base["accuracy"], 2)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "sensitivity"}), flush=True)

        if args.only_latency:
            rows += [r for r in earlier.get(name, {}).get("rows", []) if not r["target"].startswith("latency")]
        for method in [] if args.only_latency else args.methods.split(","):
            t0 = time.perf_counter()
            # the uniform baseline decomposes with the same fit as AutoConfig's candidates (CP: 25 ALS sweeps)
            options = fit_options(AutoConfig("macs=0.33")).get(method, {})
            built, report, _ = uniform_compress(model, method, "macs=0.33", example_inputs=x, **options)
            record(f"uniform {method}", report, built, time.perf_counter() - t0, "macs=0.33")
            t0 = time.perf_counter()
            cfg = AutoConfig(
                "macs=0.33",
                methods=(method,),
                measure=False,
                refine=args.refine,
                polish=args.polish,
                calib_samples=args.calib,
            )
            built, report = factorch.compress(model, cfg, example_inputs=x, calib_data=calib)
            record(f"auto {method}", report, built, time.perf_counter() - t0)

        def keep_earlier(wanted) -> None:
            """The last results' rows for which ``wanted(row)``, marked as from an earlier run."""
            for r in earlier.get(name, {}).get("rows", []):
                if wanted(r):
                    rows.append({**r, "earlier_run": True, "calibration": r.get("calibration", 256)})
            res["unreachable"] = earlier.get(name, {}).get("unreachable", [])

        if args.only_methods:
            keep_earlier(lambda r: r["run"].startswith("auto all methods"))
            write(out)
            continue
        for target in () if args.only_latency else ("macs=0.33", "params=0.25"):
            t0 = time.perf_counter()
            cfg = AutoConfig(target, refine=args.refine, polish=args.polish, calib_samples=args.calib)
            built, report = factorch.compress(model, cfg, example_inputs=x, calib_data=calib)
            record("auto all methods", report, built, time.perf_counter() - t0)
        runs = [("torch", True), ("torch", False)] + ([("onnxruntime", True)] if has_onnxruntime() else [])
        if args.keep_latency:
            runs = []
            keep_earlier(lambda r: r["target"].startswith("latency"))
        for runtime, fold in runs:
            t0 = time.perf_counter()
            cfg = AutoConfig(
                "latency=0.5",
                batch_size=64,
                threads=args.threads,
                latency_repeats=9,
                fold_bn=fold,
                refine=args.refine,
                polish=args.polish,
                runtime=runtime,
                calib_samples=args.calib,
            )
            suffix = ("" if fold else "_no_fold_bn") + ("" if runtime == "torch" else f"_{runtime}")
            run = (
                "auto all methods"
                + ("" if fold else ", fold_bn=False")
                + ("" if runtime == "torch" else f", {runtime}")
            )
            try:
                built, report = factorch.compress(model, cfg, example_inputs=x, calib_data=calib)
            except ValueError as err:  # out of reach on this machine: say so, with the measured floor
                res.setdefault("unreachable", []).append({"run": run, "target": cfg.target, "error": str(err)})
                print(err, flush=True)
                continue
            record(run, report, built, time.perf_counter() - t0)
            (RESULTS / f"auto_budget_{name}_latency{suffix}.md").write_text(report.to_markdown())
        write(out)


def write(out: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "auto_budget.json").write_text(json.dumps(out, indent=2) + "\n")
    s = out["setup"]
    lines = [
        "# auto_budget: AutoConfig vs uniform compression (no fine-tuning)",
        "",
        f"torch {s['torch']}, {s['threads']} threads, {s['platform']}. Calibration: {s['calibration']}; "
        f"accuracy: {s['accuracy']}. AutoConfig(refine={s.get('refine', 1)}, polish={s.get('polish', 0)}): the "
        "built choice is the proposal (knapsack, balanced, minimax, each method alone, uniform per method, "
        "refined, then polished by a local search that tries at most `polish` choices) with the least "
        "whole-network KL on the calibration images ('chosen'); CP layers: 25 ALS sweeps, as scored, in the "
        "uniform runs too. 'vs uniform': accuracy points above the uniform run of the same method. Latency "
        "ratios: compressed / dense, median of 20 paired alternating runs at batch 64 (and 1), on eager torch "
        "unless the run names onnxruntime. MACs/params ratios: whole model.",
        "",
    ]
    for name, res in out["models"].items():
        lines += [
            f"## {name} (dense {res['dense_accuracy']:.2f} %)",
            "",
            "| run | target | params x | MACs x | time x b64 | time x b1 | slowest layer x | accuracy % | vs uniform "
            "| methods | chosen | s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            cells = [
                r["run"]
                + (
                    f" (earlier run, {r.get('calibration', 256)} calibration images, polish={r.get('polish', 0)})"
                    if r.get("earlier_run")
                    else ""
                ),
                r["target"] or "-",
                f"{r['params_ratio']:.3f}",
                f"{r['macs_ratio']:.3f}",
                f"{r['latency_ratio']:.3f}" if r["latency_ratio"] else "-",
                f"{r['latency_ratio_b1']:.3f}" if r["latency_ratio_b1"] else "-",
                f"{r['max_layer_latency_ratio']:.3f}" if r["max_layer_latency_ratio"] else "-",
                f"{r['accuracy']:.2f}",
                f"{r['vs_uniform']:+.2f}" if r.get("vs_uniform") is not None else "-",
                ", ".join(r["methods"]),
                r.get("chosen") or "-",
                f"{r['time_s']:.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if any(r.get("earlier_run") for r in res["rows"]):
            lines.append(
                "* rows marked (earlier run) are kept from the previous results file, measured by an earlier run with "
                "the calibration images named; they were not re-run with the rows above"
            )
        for u in res.get("unreachable", []):
            lines.append(f"* {u['run']} at `{u['target']}`: {u['error']}")
        lines.append("")
    (RESULTS / "auto_budget.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
