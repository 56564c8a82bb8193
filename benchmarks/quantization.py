"""Quantization on the pretrained reference models: factorch vs what users would otherwise do.

Rows (``--rows``, comma-separated families), every row on the shipped Fashion-MNIST weights, 512 calibration
images from the training set (a seeded subset, no labels), test accuracy on the full test set measured once
at the end of each row:

* ``ptq``: int8 weights (per channel, symmetric) and activations (per tensor, affine), no training:
  factorch's ``QuantConfig`` with each observer (minmax, percentile, mse), BatchNorms folded first, executed as
  fake quantization in torch; size = what ``factorch.save`` stores.
* ``onnx``: deployment on ONNX Runtime (CPU, ``--threads`` threads), three int8 models timed together:
  ``factorch.export_onnx(int8=True)`` (static QDQ, per-channel int8 weights, BatchNorms folded), ONNX
  Runtime's own ``quantize_static`` with its default settings on the plain exported model (what its docs
  show), and factorch's int8 export of the model factorized to ``macs=0.33`` (AutoConfig over Tucker-2, and
  over Tucker-2 and spatial SVD with ranks in multiples of 4: ONNX Runtime's fast int8 convolution needs input
  channels in multiples of 4 and at least 16 output channels; ``--fact-epochs`` epochs of distillation);
  latency at batch 1 and 64 against the float32 ONNX model and the dense eager float32 model, medians of
  paired, alternated calls in ``--latency-runs`` fresh processes (the median ratio and its spread over the runs);
  accuracy of each int8 model as run by ONNX Runtime.
* ``calib``: the run-to-run spread of int8 accuracy: ``factorch.export_onnx(int8=True)`` and ``quantize_static``
  (defaults) each calibrated on ``--calib-seeds`` different seeded subsets of 512 training images, accuracy
  as run by ONNX Runtime (mean, and min-max in brackets).
* ``qat``: 4-bit weights and activations (LSQ step sizes from ``--qat-observer`` ranges), ``--qat-epochs``
  epochs of distillation from the float model (SGD + cosine from ``--qat-lr``, augmented training set);
  ``--qat-edge-bits 8`` keeps the first conv and the classifier at 8 bits, as LSQ and PACT report W4A4.
* ``binary``: BinaryConnect, BWN and XNOR-Net weights, ``--binary-epochs`` epochs of distillation.
* ``peers``: ``torch.ao.quantization`` and torchao where they run here (the row says why not); ONNX
  Runtime's ``quantize_static`` is timed in the ``onnx`` rows, beside factorch's export.

Run from the repository root::

    .venv/bin/python benchmarks/quantization.py [--models vgg,resnet20] [--rows ptq,onnx,peers]

Writes ``benchmarks/results/quantization.{json,md}`` after every row, stamped with the commit and the thread
count; each row is merged into the file under a lock, so runs of different rows may go side by side.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from _common import commit
from torch import nn
from torch.utils.data import DataLoader

import factorch
from factorch.apply import edge_layers
from factorch.data import calibration_subset, fashion_mnist
from factorch.profiling.onnx import ort_session
from factorch.train import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs") / "bench-quant"
X = torch.zeros(1, 1, 28, 28)


def ort_accuracy(path: Path, test) -> float:
    session = ort_session(path, None, None)
    loader = DataLoader(test, batch_size=500)
    correct = total = 0
    for x, y in loader:
        out = session.run(None, {"x0": x.numpy()})[0]
        correct += int((np.argmax(out, 1) == y.numpy()).sum())
        total += len(y)
    return round(100.0 * correct / total, 2)


def paired_ort_latency(paths: list[Path], model_name: str, threads: int) -> dict:
    """Median seconds per call of each ONNX file and of the eager dense reference model, calls alternated,
    measured in a fresh process: with the training set in memory, paired ratios measured here came out skewed
    (x0.61 against x0.46 for the same pair of vgg models, see benchmarks/README.md)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_latency_worker, ([str(p) for p in paths], model_name, threads))


def _latency_worker(paths: list[str], model_name: str, threads: int, repeats: int = 20) -> dict:
    dense = factorch.models.create_model(model_name, pretrained=True).eval()
    sessions = [ort_session(Path(p), None, threads) for p in paths]
    out = {}
    torch.set_num_threads(threads)
    for size in (1, 64):
        x = X.repeat(size, 1, 1, 1)
        feeds = {"x0": x.numpy()}
        runs = [lambda s=s: s.run(None, feeds) for s in sessions]
        with torch.inference_mode():
            runs.append(lambda: dense(x))
            for run in runs:
                for _ in range(3):
                    run()
            times: list[list[float]] = [[] for _ in runs]
            for i in range(repeats):
                order = range(len(runs)) if i % 2 == 0 else reversed(range(len(runs)))
                for k in order:
                    t0 = time.perf_counter()
                    runs[k]()
                    times[k].append(time.perf_counter() - t0)
        out[size] = [statistics.median(t) for t in times]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vgg,resnet20")
    parser.add_argument("--rows", default="ptq,onnx,peers")
    parser.add_argument("--row-filter", default="", help="only the rows whose name contains this")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--qat-observer", default="minmax", help="initial weight and activation ranges of W4A4")
    parser.add_argument("--qat-lr", type=float, default=0.01, help="initial learning rate of the W4A4 distillation")
    parser.add_argument(
        "--qat-edge-bits",
        type=int,
        default=4,
        help="bits of the first conv and the classifier (8: as LSQ and PACT report W4A4)",
    )
    parser.add_argument("--binary-epochs", type=int, default=5)
    parser.add_argument("--binary-modes", default="bwn,xnor,binaryconnect")
    parser.add_argument("--fact-epochs", type=int, default=1, help="distillation epochs of the factorized model")
    parser.add_argument("--calib-seeds", type=int, default=5, help="calibration subsets of the calib rows")
    parser.add_argument("--latency-runs", type=int, default=3, help="fresh processes timing the ONNX models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test, train = fashion_mnist("test"), fashion_mnist("train")
    calib = DataLoader(calibration_subset(fashion_mnist("train", augment=False), 512), batch_size=128)
    out = read_results()
    setup = {
        "commit": commit(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "calibration": "512 training images (seeded subset), no labels",
    }
    rows = set(args.rows.split(","))

    def acc(m: nn.Module) -> float:
        return round(evaluate(m, test, show_progress=False)["accuracy"], 2)

    for name in args.models.split(","):
        dense = factorch.models.create_model(name, pretrained=True).eval()
        res = out["models"].setdefault(name, {"dense_accuracy": acc(dense), "rows": {}})
        print(f"== {name}: dense {res['dense_accuracy']} %", flush=True)
        plan = []
        if "ptq" in rows:
            for observer in ("minmax", "percentile", "mse"):
                plan.append((f"int8 PTQ factorch ({observer})", lambda o=observer: ptq(dense, calib, o, acc)))
        if "qat" in rows:
            cfg = factorch.QuantConfig(weight_bits=4, act_bits=4, observer=args.qat_observer)
            tags, key = [], f"{name}-w4a4-{args.qat_observer}"
            if args.qat_observer != "minmax":
                tags.append(f"{args.qat_observer} ranges")
            if args.qat_lr != 0.01:
                tags.append(f"lr {args.qat_lr:g}")
                key += f"-lr{args.qat_lr:g}"
            if args.qat_edge_bits != 4:  # the first conv and the classifier named exactly, at their own bits
                edge = factorch.QuantConfig(weight_bits=args.qat_edge_bits, act_bits=args.qat_edge_bits,
                                            observer=args.qat_observer)  # fmt: skip
                names = [n for n, m in dense.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
                cfg = factorch.Plan({"_default": cfg, **{n: edge for n in edge_layers(names, dense)}})
                tags.append(f"first and last layer {args.qat_edge_bits}-bit")
                key += f"-edges{args.qat_edge_bits}"
            tag = f" ({', '.join(tags)})" if tags else ""
            plan.append((f"W4A4 QAT + distillation{tag}", lambda c=cfg, k=key: trained(
                dense, c, calib, train, args.qat_epochs, acc, k, lr=args.qat_lr)))  # fmt: skip
        if "binary" in rows:
            for mode in args.binary_modes.split(","):
                cfg = factorch.BinaryConfig(mode=mode)
                plan.append((f"binary {mode} + distillation", lambda c=cfg, m=mode: trained(
                    dense, c, None, train, args.binary_epochs, acc, f"{name}-{m}")))  # fmt: skip
        if "onnx" in rows:  # the three ONNX models are timed together, paired, in --latency-runs processes
            shared: dict = {}

            def onnx_part(key: str, n=name) -> dict:
                if not shared:
                    shared.update(onnx_rows(dense, n, calib, test, train, args))
                return shared[key]

            for key in ONNX_ROWS:
                plan.append((key, lambda k=key: onnx_part(k)))
        if "calib" in rows:
            shared_calib: dict = {}

            def calib_part(key: str) -> dict:
                if not shared_calib:
                    shared_calib.update(calibration_spread(dense, test, args.calib_seeds))
                return shared_calib[key]

            for key in CALIB_ROWS:
                plan.append((key, lambda k=key: calib_part(k)))
        if "peers" in rows:
            plan.append(("torch.ao.quantization (eager, fbgemm)", lambda: torch_ao(dense, calib, acc)))
            plan.append(("torchao quantize_ (int8 weights + activations)", lambda: torchao_row(dense, acc)))
        for row, build in plan:
            if args.row_filter not in row:
                continue
            kept = res["rows"].get(row, {})
            if kept.get("commit") == setup["commit"] and not args.force:
                print(f"   {row}: kept", flush=True)
                continue
            print(f"-- {name} {row}", flush=True)
            t0 = time.perf_counter()
            try:
                record = build()
                if "accuracy" in record:
                    record["drop"] = round(res["dense_accuracy"] - record["accuracy"], 2)
            except Exception as err:  # noqa: BLE001 - a tool that cannot run a case is a result, with its error
                record = {"error": f"{type(err).__name__}: {err}"[:300], "trace": traceback.format_exc()[-800:]}
            record.update(time_s=round(time.perf_counter() - t0, 1), commit=setup["commit"], threads=args.threads)
            res["rows"][row] = record
            print(f"   {json.dumps({k: v for k, v in record.items() if k != 'trace'})}", flush=True)
            save_row(setup, name, res["dense_accuracy"], row, record)


def ptq(dense: nn.Module, calib, observer: str, acc) -> dict:
    cfg = factorch.QuantConfig(weight_bits=8, act_bits=8, observer=observer)
    q, report = factorch.compress(dense, cfg, example_inputs=X, calib_data=calib, fold_bn=True)
    t = report.totals
    return {"accuracy": acc(q), "size_ratio": t["size_ratio"], "bits_per_weight": t["bits_per_weight"]}


def trained(dense: nn.Module, cfg, calib, train, epochs: int, acc, key: str, lr: float = 0.01) -> dict:
    q, report = factorch.compress(dense, cfg, example_inputs=X, calib_data=calib)
    q = factorch.finetune(q, train, teacher=dense, epochs=epochs, out_dir=RUNS / key,
                          resume=True, inplace=True, lr=lr)  # fmt: skip
    return {"accuracy": acc(q), "size_ratio": report.totals["size_ratio"], "epochs": epochs,
            "bits_per_weight": report.totals["bits_per_weight"]}  # fmt: skip


def ort_quantize_static(dense: nn.Module, folder: Path, calib) -> Path:
    """What ONNX Runtime's docs show: the plain exported model (BatchNorms unfolded) through ``quantize_static``
    with its default settings, calibrated on ``calib``."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x0": x.numpy()} for x, _ in calib])

        def get_next(self):
            return next(self.batches, None)

    plain = factorch.export_onnx(dense, folder / "plain.onnx", X, fold_bn=False)
    quantize_static(str(plain), str(folder / "ort.onnx"), Reader())
    return folder / "ort.onnx"


FACTORCH_INT8 = "int8 ONNX Runtime (factorch.export_onnx)"
ORT_DEFAULTS = "int8 ONNX Runtime quantize_static (defaults)"
# The factorized models exported to int8. ONNX Runtime's fast int8 convolution (MLAS's symmetric "indirect" kernel)
# takes only layers with input channels in multiples of 4 and at least 16 output channels; any other layer runs
# an im2col + GEMM path that is several times slower per MAC (measured here: a Tucker-2 core of 11 -> 11
# channels at 28x28 took 1.85 ms, the dense 16 -> 16 conv it replaces 0.33 ms). Ranks in multiples of 4 keep
# most factor layers on the fast kernel; spatial SVD's 16-channel factors keep resnet20's first stage on it too.
FACT_VARIANTS = {
    "tucker2": {"methods": ["tucker2"]},
    "tucker2+spatial-svd r4": {"methods": ["tucker2", "spatial-svd"], "round_to": 4},
}
FACT_METHODS = tuple(FACT_VARIANTS)
FACT_INT8 = {m: f"int8 ONNX Runtime + factorization (auto {m} macs=0.33)" for m in FACT_METHODS}
ONNX_ROWS = (FACTORCH_INT8, ORT_DEFAULTS, *FACT_INT8.values())


def onnx_rows(dense: nn.Module, name: str, calib, test, train, args) -> dict[str, dict]:
    """Three int8 ONNX models of one reference model: factorch's export (BatchNorms folded, per-channel
    weights), ONNX Runtime's ``quantize_static`` with its defaults on the plain exported model (what its docs
    show), and factorch's export of the model factorized to ``macs=0.33`` by AutoConfig (``FACT_VARIANTS``,
    ``--fact-epochs`` epochs of distillation each). Latency: all of them
    with the float32 ONNX model and the dense eager model, paired, in ``--latency-runs`` fresh processes;
    each ratio is the median over runs and its spread (min, max) is kept."""
    facts = {}
    for method in FACT_METHODS:
        t0 = time.perf_counter()
        fact, report = factorch.compress(dense, factorch.AutoConfig("macs=0.33", **FACT_VARIANTS[method]),
                                         example_inputs=X, calib_data=calib)  # fmt: skip
        before = round(evaluate(fact, test, show_progress=False)["accuracy"], 2)
        if args.fact_epochs:
            fact = factorch.finetune(fact, train, teacher=dense, epochs=args.fact_epochs, inplace=True, resume=True,
                                     out_dir=RUNS / f"{name}-{method.replace(' ', '-')}-0.33")  # fmt: skip
        facts[method] = fact, {
            "macs_ratio": report.totals["macs_ratio"], "float_accuracy_before_finetune": before,
            "finetune_epochs": args.fact_epochs, "factorize_time_s": round(time.perf_counter() - t0, 1),
        }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        f32 = factorch.export_onnx(dense, Path(tmp) / "f32.onnx", X)
        ours = factorch.export_onnx(dense, Path(tmp) / "i8.onnx", X, int8=True, calib_data=calib)
        theirs = ort_quantize_static(dense, Path(tmp), calib)
        files = [f32, ours, theirs] + [
            factorch.export_onnx(facts[m][0], Path(tmp) / f"fact{k}-i8.onnx", X, int8=True, calib_data=calib)
            for k, m in enumerate(FACT_METHODS)
        ]
        runs = [paired_ort_latency(files, name, args.threads) for _ in range(args.latency_runs)]
        rows = {}
        for i, key in enumerate(ONNX_ROWS, start=1):
            row = {"accuracy": ort_accuracy(files[i], test), "size_ratio": files[i].stat().st_size / f32.stat().st_size}
            for b in (1, 64):
                for ref, j in (("float_onnx", 0), ("eager", len(files))):
                    ratios = sorted(run[b][i] / run[b][j] for run in runs)
                    row[f"int8_vs_{ref}_b{b}"] = statistics.median(ratios)
                    row[f"int8_vs_{ref}_b{b}_spread"] = [ratios[0], ratios[-1]]
            rows[key] = row
        rows[FACTORCH_INT8]["float_onnx_accuracy"] = ort_accuracy(f32, test)
        for method in FACT_METHODS:
            rows[FACT_INT8[method]].update(facts[method][1])
        return rows


CALIB_ROWS = (
    "int8 ONNX Runtime (factorch.export_onnx), over calibration subsets",
    "int8 ONNX Runtime quantize_static (defaults), over calibration subsets",
)


def calibration_spread(dense: nn.Module, test, seeds: int) -> dict[str, dict]:
    """Accuracy of both int8 exports calibrated on ``seeds`` seeded subsets of 512 training images."""
    found: dict[str, list[float]] = {key: [] for key in CALIB_ROWS}
    for seed in range(seeds):
        calib = DataLoader(calibration_subset(fashion_mnist("train", augment=False), 512, seed=seed), batch_size=128)
        with tempfile.TemporaryDirectory() as tmp:
            ours = factorch.export_onnx(dense, Path(tmp) / "i8.onnx", X, int8=True, calib_data=calib)
            theirs = ort_quantize_static(dense, Path(tmp), calib)
            for key, path in zip(CALIB_ROWS, (ours, theirs), strict=True):
                found[key].append(ort_accuracy(path, test))
        print(f"   seed {seed}: {[v[-1] for v in found.values()]}", flush=True)
    return {
        key: {"accuracy": round(statistics.mean(v), 2), "accuracy_spread": [min(v), max(v)], "accuracies": v}
        for key, v in found.items()
    }


def torch_ao(dense: nn.Module, calib, acc) -> dict:
    import torch.ao.quantization as tq  # deprecated in favour of torchao; eager mode needs QuantStubs

    model = copy.deepcopy(nn.Sequential(tq.QuantStub(), dense, tq.DeQuantStub())).eval()
    model.qconfig = tq.get_default_qconfig("fbgemm")
    prepared = tq.prepare(model)
    with torch.no_grad():
        for x, _ in calib:
            prepared(x)
    converted = tq.convert(prepared)
    return {"accuracy": acc(converted)}


def torchao_row(dense: nn.Module, acc) -> dict:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_  # not a factorch dependency

    model = copy.deepcopy(dense).eval()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())  # its CPU configs act on nn.Linear layers
    return {"accuracy": acc(model), "note": "torchao quantizes the Linear layers only"}


def read_results() -> dict:
    path = RESULTS / "quantization.json"
    return json.loads(path.read_text()) if path.is_file() else {"models": {}}


def save_row(setup: dict, name: str, dense_accuracy: float, row: str, record: dict) -> None:
    """Merges one row into the results file as it is on disk now (another run may have written other rows
    since this one started), under an exclusive lock, and rewrites both files atomically."""
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / ".quantization.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = read_results()
        out["setup"] = setup
        out["models"].setdefault(name, {"dense_accuracy": dense_accuracy, "rows": {}})["rows"][row] = record
        write(out)


def write(out: dict) -> None:
    for suffix, text in (("json", json.dumps(out, indent=2) + "\n"), ("md", markdown(out))):
        tmp = RESULTS / f".quantization.{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, RESULTS / f"quantization.{suffix}")


def markdown(out: dict) -> str:
    s = out["setup"]
    lines = [
        "# quantization: factorch vs ONNX Runtime's quantize_static vs torch.ao",
        "",
        f"Last run at commit {s['commit']}, torch {s['torch']}, {s['platform']}; each row names its commit and "
        f"threads. Calibration: "
        f"{s['calibration']}. Test accuracy measured once per row. Latency: ONNX Runtime CPU, medians of 20 "
        "alternated calls in fresh processes, the median ratio over runs (min-max in brackets); ratios against the "
        "float32 ONNX model and against the dense eager torch model.",
        "",
    ]
    old_threads = "-"  # rows written before the thread count was kept per row
    for name, res in out["models"].items():
        lines += [
            f"## {name} (dense {res['dense_accuracy']:.2f} %)",
            "",
            "| row | accuracy % | drop | size x | int8/float ONNX b1 | b64 | int8/eager b1 | b64 | commit, threads |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row, r in res["rows"].items():
            if "error" in r:
                lines.append(f"| {row} | cannot run: {r['error']} | | | | | | | {r['commit']} |")
                continue

            def f(key, r=r):
                return f"{r[key]:.3f}" if r.get(key) is not None else "-"

            def spread(key, r=r):
                lo_hi = r.get(key + "_spread")
                return f" ({lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if lo_hi else ""

            acc_spread = r.get("accuracy_spread")
            acc_spread = f" ({acc_spread[0]:.2f}-{acc_spread[1]:.2f})" if acc_spread else ""
            lines.append(
                f"| {row} | {r['accuracy']:.2f}{acc_spread} | {r['drop']:+.2f} | {f('size_ratio')} | "
                f"{f('int8_vs_float_onnx_b1')} | {f('int8_vs_float_onnx_b64')}{spread('int8_vs_float_onnx_b64')} | "
                f"{f('int8_vs_eager_b1')} | {f('int8_vs_eager_b64')}{spread('int8_vs_eager_b64')} | {r['commit']}, "
                f"{r.get('threads', old_threads)} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
