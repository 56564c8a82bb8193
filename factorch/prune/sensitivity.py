"""Per-layer pruning sensitivity: the score (e.g. accuracy) of the network with one layer pruned at a time,
at several sparsities (Han et al. 2015, figure 6), as a table and a plot."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from factorch.apply import apply_plan
from factorch.config import Plan, PruneConfig
from factorch.progress import progress_bar
from factorch.surgery import candidate_layers

DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass
class SensitivityCurves:
    """``scores[layer][i]``: the score with only ``layer`` pruned at ``sparsities[i]``; ``dense``: unpruned."""

    sparsities: tuple[float, ...]
    dense: float
    scores: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sparsities": list(self.sparsities), "dense": self.dense, "scores": dict(self.scores)}

    def to_markdown(self) -> str:
        head = "| layer | " + " | ".join(f"{s:g}" for s in self.sparsities) + " |"
        lines = [head, "|" + "---|" * (len(self.sparsities) + 1)]
        for name, scores in self.scores.items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in scores) + " |")
        return "\n".join(lines) + f"\n\nscore with no layer pruned: {self.dense:.2f}\n"

    def plot(self, path: str | Path, title: str = "pruning sensitivity") -> Path:
        """Score against sparsity, one line per layer, the dense score dashed."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, scores in self.scores.items():
            ax.plot(self.sparsities, scores, marker="o", label=name)
        ax.axhline(self.dense, color="black", linestyle="--", linewidth=1, label="dense")
        ax.set_xlabel("sparsity of the one pruned layer")
        ax.set_ylabel("score")
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def prune_sensitivity(
    model: nn.Module,
    eval_fn: Callable[[nn.Module], float],
    *,
    example_inputs: Tensor | tuple | None = None,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    layers: Sequence[str] | None = None,
    progress: bool = True,
) -> SensitivityCurves:
    """Prune each layer alone (magnitude, per layer) at each sparsity and score the network.

    Args:
        model: the network (left untouched).
        eval_fn: ``eval_fn(model) -> score``, higher is better (e.g. validation accuracy in %).
        example_inputs: one forward pass's inputs (execution order of the rows).
        sparsities: shares of the layer's weights removed, each in [0, 1).
        layers: the layers to scan (default: every Conv / Linear layer).
        progress: a progress bar.

    References:
        Han et al. 2015, "Learning both weights and connections for efficient neural networks".
    """
    if not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable (model -> score), got {type(eval_fn).__name__}")
    sparsities = tuple(float(s) for s in sparsities)
    for s in sparsities:
        PruneConfig(sparsity=s)  # validates, with PruneConfig's message
    names = [n for n, m in candidate_layers(model) if type(m) in (nn.Conv1d, nn.Conv2d, nn.Linear)]
    if layers is not None:
        unknown = sorted(set(layers) - set(names))
        if unknown:
            raise ValueError(f"prune_sensitivity(layers=...): no prunable layer named {', '.join(unknown)}")
        names = [n for n in names if n in set(layers)]
    curves = SensitivityCurves(sparsities, float(eval_fn(model)))
    with progress_bar("pruning sensitivity", len(names) * len(sparsities), enabled=progress) as advance:
        for name in names:
            row = []
            for s in sparsities:
                pruned, _ = apply_plan(model, Plan({name: PruneConfig(sparsity=s)}), example_inputs=example_inputs)
                row.append(float(eval_fn(pruned)))
                advance()
            curves.scores[name] = row
    return curves


def save_curves(curves: SensitivityCurves, folder: str | Path) -> None:
    """``sensitivity.json``, ``sensitivity.md`` and ``sensitivity.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sensitivity.json").write_text(json.dumps(curves.to_dict(), indent=2) + "\n")
    (folder / "sensitivity.md").write_text(curves.to_markdown())
    curves.plot(folder / "sensitivity.png")
