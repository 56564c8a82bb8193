"""``factorch sweep``: AutoConfig at several targets (and a uniform baseline), with Pareto plots."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from factorch.auto.config import AutoConfig
from factorch.auto.timing import time_pair
from factorch.progress import progress_bar


@dataclass
class SweepResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    batch_size: int = 64
    title: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "batch_size": self.batch_size, "rows": self.rows}

    def to_markdown(self) -> str:
        b = self.batch_size
        head = f"| run | target | params x | MACs x | time x (b{b}) | time x (b1) | accuracy % | note |"
        lines = [head, "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            cells = [
                r["run"],
                r.get("target") or "-",
                *(
                    f"{r[k]:.3f}" if r.get(k) is not None else "-"
                    for k in ("params_ratio", "macs_ratio", "latency_ratio", "latency_ratio_b1")
                ),
                f"{r['accuracy']:.2f}" if r.get("accuracy") is not None else "-",
                r.get("note", ""),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points not dominated by one with lower-or-equal cost (x) and higher-or-equal accuracy (y)."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _plot(result: SweepResult, key: str, xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in result.rows:
        if r.get(key) is not None and r.get("accuracy") is not None:
            groups.setdefault(r["group"], []).append((r[key], r["accuracy"]))
    styles = {"dense": ("k", "*"), "auto": ("tab:blue", "o")}
    for group, pts in groups.items():
        color, marker = styles.get(group, ("tab:orange", "s"))
        ax.scatter(*zip(*pts, strict=True), color=color, marker=marker, label=group, zorder=3)
        if group != "dense":
            front = pareto_front(pts)
            ax.plot(*zip(*front, strict=True), color=color, alpha=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{result.title}: accuracy vs {xlabel.split(' (')[0]} (no fine-tuning)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_sweep(
    model: nn.Module,
    configs: Sequence[AutoConfig],
    *,
    example_inputs: Tensor | tuple,
    calib_data: Any,
    eval_fn: Callable[[nn.Module], float] | None = None,
    baseline: str | None = "tucker2",
    out: Path | None = None,
    title: str = "",
) -> SweepResult:
    """Compress ``model`` with each config (and, for ``macs``/``params`` targets, the uniform ``baseline``
    method at the same target); measure params, MACs, latency (batch 1 and the configs' batch size) and
    ``eval_fn`` (e.g. test accuracy). Writes ``sweep.json``, ``sweep.md``, ``sweep_macs.png`` and
    ``sweep_latency.png`` under ``out`` when given. The sensitivity table is computed once and cached.
    """
    from factorch.auto.closed_loop import TargetUnreachableError, auto_compress
    from factorch.auto.uniform import uniform_compress

    if not configs:
        raise ValueError("run_sweep needs at least one AutoConfig")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    batch = configs[0].batch_size
    result = SweepResult(batch_size=batch, title=title)
    result.rows.append(
        {
            "run": "dense",
            "group": "dense",
            "target": None,
            "params_ratio": 1.0,
            "macs_ratio": 1.0,
            "latency_ratio": 1.0,
            "latency_ratio_b1": 1.0,
            "accuracy": float(eval_fn(model)) if eval_fn else None,
        }
    )
    jobs: list[tuple[str, AutoConfig]] = [("auto", c) for c in configs]
    if baseline:
        jobs += [("uniform", c) for c in configs if c.parsed_target.kind != "latency"]
    with progress_bar("sweep", len(jobs)) as advance:
        for kind, cfg in jobs:
            if kind == "auto":
                try:
                    built, report = auto_compress(
                        model, cfg, inputs=inputs, calib_data=calib_data, eval_fn=None, inplace=False
                    )
                except TargetUnreachableError as err:  # a row that says what was reached instead
                    result.rows.append({"run": f"auto ({'+'.join(cfg.methods)})", "group": "auto",
                                        "target": cfg.target, "note": str(err)})  # fmt: skip
                    advance()
                    continue
                t = report.totals
                lat, lat1 = t.get("latency_ratio"), t.get("latency_ratio_b1")
            else:
                try:
                    built, report, _ = uniform_compress(model, baseline, cfg.target, example_inputs=inputs)
                except ValueError as err:  # e.g. the method cannot shrink enough of the layers
                    result.rows.append(
                        {
                            "run": f"uniform ({baseline})",
                            "group": f"uniform {baseline}",
                            "target": cfg.target,
                            "note": str(err),
                        }
                    )
                    advance()
                    continue
                times = time_pair(model, built, inputs, batch_sizes=(1, batch), repeats=20, threads=cfg.threads)
                lat, lat1 = times[batch][1] / times[batch][0], times[1][1] / times[1][0]
                t = report.totals
            result.rows.append(
                {
                    "run": f"{kind} ({'+'.join(cfg.methods) if kind == 'auto' else baseline})",
                    "group": kind if kind == "auto" else f"uniform {baseline}",
                    "target": cfg.target,
                    "params_ratio": t["params_ratio"],
                    "macs_ratio": t["macs_ratio"],
                    "latency_ratio": lat,
                    "latency_ratio_b1": lat1,
                    "accuracy": float(eval_fn(built)) if eval_fn else None,
                }
            )
            advance()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        (out / "sweep.md").write_text(result.to_markdown())
        if eval_fn is not None:
            _plot(result, "macs_ratio", "MACs (fraction of dense)", out / "sweep_macs.png")
            _plot(
                result,
                "latency_ratio",
                f"measured latency at batch {batch} (fraction of dense)",
                out / "sweep_latency.png",
            )
    return result
