"""Pruning on the pretrained reference models: factorch vs Torch-Pruning vs ``torch.nn.utils.prune``.

Every row starts from the shipped Fashion-MNIST weights and ends with the same recovery recipe: distillation
from the dense model (``factorch.finetune``: KD at T=4, alpha=0.9, SGD + cosine from lr 0.01, batch 128,
augmented training set), for the number of epochs the row names. Test accuracy (the full 10 000-image test set)
is measured once, at the end of each row; nothing in a row looks at the test set before.

Rows (``--rows``, comma-separated families):

* ``unstructured``: global magnitude pruning to ``--sparsity`` (per model) in ``--steps`` steps (Zhu & Gupta's
  polynomial schedule), ``--epochs-unstructured`` epochs of distillation in all, split over the steps.
  factorch: ``compress_in_stages(PruneConfig(scope="global"))``; peer: ``torch.nn.utils.prune
  .global_unstructured`` (L1) at the same step sparsities on the same layers (first conv and classifier dense
  in both), fine-tuned with the same recipe (the mask held by torch's pre-hook).
* ``structured``: channels removed to ``macs=0.5``, one shot, ``--epochs-structured`` epochs. factorch:
  ``ChannelPruneConfig("macs=0.5", criterion="l1", round_to=--round-to)`` (allocation ``auto``: global or
  uniform, whichever keeps the outputs closest on the calibration images), refitted on 1024 images; peer:
  Torch-Pruning's ``BasePruner`` with
  ``GroupMagnitudeImportance(p=1)`` (as its docs say), the final classifier ignored, its channel
  ``pruning_ratio`` bisected to the same MACs; batch-64 latency (eager torch, 2 threads) against dense.
* ``combined``: at ``macs=0.2``, ``--epochs-combined`` epochs: AutoConfig alone, ChannelPruneConfig alone, and
  channels to ``macs=--combined-channels`` then AutoConfig to ``macs=0.2`` (targets relative to the dense
  model).
* ``spread``: the factorch structured row again with fine-tuning seeds 1 and 2 (the seed-to-seed spread).

Run from the repository root::

    .venv/bin/python benchmarks/pruning.py [--models vgg,resnet20] [--rows unstructured,structured,combined]

Writes ``benchmarks/results/pruning.{json,md}`` (or ``--results NAME``) after every row, stamped with the
commit; a row already in the JSON for the same commit is kept (delete it, or ``--force``, to run it again).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import traceback
from pathlib import Path

import torch
from _common import commit
from torch import nn
from torch.utils.data import DataLoader

import factorch
from factorch.data import calibration_subset, fashion_mnist
from factorch.profiling import profile
from factorch.prune.levels import level_model
from factorch.stages import prune_sparsity
from factorch.train import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs") / "bench-pruning"
X = torch.zeros(1, 1, 28, 28)
NAME = "pruning"
SPARSITY = {"vgg": 0.9, "resnet20": 0.7, "lenet5": 0.9}


def edges(model: nn.Module) -> set[str]:
    convs = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Conv1d)]
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    return {convs[0], linears[-1]}


LR = 0.01  # the distillation's starting learning rate (--lr)


def kd(model: nn.Module, dense: nn.Module, train, epochs: int, seed: int, out_dir: Path) -> nn.Module:
    if epochs <= 0:
        return model
    return factorch.finetune(
        model, train, teacher=dense, epochs=epochs, seed=seed, out_dir=out_dir, resume=True, inplace=True, lr=LR
    )


def totals(model: nn.Module, dense: nn.Module) -> dict:
    from factorch.apply import model_storage

    p, d = profile(model, X), profile(dense, X)
    s, sd = model_storage(model), model_storage(dense)
    return {
        "params_ratio": p.total_params / d.total_params,
        "macs_ratio": p.total_macs / d.total_macs,
        "nonzero_params_ratio": s["nonzero_params"] / sd["nonzero_params"],
        "size_ratio": s["size_bytes"] / sd["size_bytes"],
    }


def latency(model: nn.Module, dense: nn.Module) -> dict:
    # a first comparison in a process runs on a cold allocator and clock: measured here x0.64 where three
    # warm ones gave x0.46-0.47 (vgg), so one short comparison is thrown away first
    factorch.compare_latency(dense, model, example_inputs=X, batch_sizes=(1, 64), repeats=5, threads=2)
    c = factorch.compare_latency(dense, model, example_inputs=X, batch_sizes=(1, 64), repeats=30, threads=2)
    return {"latency_ratio_b64": c.ratio(64), "latency_ratio_b1": c.ratio(1)}


# -- unstructured ------------------------------------------------------------------------------------------
def factorch_unstructured(dense, train, sparsity, steps, epochs, key):
    per_step = max(1, epochs // steps)
    model, _ = factorch.compress_in_stages(
        dense, factorch.PruneConfig(sparsity=sparsity, scope="global"), stages=steps, train_data=train,
        example_inputs=X, finetune_epochs=per_step, checkpoint_dir=RUNS / key / "stages", resume=True,
    )  # fmt: skip
    rest = epochs - per_step * steps
    model = kd(model, dense, train, rest, 100, RUNS / key / "final")
    return model, {"steps": steps, "epochs": per_step * steps + max(0, rest)}


def torch_unstructured(dense, train, sparsity, steps, epochs, key):
    from torch.nn.utils import prune

    model = copy.deepcopy(dense)
    skip = edges(model)
    params = [(m, "weight") for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear) and n not in skip]
    per_step, done = max(1, epochs // steps), 0.0
    for step in range(1, steps + 1):
        goal = prune_sparsity(sparsity, step, steps)
        amount = (goal - done) / (1 - done)  # torch prunes a share of the weights still unpruned
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        done = goal
        model = kd(model, dense, train, per_step, step - 1, RUNS / key / f"step-{step}")
        params = [(m, "weight") for n, m in model.named_modules() if hasattr(m, "weight_mask")]
    for m, name in params:
        prune.remove(m, name)
    return model, {"steps": steps, "epochs": per_step * steps}


# -- structured --------------------------------------------------------------------------------------------
def factorch_structured(dense, target, calib, allocation="auto", round_to=1, max_latency=None):
    """Filters ranked by L1 norm (globally, or the same share in every layer, or whichever of the two keeps the
    outputs closest on the calibration images: the default; with ``max_latency``, also one share per feature-map
    size searched by measured damage and latency, and only allocations measured within the bound kept); then
    each layer that lost inputs refitted to the dense responses on 1024 training images (``calibrate=``, least
    squares, no labels)."""
    cfg = factorch.ChannelPruneConfig(target, allocation=allocation, round_to=round_to, max_latency=max_latency)
    model, report = factorch.compress(
        dense, cfg, example_inputs=X, calib_data=calib,
        calibrate=factorch.CalibrationConfig(n_samples=1024, progress=False),
    )  # fmt: skip
    extra = {"reconstruction_s": report.totals["reconstruction"]["seconds"], "round_to": round_to}
    if max_latency is not None:
        extra["max_latency"] = max_latency
    if "allocation" in report.totals:
        extra["allocation"] = report.totals["allocation"]
    return model, extra


def tp_structured(dense, target):
    import torch_pruning as tp

    goal = float(target.split("=")[1])
    d = profile(dense, X).total_macs

    def pruned_at(ratio):
        model = copy.deepcopy(dense)
        ignored = [m for n, m in model.named_modules() if n in edges(model) and type(m) is nn.Linear]
        pruner = tp.pruner.BasePruner(
            model, X, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=ratio,
            ignored_layers=ignored,
        )  # fmt: skip
        pruner.step()
        model(X)  # a broken graph fails here (e.g. resnet20's zero-padding shortcut)
        return model

    lo, hi, best = 0.0, 0.9, None
    for _ in range(10):
        mid = 0.5 * (lo + hi)
        model = pruned_at(mid)
        if profile(model, X).total_macs / d <= goal:
            hi, best = mid, (model, mid)
        else:
            lo = mid
    if best is None:
        raise ValueError(f"no pruning_ratio below 0.9 reaches {target}")
    return best[0], {"pruning_ratio": round(best[1], 4)}


# -- combined ----------------------------------------------------------------------------------------------
def auto(target: str) -> factorch.AutoConfig:
    return factorch.AutoConfig(target)


def combined(dense, kind, calib, first=0.5, round_to=1):
    if kind == "factorization":
        return factorch.compress(dense, auto("macs=0.2"), example_inputs=X, calib_data=calib)[0], {}
    if kind == "channels":
        return factorch_structured(dense, "macs=0.2", calib, round_to=round_to)
    pruned, extra = factorch_structured(dense, f"macs={first:g}", calib, round_to=round_to)
    return factorch.compress(pruned, auto(f"macs={0.2 / profile_ratio(pruned, dense):.6g}"), example_inputs=X,
                             calib_data=calib)[0], extra  # fmt: skip


def profile_ratio(model: nn.Module, dense: nn.Module) -> float:
    return profile(model, X).total_macs / profile(dense, X).total_macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vgg,resnet20")
    parser.add_argument("--rows", default="unstructured,structured,combined")
    parser.add_argument(
        "--tools", default="factorch,peer", help="factorch, uniform (factorch, allocation='uniform'), peer"
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--epochs-unstructured", type=int, default=3)
    parser.add_argument("--epochs-structured", type=int, default=1)
    parser.add_argument("--epochs-combined", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--round-to", type=int, default=1, help="structured rows: channel counts kept at multiples")
    parser.add_argument(
        "--max-latency", type=float, default=None, help="structured rows: ChannelPruneConfig(max_latency=F) too"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=0.01,
        help="the distillation's starting learning rate (rows at another lr than 0.01 get ' lr X' in their name)",
    )
    parser.add_argument("--combined-channels", type=float, default=0.5, help="combined: MACs left by the channel step")
    parser.add_argument(
        "--combined-kinds", default="factorization,channels,channels+factorization", help="combined: rows to run"
    )
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--results", default="pruning", help="name of the results files (runs can run side by side)")
    parser.add_argument(
        "--retime",
        action="store_true",
        help="only time the structured rows again (their structure rebuilt; weights do not change the time): for "
        "rows whose latency was measured while other jobs loaded the machine",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global NAME, LR
    NAME, LR = args.results, args.lr
    path = RESULTS / f"{NAME}.json"
    out = json.loads(path.read_text()) if path.is_file() else {"models": {}}
    out["setup"] = {
        "commit": commit(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "recipe": "distillation from the dense model: T=4, alpha=0.9, SGD nesterov + cosine from lr 0.01, "
        "batch 128, augmented Fashion-MNIST training set; test accuracy measured once, at the end of each row",
    }
    tools = set(args.tools.split(","))
    rows = set(args.rows.split(","))
    if args.retime:  # before the data is loaded: with it in memory, paired ratios came out higher (0.61 vs 0.46)
        retime(out, args.models.split(","))
        return
    train, test = fashion_mnist("train"), fashion_mnist("test")
    calib = DataLoader(calibration_subset(fashion_mnist("train", augment=False), 1024), batch_size=128)

    def acc(m: nn.Module) -> float:
        return round(evaluate(m, test, show_progress=False)["accuracy"], 2)

    for name in args.models.split(","):
        dense = factorch.models.create_model(name, pretrained=True).eval()
        res = out["models"].setdefault(name, {"dense_accuracy": acc(dense), "rows": {}})
        print(f"== {name}: dense {res['dense_accuracy']} %", flush=True)
        s = SPARSITY[name]
        suffix = f" round_to {args.round_to}" if args.round_to > 1 else ""
        suffix += f" lr {args.lr:g}" if args.lr != 0.01 else ""
        bound = args.max_latency
        lat = f" max_latency {bound:g}" if bound is not None else ""
        plan = []
        if "unstructured" in rows:
            e, k = args.epochs_unstructured, args.steps
            if "factorch" in tools:
                plan.append((f"unstructured {s:g} factorch", lambda: factorch_unstructured(dense, train, s, k, e,
                             f"{name}-u-factorch"), 0))  # fmt: skip
            if "peer" in tools:
                plan.append((f"unstructured {s:g} torch.nn.utils.prune", lambda: torch_unstructured(dense, train, s,
                             k, e, f"{name}-u-torch"), 0))  # fmt: skip
        if "structured" in rows:
            if "factorch" in tools:
                plan.append((f"structured macs=0.5 factorch{suffix}{lat}", lambda: factorch_structured(dense,
                             "macs=0.5", calib, round_to=args.round_to, max_latency=bound),
                             args.epochs_structured))  # fmt: skip
            if "uniform" in tools:
                uniform = lambda: factorch_structured(dense, "macs=0.5", calib, "uniform")  # noqa: E731
                plan.append((f"structured macs=0.5 factorch uniform{suffix}", uniform, args.epochs_structured))
            if "peer" in tools:
                plan.append((f"structured macs=0.5 Torch-Pruning{suffix}", lambda: tp_structured(dense, "macs=0.5"),
                             args.epochs_structured))  # fmt: skip
        if "spread" in rows:
            for seed in (1, 2):
                row = f"structured macs=0.5 factorch{suffix}{lat} seed {seed}"
                plan.append((row, lambda: factorch_structured(dense, "macs=0.5", calib, round_to=args.round_to,
                             max_latency=bound), args.epochs_structured))  # fmt: skip
        if "combined" in rows:
            first = args.combined_channels
            for kind in args.combined_kinds.split(","):
                row = f"combined macs=0.2 {kind}"
                row += f" (channels to {first:g})" if kind.startswith("channels+") else ""
                row += suffix if kind != "factorization" else (f" lr {args.lr:g}" if args.lr != 0.01 else "")
                plan.append((row, lambda kind=kind: combined(dense, kind, calib, first, args.round_to),
                             args.epochs_combined))  # fmt: skip
        for row, build, epochs in plan:
            if row in res["rows"] and not args.force and res["rows"][row].get("commit") == out["setup"]["commit"]:
                print(f"   {row}: kept", flush=True)
                continue
            print(f"-- {name} {row}", flush=True)
            t0 = time.perf_counter()
            seed = int(row.rsplit("seed ", 1)[1]) if "seed " in row else 0
            try:
                model, extra = build()
                model = kd(model, dense, train, epochs, seed, RUNS / f"{name}-{row.replace(' ', '_')}")
                record = {**totals(model, dense), **extra, "accuracy": acc(model)}
                if row.startswith(("structured", "combined")):
                    record.update(latency(model, dense))
                if epochs:
                    record["epochs"] = epochs
                record["drop"] = round(res["dense_accuracy"] - record["accuracy"], 2)
            except Exception as err:  # noqa: BLE001 - a peer that cannot run a case is a result, with its error
                record = {"error": f"{type(err).__name__}: {err}"[:300], "trace": traceback.format_exc()[-800:]}
            record.update(time_s=round(time.perf_counter() - t0, 1), commit=out["setup"]["commit"])
            res["rows"][row] = record
            print(f"   {json.dumps({k: v for k, v in record.items() if k != 'trace'})}", flush=True)
            write(out)


def retime(out: dict, models: list[str]) -> None:
    def channels(target):  # the row's structure again: its allocation and rounding (weights do not matter)
        def build(d, r):
            allocation = r.get("allocation", {}).get("allocation", "global")
            if allocation == "levels":  # the shares the search chose, per feature-map size
                found = r["allocation"]["levels"]
                shares = dict(zip(found["levels"], found["shares"]))
                return level_model(d, X, shares, round_to=r.get("round_to", 1))
            cfg = factorch.ChannelPruneConfig(target, allocation=allocation, round_to=r.get("round_to", 1))
            return factorch.compress(d, cfg, example_inputs=X)[0]

        return build

    builders = {
        "structured macs=0.5 factorch": channels("macs=0.5"),
        "structured macs=0.5 Torch-Pruning": lambda d, r: tp_structured(d, "macs=0.5")[0],
        "combined macs=0.2 channels": channels("macs=0.2"),
    }
    for name in models:
        dense = factorch.models.create_model(name, pretrained=True).eval()
        for row, r in out["models"].get(name, {}).get("rows", {}).items():
            build = builders.get(
                row.split(" seed ")[0].split(" round_to ")[0].split(" max_latency ")[0].split(" lr ")[0]
            )
            if build is None or "error" in r:
                continue
            runs = r.setdefault("latency_b64_runs", [r["latency_ratio_b64"]] if "latency_ratio_b64" in r else [])
            r.update(latency(build(dense, r), dense), latency_retimed=True)
            runs.append(r["latency_ratio_b64"])
            print(f"   {name} {row}: x{r['latency_ratio_b64']:.3f} (b64)", flush=True)
            write(out)


def write(out: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(out, indent=2) + "\n")
    s = out["setup"]
    lines = [
        "# pruning: factorch vs Torch-Pruning vs torch.nn.utils.prune",
        "",
        f"last run at commit {s['commit']} (each row: its own commit), torch {s['torch']}, {s['threads']} threads, "
        f"{s['platform']}. Recovery: {s['recipe']}.",
        "Ratios are pruned / dense of the whole model: params (stored, dense count), non-zero params, MACs, bytes "
        "stored compactly, and measured latency (eager torch, median of 30 paired runs after a discarded warm-up).",
        "",
    ]
    for name, res in out["models"].items():
        lines += [
            f"## {name} (dense {res['dense_accuracy']:.2f} %)",
            "",
            "| row | accuracy % | drop | params x | non-zero x | MACs x | bytes x | time x b64 | time x b1 "
            "| epochs | s | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row, r in res["rows"].items():
            if "error" in r:
                lines.append(
                    f"| {row} | cannot run: {r['error']} | | | | | | | | | {r['time_s']:.0f} | {r['commit']} |"
                )
                continue

            retimed = " (latency re-timed)" if r.get("latency_retimed") else ""
            runs = r.get("latency_b64_runs") or []
            if len(runs) > 1:  # every process that timed it: the spread between processes
                retimed = f" (latency re-timed; b64 in {len(runs)} processes: {min(runs):.2f}-{max(runs):.2f})"

            def f(key, fmt=".3f", r=r):
                return format(r[key], fmt) if r.get(key) is not None else "-"

            lines.append(
                f"| {row} | {r['accuracy']:.2f} | {r['drop']:+.2f} | {f('params_ratio')} | {f('nonzero_params_ratio')} "
                f"| {f('macs_ratio')} | {f('size_ratio')} | {f('latency_ratio_b64')} | {f('latency_ratio_b1')} "
                f"| {r.get('epochs', '-')} | {r['time_s']:.0f} | {r['commit']}{retimed} |"
            )
        lines.append("")
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
