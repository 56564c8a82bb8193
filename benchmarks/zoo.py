"""The model zoo side by side: every registry model, and the compressed forms factorch makes of vgg and resnet20.

"Should I compress my big model or train a small one?" Each row: test accuracy on Fashion-MNIST, parameters
(stored values: non-zeros for pruned layers), MACs per image, latency at batch 1 and 64 (median, eager torch,
``--threads`` threads, except the int8 row: its static QDQ ONNX file on ONNX Runtime), bytes on disk, and the
``effdl`` score (``factorch.score``).

* Registry rows: each model as ``create_model(name, pretrained=True)`` builds it; accuracy is the model card's
  (measured on exactly the shipped float16 weights); a model without shipped weights gets its costs and no
  accuracy. A Shift Attention model is measured in its executed shift + 1x1 form. Bytes: ``factorch.save``.
* Compressed rows (``--forms``): built from the shipped weights by ``factorch.compress`` (calibration: 512
  training images), then ``--epochs`` epochs of distillation from the dense model where the form trains;
  each is saved under ``runs/zoo/`` (resumable: a finished form is loaded back, not rebuilt). Bytes:
  ``factorch.save`` (``pack=True`` where it applies: pruned and weight-shared layers).

Run from the repository root::

    .venv/bin/python benchmarks/zoo.py [--models all] [--forms vgg,resnet20] [--epochs 1]

Writes ``benchmarks/results/zoo.{json,md}`` and ``zoo.png`` (accuracy against MACs and against score) after
every row, stamped with the commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from _common import commit
from torch import nn
from torch.utils.data import DataLoader

import factorch
from factorch.data import calibration_subset, fashion_mnist
from factorch.models import create_model, list_models, model_card, weights_path
from factorch.nn import ShiftAttentionConv2d, to_shift_model
from factorch.train import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs") / "zoo"
X = torch.zeros(1, 1, 28, 28)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def stored_params(score) -> int:
    """Values a deployment stores, from ``factorch.score``'s per-layer table: each layer's non-zero weights and
    biases (a pruned weight's zeros are not stored; a shared-weight layer's codes count one value each, its
    buffers included, which ``model.parameters()`` would miss)."""
    return int(sum(r["nonzeros"] for r in score.to_dict()["layers"]))


def costs(model: nn.Module, threads: int, *, pack: bool = False, onnx_int8: Callable | None = None) -> dict:
    """Parameters, MACs, latency at batch 1 / 64, bytes on disk and effdl score of ``model``."""
    model = model.eval()
    if any(isinstance(m, ShiftAttentionConv2d) for m in model.modules()):
        model = to_shift_model(model)  # the executed form: what deployment runs
    prof = factorch.profile(model, X)
    score = factorch.score(model, X, rules="effdl")
    with tempfile.TemporaryDirectory() as tmp:
        saved = factorch.save(model, Path(tmp) / "m", pack=pack)
        size = folder_bytes(saved)
        if onnx_int8 is not None:
            path = onnx_int8(model, Path(tmp) / "int8.onnx")
            lat = factorch.measure_latency(str(path), X, runtime="onnxruntime", threads=threads, repeats=30)
            runtime = "onnxruntime int8"
        else:
            lat = factorch.measure_latency(model, X, threads=threads, repeats=30)
            runtime = "torch"
    by_batch = {r.batch_size: r.median_s for r in lat.results}
    return {
        "params": stored_params(score),
        "macs": prof.total_macs,
        "latency_b1_ms": round(by_batch[1] * 1e3, 3),
        "latency_b64_ms": round(by_batch[64] * 1e3, 2),
        "runtime": runtime,
        "bytes": size,
        "score_effdl": round(score.score, 5),
    }


def forms(dense: nn.Module, calib, train, epochs: int) -> dict[str, tuple[Callable[[], nn.Module], bool, bool]]:
    """``{form: (build, trains, pack)}``: the compressed forms factorch makes of a reference model."""

    def compress(config, **kw) -> nn.Module:
        # calib_data only where something reads it (compress refuses data it would ignore)
        uses = getattr(config, "uses_calib_data", True) or kw.get("calibrate")
        return factorch.compress(dense, config, example_inputs=X, calib_data=calib if uses else None, **kw)[0]

    return {
        "factorized (auto macs=0.33)": (lambda: compress(factorch.AutoConfig("macs=0.33")), True, False),
        "channels pruned (macs=0.5, l1)": (
            lambda: compress(factorch.ChannelPruneConfig("macs=0.5", criterion="l1"), calibrate=512),
            True,
            False,
        ),
        "unstructured 90 % (global magnitude)": (
            lambda: compress(factorch.PruneConfig(sparsity=0.9, scope="global")),
            True,
            True,
        ),
        "int8 (PTQ, mse ranges)": (
            lambda: compress(factorch.QuantConfig(weight_bits=8, act_bits=8, observer="mse"), fold_bn=True),
            False,
            False,
        ),
        "k-means 4-bit shared weights": (lambda: compress(factorch.KMeansConfig(bits=4)), True, True),
        "binary weights (BWN)": (lambda: compress(factorch.BinaryConfig(mode="bwn")), True, False),
    }


def int8_exporter(calib) -> Callable:
    def export(model: nn.Module, path: Path) -> Path:
        return factorch.export_onnx(model, path, X, int8=True, calib_data=calib)

    return export


def write(out: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "zoo.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Model zoo: registry models and compressed forms",
        "",
        f"Commit {out['setup']['commit']}, torch {out['setup']['torch']}, {out['setup']['threads']} thread(s). "
        "Latency: median ms per call, eager torch unless the runtime says otherwise. Params: stored values "
        "(non-zeros). Bytes: `factorch.save`. Score: `effdl`.",
        "",
        "| model | accuracy % | params | MACs | b1 ms | b64 ms | runtime | bytes | effdl score | note |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for name, r in out["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} | | | | | | | | |")
            continue
        acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.2f}"
        lines.append(
            f"| {name} | {acc} | {r['params']:,} | {r['macs']:,} | {r['latency_b1_ms']:.3f} | "
            f"{r['latency_b64_ms']:.2f} | {r['runtime']} | {r['bytes']:,} | {r['score_effdl']:.4f} | "
            f"{r.get('note', '')} |"
        )
    for model_name, timing in out.get("sal_layers", {}).items():
        lines += [
            "",
            f"## {model_name}: each layer's shift + 1x1 form against the dense 3x3 conv it replaces",
            "",
            f"Commit {timing['commit']}. Paired, alternated calls (`factorch.compare_latency`); ratio < 1: the shift "
            "form is faster.",
            "",
            "| layer | in -> out | input | shifted channels | ratio b1 | ratio b64 |",
            "|---|---|---|---:|---:|---:|",
        ]
        for r in timing["rows"]:
            shape = "x".join(map(str, r["input"]))
            lines.append(
                f"| {r['layer']} | {r['in']} -> {r['out']} | {shape} | {r['shifted_channels']} | "
                f"{r['shift_vs_dense_b1']:.2f} | {r['shift_vs_dense_b64']:.2f} |"
            )
    (RESULTS / "zoo.md").write_text("\n".join(lines) + "\n")
    plot(out)


def plot(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = {k: r for k, r in out["rows"].items() if r.get("accuracy") is not None and "error" not in r}
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, label in ((axes[0], "macs", "MACs per image"), (axes[1], "score_effdl", "effdl score")):
        for name, r in rows.items():
            marker = "s" if r.get("kind") == "registry" else "o"
            ax.scatter(r[key], r["accuracy"], marker=marker)
            ax.annotate(name, (r[key], r["accuracy"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Fashion-MNIST zoo (squares: registry models, circles: compressed forms), {out['setup']['commit']}")
    fig.tight_layout()
    fig.savefig(RESULTS / "zoo.png", dpi=130)
    plt.close(fig)


SAL_MODELS = ("sal_resnet20", "shift_resnet20")  # per-slice positions; one position per input channel


def sal_layers(model_name: str, threads: int) -> list[dict]:
    """Each Shift Attention Layer of a shipped SAL model: its executed shift + 1x1 form timed against the dense
    3x3 conv it replaces (paired, alternated calls, batch 1 and 64, on its own input size)."""
    model = create_model(model_name, pretrained=True)
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name: str):
        def hook(module, args, output) -> None:
            inputs.setdefault(name, args[0][:1].detach())

        return hook

    hooks = [m.register_forward_hook(keep_input(n)) for n, m in model.named_modules()
             if isinstance(m, ShiftAttentionConv2d)]  # fmt: skip
    with torch.no_grad():
        model(X)
    for h in hooks:
        h.remove()
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, ShiftAttentionConv2d):
            continue
        dense = nn.Conv2d(m.conv.in_channels, m.conv.out_channels, m.conv.kernel_size, m.conv.stride,
                          m.conv.padding, bias=m.conv.bias is not None)  # fmt: skip
        fast = m.to_shift()
        cmp = factorch.compare_latency(dense.eval(), fast.eval(), inputs[name], threads=threads, repeats=30)
        ratio = {r.batch_size: r.ratio for r in cmp.results}
        rows.append({"layer": name, "in": m.conv.in_channels, "out": m.conv.out_channels,
                     "input": list(inputs[name].shape[1:]), "shifted_channels": fast.shifted_channels,
                     "shift_vs_dense_b1": round(ratio[1], 3), "shift_vs_dense_b64": round(ratio[64], 3)})  # fmt: skip
        print(f"   {json.dumps(rows[-1])}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="all", help="registry models (comma-separated) or 'all' or 'none'")
    parser.add_argument("--forms", default="vgg,resnet20", help="reference models to compress, or 'none'")
    parser.add_argument("--epochs", type=int, default=1, help="distillation epochs of the forms that train")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="re-measure rows already measured at this commit")
    parser.add_argument("--sal-layers", action=argparse.BooleanOptionalAction, default=True,
                        help="time each SAL layer's shift form against its dense conv")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / "zoo.json"
    out = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    if "rows" in out.get("sal_layers", {}):  # written before the timing was kept per model
        out["sal_layers"] = {"sal_resnet20": out["sal_layers"]}
    out["setup"] = {"commit": commit(), "torch": torch.__version__, "threads": args.threads,
                    "platform": platform.platform(), "epochs": args.epochs}  # fmt: skip
    test = fashion_mnist("test")

    def run(row: str, build: Callable[[], dict]) -> None:
        kept = out["rows"].get(row, {})
        if kept.get("commit") == out["setup"]["commit"] and "error" not in kept and not args.force:
            print(f"   {row}: kept", flush=True)
            return
        print(f"-- {row}", flush=True)
        t0 = time.perf_counter()
        try:
            record = build()
        except Exception as err:  # noqa: BLE001 - a row that cannot be built is reported with its error
            record = {"error": f"{type(err).__name__}: {err}"[:300], "trace": traceback.format_exc()[-800:]}
        record.update(time_s=round(time.perf_counter() - t0, 1), commit=out["setup"]["commit"])
        out["rows"][row] = record
        print(f"   {json.dumps({k: v for k, v in record.items() if k != 'trace'})}", flush=True)
        write(out)

    names = [] if args.models == "none" else list_models() if args.models == "all" else args.models.split(",")
    for name in names:

        def registry_row(name=name) -> dict:
            shipped = weights_path(name).is_file()
            model = create_model(name, pretrained=shipped)
            card = model_card(name) if shipped else {}
            record = {"kind": "registry", "accuracy": card.get("test_accuracy"), **costs(model, args.threads)}
            record["note"] = (f"trained {card.get('epochs')} epochs, {card.get('wall_time_s', 0) / 60:.0f} min"
                              if shipped else "no shipped weights")  # fmt: skip
            return record

        run(name, registry_row)

    for model_name in SAL_MODELS if args.sal_layers else ():
        if not weights_path(model_name).is_file():
            continue
        print(f"-- {model_name} layers: shift + 1x1 against the dense 3x3 conv", flush=True)
        rows = sal_layers(model_name, args.threads)
        out.setdefault("sal_layers", {})[model_name] = {"commit": out["setup"]["commit"], "rows": rows}
        write(out)

    if args.forms != "none":
        train = fashion_mnist("train")
        calib = DataLoader(calibration_subset(fashion_mnist("train", augment=False), 512), batch_size=128)
        for base in args.forms.split(","):
            dense = create_model(base, pretrained=True).eval()
            for form, (build, trains, pack) in forms(dense, calib, train, args.epochs).items():

                def form_row(base=base, form=form, build=build, trains=trains, pack=pack) -> dict:
                    folder = RUNS / f"{base}-{form.split(' (')[0].replace(' ', '-')}"
                    if (folder / "model" / "plan.json").is_file():
                        model = factorch.load(folder / "model")
                    else:
                        model = build()
                        if trains:
                            model = factorch.finetune(model, train, teacher=dense, epochs=args.epochs,
                                                      out_dir=folder / "ft", resume=True, inplace=True)  # fmt: skip
                        factorch.save(model, folder / "model")
                    accuracy = round(evaluate(model, test, show_progress=False)["accuracy"], 2)
                    exporter = int8_exporter(calib) if form.startswith("int8") else None
                    return {"kind": "compressed", "base": base, "accuracy": accuracy,
                            **costs(model, args.threads, pack=pack, onnx_int8=exporter),
                            "note": f"{args.epochs} epoch(s) distillation" if trains else "no training"}  # fmt: skip

                run(f"{base}: {form}", form_row)


if __name__ == "__main__":
    main()
