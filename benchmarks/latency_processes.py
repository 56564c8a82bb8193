"""How much of a pruned model's measured speed-up on eager torch is the process, not the model.

The same two models (dense resnet20 and resnet20 with channels pruned to ``macs=0.5``: the global allocation,
and ``--shares`` per feature-map size) are timed in ``--processes`` fresh Python processes each, by
``factorch.compare_latency`` (batch 64 and 1, 2 threads, 30 paired calls, three times per process), under two
settings of glibc's allocator:

* ``default``: as every Python process starts (glibc's dynamic mmap threshold: a large tensor freed can be
  handed back to the kernel, and the next one of that size page-faults in again);
* ``pinned``: ``mallopt(M_MMAP_THRESHOLD, 256 MiB)`` and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` at start, so
  activation buffers are reused from the heap (what an arena allocator, as ONNX Runtime's, does).

Run from the repository root::

    .venv/bin/python benchmarks/latency_processes.py [--processes 4]

Writes ``benchmarks/results/latency_processes.{json,md}`` stamped with the commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from _common import commit

RESULTS = Path(__file__).resolve().parent / "results"

CHILD = r"""
import ctypes, json, sys
setting, shares = sys.argv[1], json.loads(sys.argv[2])
if setting == "pinned":
    libc = ctypes.CDLL("libc.so.6")
    assert libc.mallopt(-3, 256 * 1024 * 1024) == 1 and libc.mallopt(-1, 1024 * 1024 * 1024) == 1
import torch
import factorch
from factorch.prune.levels import level_model
torch.set_num_threads(2)
x = torch.zeros(1, 1, 28, 28)
dense = factorch.models.create_model("resnet20", pretrained=True).eval()
models = {
    "global": factorch.compress(dense, factorch.ChannelPruneConfig("macs=0.5", allocation="global"),
                                example_inputs=x)[0].eval(),
    "levels": level_model(dense, x, shares).eval(),
}
out = {}
for name, model in models.items():
    runs = []
    for _ in range(3):
        c = factorch.compare_latency(dense, model, example_inputs=x, batch_sizes=(64, 1), repeats=30, threads=2)
        runs.append({"b64": c.ratio(64), "b1": c.ratio(1), "dense_b64_ms": c.results[0].median_a_s * 1e3})
    out[name] = runs
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--shares", default='{"28x28": 1.0, "14x14": 0.3, "7x7": 0.35}')
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    results: dict[str, list] = {"default": [], "pinned": []}
    for i in range(args.processes):
        for setting in results:  # alternating, so that a slow spell of the machine hits both settings
            done = subprocess.run(
                [sys.executable, "-c", CHILD, setting, args.shares], cwd=root, capture_output=True, text=True,
                check=True,
            )  # fmt: skip
            results[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"process {i + 1} {setting}: {done.stdout.strip().splitlines()[-1]}", flush=True)
    out = {
        "commit": commit(),
        "platform": platform.platform(),
        "shares": json.loads(args.shares),
        "processes": args.processes,
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency_processes.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# resnet20 at macs=0.5: measured latency ratio by process and allocator setting",
        "",
        f"Commit {out['commit']}, {out['platform']}, eager torch, 2 threads; each process times each pruned model "
        "against dense three times (`compare_latency`, 30 paired calls). `levels` keeps "
        f"{out['shares']} of the channels per feature-map size.",
        "",
        "| allocator | model | b64 ratio per process (median of 3) | spread b64 | b1 median | dense b64 ms |",
        "|---|---|---|---|---|---|",
    ]
    for setting, runs in results.items():
        for model in ("global", "levels"):
            per = [statistics.median(r["b64"] for r in p[model]) for p in runs]
            b1 = statistics.median(r["b1"] for p in runs for r in p[model])
            ms = statistics.median(r["dense_b64_ms"] for p in runs for r in p[model])
            cells = ", ".join(f"{v:.2f}" for v in per)
            lines.append(f"| {setting} | {model} | {cells} | {min(per):.2f}-{max(per):.2f} | {b1:.2f} | {ms:.1f} |")
    (RESULTS / "latency_processes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
