"""The score challenge on the reference models: accuracy against ``effdl`` score for each method alone and
combined (the Pareto fronts), and ``factorch challenge`` at the acceptance floors.

Rows (``--parts``):

* ``fronts``: for each family (``factorization``: Tucker-2, CP, SVD, spatial SVD; ``pruning``: unstructured
  sparsity levels; ``quantization``: weight and activation bit widths; ``combined``: all of them), one model
  per score target (``--targets``, fractions of the dense model's score) built by
  ``AutoConfig("score=S", methods=family)`` from 512 calibration images, distilled from the dense model for
  ``--epochs-per-point`` epochs, its accuracy measured on a validation split of the training set (5,000
  images, seeded; the same for every point). A target a family cannot reach is recorded as such.
* ``challenge``: ``factorch.challenge`` with every method, ``--floor`` per model (validation), 8 epochs in
  all; its chosen model's test accuracy, measured once.

Every point is written to ``benchmarks/results/challenge.json`` as soon as it is measured (stamped with the
commit) and kept on a re-run at the same commit, so an interrupted run continues where it stopped. Plots:
``benchmarks/results/challenge_<model>.png`` (one front per family, the floor as a line).

Run from the repository root::

    .venv/bin/python benchmarks/challenge.py --models resnet20 --parts fronts --families combined,quantization
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from _common import commit

import factorch
from factorch.challenge import challenge, pareto_front, validation_split
from factorch.data import fashion_mnist
from factorch.train import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
X = torch.zeros(1, 1, 28, 28)
FAMILIES = {
    "factorization": ["tucker2", "cp", "svd", "spatial-svd"],
    "pruning": ["prune"],
    "quantization": ["quant"],
    "combined": ["tucker2", "cp", "svd", "spatial-svd", "prune", "quant"],
}
FLOORS = {"resnet20": 93.0, "vgg": 93.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,vgg")
    parser.add_argument("--parts", default="fronts,challenge")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--targets", default="0.3,0.15,0.08,0.05,0.03", help="fractions of the dense score")
    parser.add_argument("--epochs-per-point", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sha = commit()
    path = RESULTS / "challenge.json"
    out = json.loads(path.read_text()) if path.is_file() else {"models": {}}
    out["setup"] = {"commit": sha, "torch": torch.__version__, "platform": platform.platform(), "rules": "effdl",
                    "validation": "5,000 training images (seed 0)", "calibration": "512 training images"}  # fmt: skip
    train, plain, test = fashion_mnist("train"), fashion_mnist("train", augment=False), fashion_mnist("test")
    train_part, val, items = validation_split(train, 5000, 0, plain)
    gen = torch.Generator().manual_seed(0)
    calib = torch.stack([plain[items[i]][0] for i in torch.randperm(len(items), generator=gen)[:512].tolist()])
    for name in args.models.split(","):
        dense = factorch.models.create_model(name, pretrained=True).eval()
        res = out["models"].setdefault(name, {"fronts": {}})
        res["dense"] = {
            "score": factorch.score(dense, X).score,
            "val_accuracy": round(evaluate(dense, val, show_progress=False)["accuracy"], 2),
        }
        if "fronts" in args.parts:
            for family in args.families.split(","):
                points = res["fronts"].setdefault(family, {})
                for fraction in (float(f) for f in args.targets.split(",")):
                    key = f"{fraction:g}"
                    if points.get(key, {}).get("commit") == sha:
                        continue
                    print(f"-- {name} {family} score x{key}", flush=True)
                    folder = Path("runs") / "bench-challenge" / name / family / key
                    target = fraction * res["dense"]["score"]
                    points[key] = point(dense, family, target, train_part, val, calib, args.epochs_per_point, folder)
                    points[key]["commit"] = sha
                    print(f"   {json.dumps(points[key])}", flush=True)
                    write(out)
        if "challenge" in args.parts and res.get("challenge", {}).get("commit") != sha:
            t0 = time.perf_counter()
            result = challenge(dense, train, example_inputs=X, min_accuracy=FLOORS[name], rules="effdl",
                               out_dir=Path("runs") / "bench-challenge" / name / "challenge", test_data=test,
                               val_data=plain, methods=FAMILIES["combined"])  # fmt: skip
            res["challenge"] = {**result.to_dict(), "time_s": round(time.perf_counter() - t0, 1), "commit": sha}
            write(out)
        plot(name, res)


def point(dense, family: str, target: float, train, val, calib, epochs: int, folder: Path) -> dict:
    t0 = time.perf_counter()
    cfg = factorch.AutoConfig(f"score={target:.6g}", rules="effdl", methods=FAMILIES[family], calib_samples=512)
    try:
        small, _ = factorch.compress(dense, cfg, example_inputs=X, calib_data=calib)
    except ValueError as err:
        if "out of reach" not in str(err):
            raise
        return {"target": target, "status": "unreachable", "note": str(err).split(" (")[0]}
    before = round(evaluate(small, val, show_progress=False)["accuracy"], 2)
    small = factorch.finetune(small, train, teacher=dense, epochs=epochs, out_dir=folder, resume=True)
    return {
        "target": target,
        "status": "done",
        "score": factorch.score(small, X).score,
        "val_accuracy_before": before,
        "val_accuracy": round(evaluate(small, val, show_progress=False)["accuracy"], 2),
        "epochs": epochs,
        "time_s": round(time.perf_counter() - t0, 1),
    }


def write(out: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "challenge.json").write_text(json.dumps(out, indent=2) + "\n")
    s = out["setup"]
    lines = [
        "# challenge: accuracy against effdl score, each method alone and combined",
        "",
        f"commit {s['commit']}, torch {s['torch']}. Validation: {s['validation']}; calibration: {s['calibration']}; "
        "each point distilled from the dense model. Test accuracy only for the challenge's chosen model.",
        "",
    ]
    for name, res in out["models"].items():
        d = res.get("dense", {})
        lines += [f"## {name} (dense: score {d.get('score', 0):.4g}, validation {d.get('val_accuracy', 0):.2f} %)", ""]
        lines += ["| family | target | score | validation % (before tuning) | commit |", "|---|---|---|---|---|"]
        for family, points in res.get("fronts", {}).items():
            for p in points.values():
                if p["status"] != "done":
                    lines.append(f"| {family} | {p['target']:.4g} | out of reach | | {p['commit']} |")
                    continue
                lines.append(f"| {family} | {p['target']:.4g} | {p['score']:.4g} | {p['val_accuracy']:.2f} "
                             f"({p['val_accuracy_before']:.2f}) | {p['commit']} |")  # fmt: skip
        if "challenge" in res:
            c = res["challenge"]
            lines += ["", f"challenge (floor {c['min_accuracy']:g} % on validation): score {c['score']:.4g}, test "
                      f"{c['test_accuracy']:.2f} % (dense {c['dense_test_accuracy']:.2f} %), {c['time_s']:.0f} s, "
                      f"commit {c['commit']}"]  # fmt: skip
        lines.append("")
    (RESULTS / "challenge.md").write_text("\n".join(lines))


def plot(name: str, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    dense = (res["dense"]["score"], res["dense"]["val_accuracy"])
    for family, points in res.get("fronts", {}).items():
        done = [(p["score"], p["val_accuracy"]) for p in points.values() if p["status"] == "done"]
        if done:
            ax.scatter(*zip(*done), s=14)
            ax.plot(*zip(*pareto_front(done + [dense])), label=family)
    ax.scatter(*dense, color="black", marker="s", label="dense")
    ax.axhline(FLOORS.get(name, 93.0), color="tab:red", linestyle="--", label="floor")
    ax.set_xscale("log")
    ax.set_xlabel("effdl score (log)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(name)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"challenge_{name}.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
