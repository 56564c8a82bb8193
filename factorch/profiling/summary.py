"""Per-layer parameters and MACs of one forward pass: :func:`profile` -> :class:`ProfileReport`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich import box
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from factorch.profiling._format import format_bytes, format_count, format_shape
from factorch.profiling._inputs import check_model, eval_mode, resolve_inputs
from factorch.profiling._macs import extra_flop_formulas, op_name
from factorch.profiling._trace import Frame, trace_forward

#: Name of the row that holds MACs done by the model's own code rather than by a layer.
FUNCTIONAL = "(functional)"
#: Display name of the model itself when it has a row (a model that is a single layer).
ROOT = "(model)"
MAC_NOTE = (
    "MACs = multiply-accumulates of conv, linear/matmul and attention (torch FlopCounterMode FLOPs / 2); "
    "bias, normalization, activations and pooling count 0"
)


@dataclass(frozen=True)
class LayerProfile:
    """One row of a :class:`ProfileReport`.

    Attributes:
        name: qualified module name (``"layer1.0.conv1"``; ``""`` is the model itself), or
            ``"(functional)"`` for MACs of operators called directly in a parent's ``forward``.
        type_name: class name of the module (``"-"`` for the functional row).
        output_shape: shape of the first tensor output of the first call, ``None`` if never called.
        params: number of the module's direct parameters (a parameter shared by several modules
            appears in each of their rows but once in the report's totals).
        macs: multiply-accumulates, summed over all calls.
        calls: number of calls in the forward pass.
        note: repeated calls, shared parameters, or which modules did the functional MACs.
    """

    name: str
    type_name: str
    output_shape: tuple[int, ...] | None
    params: int
    macs: int
    calls: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the output shape as a list)."""
        d = asdict(self)
        d["output_shape"] = None if self.output_shape is None else list(self.output_shape)
        return d


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _bytes_by_dtype(tensors: Sequence[Tensor]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for t in tensors:
        out[_dtype_name(t.dtype)] += t.numel() * t.element_size()
    return dict(out)


@dataclass
class ProfileReport:
    """Result of :func:`profile`: one :class:`LayerProfile` per layer, and totals.

    Attributes:
        rows: leaf modules and modules with direct parameters in definition order, then a
            ``"(functional)"`` row when operators outside any such module did MACs; ``macs`` of the
            rows sum to ``total_macs``.
        total_macs: multiply-accumulates of the whole forward pass.
        total_params: number of parameters, each shared parameter counted once.
        param_bytes: bytes of parameters per dtype name (``{"float32": 1078888}``).
        buffer_bytes: bytes of all buffers (batch-norm statistics, ...; persistent or not) per dtype name.
        input_shapes: shapes of the inputs of the profiled forward pass.
        macs_by_op: MACs per aten operator (``{"aten.convolution": ...}``).
        functional_macs: MACs of the ``"(functional)"`` row per qualified name of the module whose own
            ``forward`` did them (``""``: the model's own ``forward``).
    """

    rows: list[LayerProfile]
    total_macs: int
    total_params: int
    param_bytes: dict[str, int]
    buffer_bytes: dict[str, int]
    input_shapes: list[tuple[int, ...]]
    macs_by_op: dict[str, int] = field(default_factory=dict)
    functional_macs: dict[str, int] = field(default_factory=dict)

    @property
    def model_size_bytes(self) -> int:
        """Bytes of all parameters and buffers."""
        return sum(self.param_bytes.values()) + sum(self.buffer_bytes.values())

    def row(self, name: str) -> LayerProfile:
        """The row of qualified module name ``name`` (or ``"(functional)"``)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row named {name!r}; rows: {', '.join(repr(r.name) for r in self.rows)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able ``{"layers": [...], "totals": {...}, "input_shapes": [...], ...}`` with exact ints."""
        return {
            "layers": [r.to_dict() for r in self.rows],
            "totals": {
                "total_macs": self.total_macs,
                "total_params": self.total_params,
                "param_bytes": dict(self.param_bytes),
                "buffer_bytes": dict(self.buffer_bytes),
                "model_size_bytes": self.model_size_bytes,
            },
            "input_shapes": [list(s) for s in self.input_shapes],
            "macs_by_op": dict(self.macs_by_op),
            "functional_macs": dict(self.functional_macs),
            "mac_definition": MAC_NOTE,
        }

    def _shape_cell(self, r: LayerProfile) -> str:
        if r.name == FUNCTIONAL:
            return "-"
        if r.calls == 0:
            return "not called"
        return format_shape(r.output_shape) + (f" ×{r.calls}" if r.calls > 1 else "")

    def _share(self, macs: int) -> str:
        return f"{100 * macs / self.total_macs:.1f}%" if self.total_macs else "-"

    def _size_line(self) -> str:
        params = ", ".join(f"{format_bytes(b)} {d}" for d, b in self.param_bytes.items()) or "none"
        buffers = ", ".join(f"{format_bytes(b)} {d}" for d, b in self.buffer_bytes.items()) or "none"
        return f"model size {format_bytes(self.model_size_bytes)} (parameters: {params}; buffers: {buffers})"

    def to_markdown(self) -> str:
        """A GitHub table, exact numbers with thousands separators, a totals row and notes."""
        lines = [
            "| Layer | Type | Output shape | Params | MACs | % MACs |",
            "| --- | --- | --- | ---: | ---: | ---: |",
        ]
        for r in self.rows:
            name = r.name or ROOT
            lines.append(
                f"| `{name}` | {r.type_name} | {self._shape_cell(r)} | {r.params:,} | {r.macs:,} | "
                f"{self._share(r.macs)} |"
            )
        lines.append(
            f"| **total** | | | **{self.total_params:,}** | **{self.total_macs:,}** | "
            f"{'100.0%' if self.total_macs else '-'} |"
        )
        notes = [
            f"Totals: {self.total_params:,} parameters ({format_count(self.total_params)}), "
            f"{self.total_macs:,} MACs ({format_count(self.total_macs)}) for input "
            f"{', '.join(str(tuple(s)) for s in self.input_shapes)}; {self._size_line()}.",
            f"{MAC_NOTE}. Shared parameters are counted once in the totals.",
        ]
        notes.extend(f"`{r.name or ROOT}`: {r.note}." for r in self.rows if r.note)
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"

    def to_rich(self) -> Table:
        """A ``rich.table.Table`` with human-friendly numbers (1.23 M)."""
        table = Table(
            title=f"profile for input {', '.join(str(tuple(s)) for s in self.input_shapes)}",
            caption=f"{self._size_line()}\n{MAC_NOTE}",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
        )
        longest = max((len(r.name or ROOT) for r in self.rows), default=5)
        table.add_column("Layer", overflow="fold", min_width=min(longest, 32))
        # numbers and types keep their widest cell (never cut or folded); names, shapes and notes fold
        table.add_column("Type", no_wrap=True, min_width=max((len(r.type_name) for r in self.rows), default=4))
        table.add_column("Output shape", overflow="fold")
        widest = max([len(format_count(v)) for r in self.rows for v in (r.params, r.macs)] + [8])
        table.add_column("Params", justify="right", no_wrap=True, min_width=widest)
        table.add_column("MACs", justify="right", no_wrap=True, min_width=widest)
        table.add_column("%", justify="right", no_wrap=True, min_width=6)
        notes = any(r.note for r in self.rows)
        if notes:
            table.add_column("Note", style="dim", overflow="fold")
        for r in self.rows:
            shape = self._shape_cell(r).replace(", ", "×").strip("(,)").replace(") ×", " ×")
            cells = [r.name or ROOT, r.type_name, shape, format_count(r.params), format_count(r.macs)]
            table.add_row(*cells, self._share(r.macs), *([r.note] if notes else []))
        table.add_section()
        total = ["total", "", "", format_count(self.total_params), format_count(self.total_macs)]
        table.add_row(*total, "100.0%" if self.total_macs else "-", *([""] if notes else []), style="bold")
        return table

    def print(self, console: Console | None = None) -> None:
        """Print :meth:`to_rich` on ``console`` (a new ``rich`` console by default); where the table is wider
        than the console, print :meth:`to_markdown` as plain lines (the terminal wraps them), never cut cells."""
        from factorch.tables import print_table

        print_table(console or Console(), self.to_rich(), self.to_markdown())


def _owns_row(module: nn.Module) -> bool:
    is_leaf = next(module.children(), None) is None
    return is_leaf or next(module.parameters(recurse=False), None) is not None


def profile(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
) -> ProfileReport:
    """Count parameters and multiply-accumulates (MACs) per layer in one forward pass.

    MACs are counted per operator by ``torch.utils.flop_counter.FlopCounterMode`` (see
    :mod:`factorch.profiling._macs`), so every layer made of convolutions, matrix products or attention
    is counted, however it is built, and charged to the module executing when the operator ran: a leaf
    module, a module with its own parameters, or else the ``"(functional)"`` row. A module called twice
    has the MACs of both calls. The pass runs under ``torch.no_grad()`` with the model in eval mode; the
    ``training`` flags are restored and the hooks removed afterwards, so the model is left unchanged.

    Args:
        model: the network.
        example_inputs: a tensor or a tuple of tensors passed positionally to ``model``.
        input_shape: instead of ``example_inputs``, the shape of a single standard-normal input in the
            model's dtype and on its device, e.g. ``(1, 1, 28, 28)``.

    Returns:
        The report: rows per layer and totals (MACs, parameters, bytes per dtype).

    Raises:
        ValueError: neither or both of ``example_inputs`` and ``input_shape``; a non-positive shape; a
            :class:`~factorch.profiling.ForwardError` when the input does not fit the model.
        TypeError: ``model`` is not a module, or an input argument has the wrong type.
    """
    check_model(model)
    inputs = resolve_inputs(model, example_inputs, input_shape)
    modules = list(model.named_modules())
    row_ids = {id(m) for _, m in modules if _owns_row(m)}

    flops: dict[str, int] = defaultdict(int)
    functional_flops: dict[str, int] = defaultdict(int)
    counter = FlopCounterMode(display=False, custom_mapping=extra_flop_formulas())
    counted = 0

    def charge(frame: Frame | None) -> None:
        nonlocal counted
        total = counter.get_total_flops()
        if total == counted:
            return
        if frame is not None and id(frame.module) in row_ids:
            flops[frame.name] += total - counted
        else:
            functional_flops["" if frame is None else frame.name] += total - counted
        counted = total

    with eval_mode(model), torch.no_grad(), counter:
        with trace_forward(model, inputs, on_boundary=charge) as trace:
            model(*inputs)
        charge(None)  # operators that ran outside every hooked module (e.g. a scripted model)

    rows = _layer_rows(modules, row_ids, flops, trace.calls, trace.output_shapes)
    functional = {name: f // 2 for name, f in functional_flops.items()}
    if functional:
        callers = "; ".join(f"{name or ROOT}: {macs:,}" for name, macs in functional.items())
        rows.append(
            LayerProfile(FUNCTIONAL, "-", None, 0, sum(functional.values()), 0, f"called in the forward of {callers}")
        )
    params = list(model.parameters())
    by_op = counter.get_flop_counts().get("Global", {})
    return ProfileReport(
        rows=rows,
        total_macs=sum(r.macs for r in rows),
        total_params=sum(p.numel() for p in params),
        param_bytes=_bytes_by_dtype(params),
        buffer_bytes=_bytes_by_dtype(list(model.buffers())),
        input_shapes=[tuple(x.shape) for x in inputs],
        macs_by_op={op_name(op): f // 2 for op, f in by_op.items()},
        functional_macs=functional,
    )


def _layer_rows(
    modules: list[tuple[str, nn.Module]],
    row_ids: set[int],
    flops: dict[str, int],
    calls: dict[str, int],
    output_shapes: dict[str, tuple[int, ...] | None],
) -> list[LayerProfile]:
    owner: dict[int, str] = {}  # parameter id -> first module (by name) that holds it
    rows = []
    for name, module in modules:
        if id(module) not in row_ids:
            continue
        shared = []
        n_params = 0
        for pname, p in module.named_parameters(recurse=False):
            n_params += p.numel()
            first = owner.setdefault(id(p), name)
            if first != name:
                shared.append(f"{pname!r} shared with {first or ROOT!r}")
        n_calls = calls.get(name, 0)
        notes = ([f"called {n_calls} times, MACs summed"] if n_calls > 1 else []) + shared
        rows.append(
            LayerProfile(
                name=name,
                type_name=type(module).__name__,
                output_shape=output_shapes.get(name),
                params=n_params,
                macs=flops.get(name, 0) // 2,
                calls=n_calls,
                note="; ".join(notes),
            )
        )
    return rows
