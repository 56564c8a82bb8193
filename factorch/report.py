"""The compression report: one row per layer (what was done, or why not) and whole-model totals."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from factorch.tables import natural_width


@dataclass
class LayerReport:
    name: str
    type: str
    method: str | None = None
    ranks: tuple[int, ...] | None = None
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    rel_error: float | None = None
    skipped: str | None = None
    damage: float | None = None  # AutoConfig: the scored damage of this layer's choice
    latency_ratio: float | None = None  # measured after / before at the report's batch size
    latency_ratio_b1: float | None = None  # the same at batch 1
    output_error: float | None = None  # after calibration: relative error of the layer's responses
    nonzero_after: int | None = None  # parameters left non-zero (pruning); None when not compressed
    size_before: int = 0  # bytes of the layer's parameters stored compactly (Cost.size_bytes)
    size_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ranks"] = list(self.ranks) if self.ranks is not None else None
        return d


def _count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def _bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


@dataclass
class CompressionReport:
    """Per-layer rows and totals of one :func:`factorch.compress` call.

    ``totals`` holds ``params_before/after``, ``macs_before/after`` (whole model when example inputs
    were given, otherwise the sum over the listed layers), ``params_ratio``, ``macs_ratio`` (after / before)
    and the number of layers compressed and skipped; later stages may add ``latency_ratio`` or accuracy.
    """

    layers: list[LayerReport] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)  # compress_in_stages: one entry per stage

    def finalize(self, whole_model: dict[str, int] | None = None) -> CompressionReport:
        done = [r for r in self.layers if r.skipped is None]
        if whole_model:
            t = dict(whole_model)
            t["scope"] = "model"
        else:
            t = {
                "params_before": sum(r.params_before for r in self.layers),
                "params_after": sum(r.params_after if r.skipped is None else r.params_before for r in self.layers),
                "macs_before": sum(r.macs_before for r in self.layers),
                "macs_after": sum(r.macs_after if r.skipped is None else r.macs_before for r in self.layers),
                "scope": "listed layers",
            }
        t["params_ratio"] = _ratio(t["params_after"], t["params_before"])
        t["macs_ratio"] = _ratio(t["macs_after"], t["macs_before"])
        t["layers_compressed"] = len(done)
        t["layers_skipped"] = len(self.layers) - len(done)
        self.totals.update(t)
        return self

    def to_dict(self) -> dict[str, Any]:
        out = {"layers": [r.to_dict() for r in self.layers], "totals": dict(self.totals), "config": self.config}
        if self.stages:
            out["stages"] = [dict(s) for s in self.stages]
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CompressionReport:
        """The report that :meth:`to_dict` wrote (after a JSON round trip)."""
        rows = []
        for d in data.get("layers", []):
            d = dict(d)
            d["ranks"] = tuple(d["ranks"]) if d.get("ranks") is not None else None
            rows.append(LayerReport(**d))
        return CompressionReport(
            rows, dict(data.get("totals", {})), data.get("config"), [dict(s) for s in data.get("stages", [])]
        )

    STAGE_HEADER = ["stage", "target", "params", "MACs", "score compressed", "score fine-tuned", "status"]

    def _stage_rows(self) -> list[list[str]]:
        def num(v, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        return [
            [
                str(s.get("stage")),
                s.get("target") or "-",
                "x" + num(s.get("params_ratio"), ".3f"),
                "x" + num(s.get("macs_ratio"), ".3f"),
                num(s.get("score_compressed"), ".2f"),
                num(s.get("score_finetuned"), ".2f"),
                str(s.get("status", "")),
            ]
            for s in self.stages
        ]

    def _rows(self) -> list[list[str]]:
        rows = []
        for r in self.layers:
            if r.skipped is not None:
                rows.append(
                    [
                        r.name,
                        r.type,
                        "-",
                        "-",
                        _count(r.params_before),
                        "-",
                        _count(r.macs_before),
                        "-",
                        "-",
                        _bytes(r.size_before) if r.size_before else "-",
                        "-",
                        f"skipped: {r.skipped}",
                    ]
                )
            else:
                rows.append(
                    [
                        r.name,
                        r.type,
                        r.method or "",
                        "x".join(map(str, r.ranks or ())),
                        _count(r.params_before),
                        _count(r.params_after),
                        _count(r.macs_before),
                        _count(r.macs_after),
                        _count(r.nonzero_after) if r.nonzero_after is not None else "",
                        _bytes(r.size_after) if r.size_after else "",
                        f"{r.rel_error:.3g}" if r.rel_error is not None else "",
                        self._measured_note(r),
                    ]
                )
        return rows

    def _measured_note(self, r: LayerReport) -> str:
        if r.latency_ratio is None:
            return ""
        batch = self.totals.get("latency_batch_size", "N")
        macs = r.macs_after / r.macs_before if r.macs_before else float("nan")
        return f"time x{r.latency_ratio:.2f} (b{batch}), x{r.latency_ratio_b1:.2f} (b1); MACs x{macs:.2f}"

    HEADER = [
        "layer",
        "type",
        "method",
        "ranks",
        "params",
        "params after",
        "MACs",
        "MACs after",
        "non-zero after",
        "bytes after",
        "rel. error",
        "note",
    ]

    def _total_line(self) -> list[str]:
        t = self.totals
        pr, mr = t.get("params_ratio"), t.get("macs_ratio")
        return [
            f"total ({t.get('scope', '')})",
            "",
            "",
            "",
            _count(t.get("params_before", 0)),
            _count(t.get("params_after", 0)),
            _count(t.get("macs_before", 0)),
            _count(t.get("macs_after", 0)),
            _count(t["nonzero_params_after"]) if t.get("nonzero_params_after") is not None else "",
            _bytes(t["size_bytes"]) if t.get("size_bytes") is not None else "",
            "",
            (f"params x{pr:.3f}, MACs x{mr:.3f}" if pr and mr else "") + self._storage_total() + self._latency_total(),
        ]

    def _storage_total(self) -> str:
        t = self.totals
        if t.get("size_ratio") is None:
            return ""
        return f", non-zero params x{t['nonzero_params_ratio']:.3f}, bytes x{t['size_ratio']:.3f}"

    def _latency_total(self) -> str:
        t = self.totals
        if t.get("latency_ratio") is None:
            return ""
        return f", time x{t['latency_ratio']:.3f} (b{t.get('latency_batch_size')}), x{t['latency_ratio_b1']:.3f} (b1)"

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        for row in [*self._rows(), self._total_line()]:
            lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
        lines.append("")
        lines.append(
            "MACs = multiply-accumulates; non-zero = parameters not pruned away; bytes = parameters stored compactly "
            "(non-zeros at their width plus a 1-bit mask where pruned); rel. error = ||W - W_approx|| / ||W|| of the "
            "layer weight."
        )
        if self.stages:
            lines += ["", "Stages (ratios relative to the original model):", ""]
            lines += ["| " + " | ".join(self.STAGE_HEADER) + " |", "|" + "---|" * len(self.STAGE_HEADER)]
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in self._stage_rows()]
        return "\n".join(lines) + "\n"

    def to_rich(self) -> Table:
        """A rich table in which no number is ever cut or folded: numeric and short columns keep their widest
        cell; on a narrow terminal the layer names and notes fold onto more lines instead."""
        table = Table(title="factorch compression report", caption="MACs = multiply-accumulates")
        rows = [*self._rows(), self._total_line()]
        for i, h in enumerate(self.HEADER):
            widest = max([len(h)] + [len(r[i]) for r in rows])
            if h in ("layer", "note"):
                table.add_column(h, overflow="fold", min_width=min(widest, 16), ratio=1 if h == "note" else None)
            else:
                numeric = h.startswith(("params", "MACs", "rel", "non-zero", "bytes"))
                table.add_column(h, justify="right" if numeric else "left", no_wrap=True, min_width=widest)
        for row in rows[:-1]:
            table.add_row(*row, style="dim" if row[-1].startswith("skipped") else None)
        table.add_row(*rows[-1], style="bold")
        return table

    def print(self, console: Console | None = None) -> None:
        """Print the report; where the table is wider than the console, as plain Markdown lines (the terminal
        wraps them) rather than a rich table that would have to cut cells."""
        console = console or Console()
        table = self.to_rich()
        if natural_width(table) > console.width:
            console.print(self.to_markdown(), markup=False, highlight=False, soft_wrap=True)
            return
        console.print(table)
        if self.stages:
            table = Table(title="stages (ratios relative to the original model)")
            for h in self.STAGE_HEADER:
                table.add_column(h, overflow="fold")
            for row in self._stage_rows():
                table.add_row(*row)
            console.print(table)
