"""Complexity scores: the course's ``effdl`` score and the MicroNet Challenge scores (NeurIPS 2019).

``score(model, example_inputs, rules=...)`` runs one forward pass and reads what every operation really is:

* weighted operations (convolutions, matrix products with a parameter): their weights' values (zeros,
  whole zero filters or input channels = structured sparsity, the rest = unstructured), dtype, and, inside
  factorch's compressed layers, the bits the layer stores and computes with (``operand_bits``,
  ``layer_cost``): quantized, binary, weight-shared and product-quantized layers, pruned masks;
* the other operations by the official counting code's rules (google-research ``micronet_challenge/
  counting.py``): a ReLU is one multiplication per element, a sigmoid two and an addition, swish three and an
  addition, an element-wise sum one addition, global average pooling ``(HW - 1)`` additions and one
  multiplication per channel; rules that code leaves out are chosen here and named in :data:`OTHER_OPS`
  (max pooling: ``k*k - 1`` comparisons per output, counted as additions);
* BatchNorms that follow a convolution are folded into it first (the rules' "batch-norm folds into the
  preceding layer"), on a copy: the caller's model is untouched.

Written here because no library computes these scores (the official counter takes hand-written lists of
operations, for TensorFlow models).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from factorch.cost import Cost
from factorch.layers.base import MaskedDenseLayer
from factorch.surgery import fold_batchnorms

aten = torch.ops.aten


@dataclass(frozen=True)
class ScoreRules:
    """How a score counts.

    Attributes:
        name: how reports name the rules.
        ref_params: the reference model's counted parameters (the parameter term's divisor).
        ref_ops: the reference model's counted operations (the operation term's divisor).
        style: ``"effdl"``: ``sum (1 - p_s - p_u) (q_w / 32) w / ref_params + sum (1 - p_s) (max(q_w, q_a) /
            32) f / ref_ops`` over the weighted layers (``f`` their multiply-accumulates; nothing else counts);
            ``"micronet"``: every parameter counts ``bits / 32`` (a sparse tensor its non-zeros plus a 1-bit mask
            over the whole tensor), multiplications and additions count separately, each ``bits / 32`` of its
            widest input (a dot product's additions at ``accumulator_bits``), every operation counted.
        accumulator_bits: bits of the additions that sum a dot product's products (``micronet``).
        free_16bit: the rules' default for counting values wider than 16 bits as 16 bits when nothing is
            quantized below 16 bits (additions excepted).
    """

    name: str
    ref_params: float
    ref_ops: float
    style: str = "micronet"
    accumulator_bits: int = 32
    free_16bit: bool = False

    def of_cost(self, cost: Cost) -> float:
        """One layer's share of the score from its :class:`~factorch.cost.Cost` (what the budget solver adds up
        per candidate): its stored bits and its MACs at ``op_bits``; under ``micronet`` a MAC is one
        multiplication (skipped where the weight is pruned) and one accumulator addition."""
        if self.style == "effdl":
            stored = cost.nonzero_params * cost.weight_bits + cost.index_bits
            return stored / 32 / self.ref_params + cost.macs * cost.op_bits / 32 / self.ref_ops
        density = cost.nonzero_params / cost.params if cost.params else 1.0
        ops = cost.macs * density * (cost.op_bits + self.accumulator_bits) / 32
        return cost.size_bits / 32 / self.ref_params + ops / self.ref_ops

    def __post_init__(self) -> None:
        if self.style not in ("effdl", "micronet"):
            raise ValueError(f"ScoreRules.style must be 'effdl' or 'micronet', got {self.style!r}")
        if not (self.ref_params > 0 and self.ref_ops > 0):
            raise ValueError("ScoreRules.ref_params and ref_ops must be positive")


RULES = {
    # ResNet-18 (CIFAR-10, 3x32x32) in half precision: 11.2 M parameters and 0.56 G MACs at 16 bits
    "effdl": ScoreRules("effdl", 5.6e6, 2.8e8, style="effdl"),
    # WideResNet-28-10 on CIFAR-100: 36.5 M parameters, 10.49 B math operations
    "micronet-cifar100": ScoreRules("micronet-cifar100", 36.5e6, 10.49e9, free_16bit=True),
    # MobileNetV2 width 1.4 on ImageNet: 6.9 M parameters, 1,170 M math operations
    "micronet-imagenet": ScoreRules("micronet-imagenet", 6.9e6, 1170e6, free_16bit=True),
}

#: Per output element, ``(multiplications, additions)`` of the activations the official code counts, and of
#: those it leaves out (chosen here: tanh and GELU as sigmoid and swish, which they resemble in cost).
ACTIVATIONS: dict[Any, tuple[int, int]] = {}
OTHER_OPS = (
    "relu / relu6 / leaky_relu / hardtanh: 1 multiplication per element (counting.py); sigmoid, tanh: 2 "
    "multiplications and 1 addition; silu (swish), gelu, hardswish: 3 and 1; element-wise add / sub: 1 "
    "addition; element-wise mul / div: 1 multiplication; global average pooling and mean: (n - 1) additions "
    "and 1 multiplication per output; average pooling: k*k - 1 additions and 1 multiplication per output; "
    "max pooling: k*k - 1 comparisons per output, counted as additions; an unfolded BatchNorm: 1 "
    "multiplication and 1 addition per element, 2 parameters per channel; copies, padding, slicing, "
    "concatenation, reshapes and shifts: memory moves, 0."
)


def _table() -> None:
    for ops, cost in (
        (("relu", "relu_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "clamp_min", "clamp"), (1, 0)),
        (("sigmoid", "sigmoid_", "tanh", "tanh_"), (2, 1)),
        (("silu", "silu_", "gelu", "hardswish", "hardswish_"), (3, 1)),
    ):
        for name in ops:
            packet = getattr(aten, name, None)
            if packet is not None:
                ACTIVATIONS[packet] = cost


_table()
_ADDS = {aten.add, aten.add_, aten.sub, aten.sub_}
_MULS = {aten.mul, aten.mul_, aten.div, aten.div_}
_MEANS = {aten.mean, aten._adaptive_avg_pool2d}
_MAXPOOL = {aten.max_pool2d_with_indices, aten.max_pool2d, aten.max_pool1d}
_AVGPOOL = {aten.avg_pool2d, aten.avg_pool1d}
_MATMUL = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
_BATCHNORM = {aten._native_batch_norm_legit_no_training, aten.native_batch_norm, aten.batch_norm}


def _bits(t: Tensor) -> int:
    return 32 if not t.is_floating_point() else torch.finfo(t.dtype).bits


@dataclass
class LayerScore:
    """What one module's operations count.

    Attributes:
        name: the module's qualified name (``""``: operations outside every module).
        kind: the module's class name.
        params: stored parameter values (zeros included).
        nonzeros: non-zero parameter values.
        weight_bits: bits of the stored weights (the widest, when several tensors).
        act_bits: bits of the activations its weighted operations read.
        macs: multiply-accumulates of its weighted operations, as a dense kernel runs them.
        mults: multiplications (zeros skipped, every other operation included, by the rules' table).
        adds: additions.
        param_term: the parameters it counts, in 32-bit equivalents (under the rules).
        op_term: the operations it counts, in 32-bit equivalents (under the rules).
    """

    name: str
    kind: str
    params: int = 0
    nonzeros: int = 0
    weight_bits: float = 0.0
    act_bits: float = 0.0
    macs: int = 0
    mults: float = 0.0
    adds: float = 0.0
    param_term: float = 0.0
    op_term: float = 0.0
    # raw terms, before the rules' bit widths are applied: (count, bits) pairs
    # stored tensors: (non-zeros, bits per value, other bits, mask bits when stored sparse, values)
    _param_parts: list = field(default_factory=list, repr=False)
    _op_parts: list = field(default_factory=list, repr=False)  # (count, bits, kind) kind: mul | add | acc
    _effdl_parts: list = field(default_factory=list, repr=False)  # (w term bits*values, f term bits*macs)


@dataclass
class Score:
    """A model's counted parameters and operations and its score under ``rules``."""

    rules: ScoreRules
    free_16bit: bool
    params: float
    ops: float
    score: float
    layers: list[LayerScore]
    total_params: int
    total_nonzeros: int
    total_macs: int
    total_mults: float
    total_adds: float

    def to_dict(self) -> dict:
        layers = []
        for row in self.layers:
            d = {k: v for k, v in asdict(row).items() if not k.startswith("_")}
            layers.append(d)
        return {
            "rules": asdict(self.rules),
            "free_16bit": self.free_16bit,
            "params": self.params,
            "ops": self.ops,
            "score": self.score,
            "totals": {
                "params": self.total_params,
                "nonzeros": self.total_nonzeros,
                "macs": self.total_macs,
                "mults": self.total_mults,
                "adds": self.total_adds,
            },
            "layers": layers,
        }

    def to_markdown(self) -> str:
        lines = [
            f"score ({self.rules.name}{', 16 bits free' if self.free_16bit else ''}): **{self.score:.6g}** = "
            f"{self.params:,.0f} / {self.rules.ref_params:,.0f} + {self.ops:,.0f} / {self.rules.ref_ops:,.0f}",
            "",
            "| layer | kind | params | non-zeros | w bits | a bits | MACs | mults | adds | counted params | "
            "counted ops |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.layers:
            lines.append(
                f"| {r.name or '(model)'} | {r.kind} | {r.params:,} | {r.nonzeros:,} | {_fmt_bits(r.weight_bits)} | "
                f"{_fmt_bits(r.act_bits)} | {r.macs:,} | {r.mults:,.0f} | {r.adds:,.0f} | {r.param_term:,.0f} | "
                f"{r.op_term:,.0f} |"
            )
        lines.append(
            f"| total | | {self.total_params:,} | {self.total_nonzeros:,} | | | {self.total_macs:,} | "
            f"{self.total_mults:,.0f} | {self.total_adds:,.0f} | {self.params:,.0f} | {self.ops:,.0f} |"
        )
        return "\n".join(lines) + "\n"


def _fmt_bits(bits: float) -> str:
    return "-" if not bits else f"{bits:g}"


def _sparsity(weight: Tensor) -> tuple[int, int, int]:
    """``(values, non-zeros, zeros in whole zero output filters or input channels)`` of a weight whose first
    dimension is the output (conv: ``[out, in/groups, k...]``; linear: ``[out, in]``)."""
    w = weight.detach()
    nz = w != 0
    numel, nonzeros = w.numel(), int(nz.sum())
    if w.ndim < 2 or nonzeros == numel:
        return numel, nonzeros, 0
    rows = nz.flatten(1).any(1)  # output filters with a non-zero
    cols = nz.transpose(0, 1).flatten(1).any(1)  # input channels with a non-zero
    per_row = numel // w.shape[0]
    per_col = numel // w.shape[1]
    dead_rows = int((~rows).sum())
    structured = (
        dead_rows * per_row + int((~cols).sum()) * per_col - dead_rows * int((~cols).sum()) * (per_row // w.shape[1])
    )
    return numel, nonzeros, structured


class _Counter(TorchDispatchMode):
    """Counts every operator of one forward pass, charged to the innermost module running it."""

    def __init__(self, model: nn.Module, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.stack: list[tuple[str, nn.Module]] = [("", model)]
        self.rows: dict[str, LayerScore] = {}
        self.weights = {p.data_ptr() for p in model.parameters()}
        # parameters and buffers: an operation on these alone prepares weights (torch.nn.utils.prune's
        # weight_orig * weight_mask), it is not part of inference
        self.state = {t.data_ptr() for t in (*model.parameters(), *model.buffers())}
        self.seen_params: set[int] = set()

    # -- the module stack ------------------------------------------------------------------------------
    def owner(self) -> tuple[str, nn.Module]:
        """The innermost compressed layer on the stack, else the innermost module."""
        for name, module in reversed(self.stack):
            if isinstance(module, MaskedDenseLayer):
                return name, module
        return self.stack[-1]

    def row(self) -> LayerScore:
        name, module = self.owner()
        if name not in self.rows:
            self.rows[name] = LayerScore(name=name, kind=type(module).__name__)
        return self.rows[name]

    # -- the operators -----------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        _, owner = self.owner()
        inside_compressed = isinstance(owner, MaskedDenseLayer)
        if packet is aten.convolution:
            self._weighted(args[0], args[1], args[2], out, groups=int(args[8]), transposed=bool(args[6]))
        elif packet in _MATMUL:
            self._matmul(packet, args, out)
        elif inside_compressed:
            pass  # a compressed layer's own arithmetic (fake quantization, masks): the layer is counted whole
        elif all(a.data_ptr() in self.state for a in args if isinstance(a, Tensor)):
            pass  # weights prepared from parameters and buffers alone
        elif packet in _BATCHNORM:
            self._batchnorm(args, out)
        elif packet in ACTIVATIONS:
            m, a = ACTIVATIONS[packet]
            self._elementwise(out, args, m, a)
        elif packet in _ADDS and len(args) >= 2:
            self._elementwise(out, args, 0, 1)
        elif packet in _MULS and len(args) >= 2:
            self._elementwise(out, args, 1, 0)
        elif packet in _MEANS:
            src, dst = args[0], out
            n = dst.numel()
            self._count(src, mults=n, adds=src.numel() - n)
        elif packet in _AVGPOOL or packet in _MAXPOOL:
            dst = out[0] if isinstance(out, tuple) else out
            kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size")
            k = math.prod(kernel) if isinstance(kernel, (list, tuple)) else int(kernel) ** 2
            self._count(args[0], mults=dst.numel() if packet in _AVGPOOL else 0, adds=dst.numel() * (k - 1))
        return out

    def _count(self, x: Tensor, mults: float = 0, adds: float = 0) -> None:
        row = self.row()
        bits = _bits(x)
        if mults:
            row._op_parts.append((mults / self.batch, bits, "mul"))
        if adds:
            row._op_parts.append((adds / self.batch, bits, "add"))

    def _elementwise(self, out: Tensor, args: tuple, mults: int, adds: int) -> None:
        """``mults`` and ``adds`` per output element, at the widest tensor input's bits."""
        if not isinstance(out, Tensor):
            return
        tensors = [a for a in args if isinstance(a, Tensor)]
        widest = max(tensors, key=_bits) if tensors else out
        self._count(widest, mults=mults * out.numel(), adds=adds * out.numel())

    def _param(self, row: LayerScore, tensor: Tensor | None, bits: float, sparse: bool = True) -> None:
        """Charge a parameter tensor once (shared weights count once); ``sparse=False``: stored whole (a
        bias: its zeros are values too)."""
        if tensor is None:
            return
        key = (tensor.data_ptr(), tensor.numel())
        if key in self.seen_params:
            return
        self.seen_params.add(key)
        numel, nonzeros, _ = _sparsity(tensor)
        nonzeros = nonzeros if sparse else numel
        row.params += numel
        row.nonzeros += nonzeros
        row.weight_bits = max(row.weight_bits, bits)
        row._param_parts.append((nonzeros, bits, 0, numel if nonzeros < numel else 0, numel))

    def _weighted(self, x, weight, bias, out, groups: int, transposed: bool) -> None:
        row = self.row()
        _, owner = self.owner()
        w_bits, a_bits = _bits(weight), _bits(x)
        if isinstance(owner, MaskedDenseLayer):
            w_bits, a_bits = owner.operand_bits()
        numel, nonzeros, structured = _sparsity(weight)
        if transposed:  # every input element meets its kernel slice [out / groups, k...]
            macs = x.numel() * weight[0].numel()
        else:  # every output element is a dot product of one filter [in / groups, k...]
            macs = out.numel() * weight[0].numel()
        density = nonzeros / numel if numel else 0.0
        mults = macs * density
        outputs = out.numel()
        adds = max(mults - outputs, 0) + (outputs if bias is not None else 0)
        self._charge_weighted(row, owner, weight, bias, w_bits, a_bits, macs, mults, adds, numel, structured)

    def _matmul(self, packet, args, out) -> None:
        if packet in (aten.addmm, aten.baddbmm):
            bias, a, b = args[0], args[1], args[2]
        else:
            bias, a, b = None, args[0], args[1]
        row = self.row()
        _, owner = self.owner()
        if isinstance(owner, MaskedDenseLayer):  # its linear map: x @ W^T with the layer's effective weight
            weight, x, is_param = b, a, True
        else:
            weight, x = (b, a) if b.data_ptr() in self.weights or self._is_layer_weight(b) else (a, b)
            is_param = weight.data_ptr() in self.weights or self._is_layer_weight(weight)
        k = a.shape[-1]
        macs = out.numel() * k
        if not is_param:  # two activations (attention): operations only
            self._count(a, mults=macs, adds=max(macs - out.numel(), 0))
            return
        w_bits, a_bits = _bits(weight), _bits(x)
        if isinstance(owner, MaskedDenseLayer):
            w_bits, a_bits = owner.operand_bits()
        numel, nonzeros, structured = _sparsity(weight.transpose(-1, -2) if weight is b else weight)
        density = nonzeros / numel if numel else 0.0
        mults = macs * density
        adds = max(mults - out.numel(), 0) + (out.numel() if bias is not None else 0)
        self._charge_weighted(row, owner, weight, bias, w_bits, a_bits, macs, mults, adds, numel, structured)

    def _is_layer_weight(self, t: Tensor) -> bool:
        for _, module in reversed(self.stack):
            w = getattr(module, "weight", None)
            if isinstance(w, Tensor) and w.data_ptr() == t.data_ptr():
                return True
        return False

    def _charge_weighted(self, row, owner, weight, bias, w_bits, a_bits, macs, mults, adds, numel, structured):
        n = self.batch
        row.macs += int(macs // n)
        row.act_bits = max(row.act_bits, a_bits)
        op_bits = max(w_bits, a_bits)
        row._op_parts.append((mults / n, op_bits, "mul"))
        row._op_parts.append((adds / n, None, "acc"))
        p_s = structured / numel if numel else 0.0
        row._effdl_parts.append(("ops", (1 - p_s) * macs / n, op_bits))
        if isinstance(owner, MaskedDenseLayer):
            key = ("layer", id(owner))
            if key not in self.seen_params:  # the layer's storage, as it reports it
                self.seen_params.add(key)
                cost = owner.layer_cost()
                row.params += cost.params
                row.nonzeros += cost.nonzero_params
                row.weight_bits = max(row.weight_bits, cost.weight_bits)
                row._param_parts.append(
                    (cost.nonzero_params, cost.weight_bits, cost.index_bits, cost.mask_bits, cost.params)
                )
            return
        self._param(row, weight, w_bits)
        self._param(row, bias, _bits(bias) if bias is not None else 32, sparse=False)

    def _batchnorm(self, args, out) -> None:
        row = self.row()
        x, weight = args[0], args[1]
        self._elementwise(out, (x,), 1, 1)
        channels = x.shape[1]
        key = ("bn", x.shape[1], id(self.stack[-1][1]))
        if key not in self.seen_params:
            self.seen_params.add(key)
            bits = _bits(weight) if isinstance(weight, Tensor) else 32
            row.params += 2 * channels
            row.nonzeros += 2 * channels
            row._param_parts.append((2 * channels, bits, 0, 0, 2 * channels))


@contextmanager
def _module_stack(model: nn.Module, counter: _Counter) -> Iterator[None]:
    handles = []
    for name, module in model.named_modules():
        if module is model:
            continue

        def pre(mod, _args, name=name):
            counter.stack.append((name, mod))

        def post(mod, _args, _out):
            counter.stack.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def resolve_rules(rules: str | ScoreRules) -> ScoreRules:
    """A rules name or object as :class:`ScoreRules` (``ValueError`` naming the choices)."""
    if isinstance(rules, ScoreRules):
        return rules
    if isinstance(rules, str) and rules in RULES:
        return RULES[rules]
    if isinstance(rules, str):
        raise ValueError(f"unknown score rules {rules!r}; choose from {', '.join(RULES)} or pass a ScoreRules")
    raise TypeError(f"rules must be a name or a ScoreRules, got {type(rules).__name__}")


def score(
    model: nn.Module,
    example_inputs: Tensor | tuple,
    rules: str | ScoreRules = "effdl",
    free_16bit: bool | None = None,
) -> Score:
    """Count ``model``'s parameters and operations on one forward pass of ``example_inputs`` and score them.

    Args:
        model: any ``nn.Module``: dense, half precision, pruned with ``torch.nn.utils.prune``, or compressed
            by factorch (left untouched).
        example_inputs: the inputs of one forward pass; counts are per sample (divided by the batch size).
        rules: ``"effdl"``, ``"micronet-cifar100"``, ``"micronet-imagenet"`` or a :class:`ScoreRules`.
        free_16bit: count values wider than 16 bits as 16 bits (additions excepted) when nothing is quantized
            below 16 bits; ``None``: the rules' default (``micronet-*``: on; ``effdl`` has no such rule).

    Returns:
        A :class:`Score`: ``params`` and ``ops`` as counted (32-bit equivalents), ``score``, per-layer rows.
    """
    rules = resolve_rules(rules)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not inputs or not isinstance(inputs[0], Tensor) or inputs[0].ndim == 0:
        raise ValueError("example_inputs must be a batched tensor (or a tuple whose first item is one)")
    # tensors computed from parameters and kept on a module (torch.nn.utils.prune's masked weight) cannot be
    # deep-copied: copy them detached (the copy recomputes them on its forward pass anyway)
    memo = {
        id(v): v.detach().clone()
        for m in model.modules()
        for v in vars(m).values()
        if isinstance(v, Tensor) and not v.is_leaf
    }
    work = copy.deepcopy(model, memo).eval()
    try:
        fold_batchnorms(work)
    except (ValueError, RuntimeError):
        pass  # BatchNorms without running statistics stay, counted as they run
    counter = _Counter(work, batch=int(inputs[0].shape[0]))
    with torch.no_grad(), _module_stack(work, counter), counter:
        work(*inputs)
    return _finish(counter, rules, free_16bit)


def _finish(counter: _Counter, rules: ScoreRules, free_16bit: bool | None) -> Score:
    rows = list(counter.rows.values())
    low = any(b < 16 for r in rows for _, b, *_ in r._param_parts) or any(
        b is not None and b < 16 for r in rows for _, b, _kind in r._op_parts
    )
    free = (rules.free_16bit if free_16bit is None else bool(free_16bit)) and not low
    if rules.style == "effdl":
        free = False
    params = ops = 0.0
    for r in rows:
        r.mults = sum(c for c, _, kind in r._op_parts if kind == "mul")
        r.adds = sum(c for c, _, kind in r._op_parts if kind in ("add", "acc"))
        if rules.style == "effdl":  # (1 - p_s - p_u) (q_w / 32) w: the non-zero values, no mask
            r.param_term = sum((nz * b + other) / 32 for nz, b, other, _, _ in r._param_parts)
            r.op_term = sum(f * b / 32 for _, f, b in r._effdl_parts)
        else:  # a sparse tensor: its non-zeros and a 1-bit mask, when that is smaller than storing it whole
            r.param_term = 0.0
            for nz, b, other, mask, values in r._param_parts:
                b = min(b, 16) if free else b
                stored = min(nz * b + mask, values * b) if mask else nz * b
                r.param_term += (stored + other) / 32
            r.op_term = 0.0
            for count, bits, kind in r._op_parts:
                if kind == "acc":
                    bits = rules.accumulator_bits
                elif kind == "mul" and free:
                    bits = min(bits, 16)
                r.op_term += count * bits / 32
        params += r.param_term
        ops += r.op_term
    rows = [r for r in rows if r.params or r.mults or r.adds]
    return Score(
        rules=rules,
        free_16bit=free,
        params=params,
        ops=ops,
        score=params / rules.ref_params + ops / rules.ref_ops,
        layers=rows,
        total_params=sum(r.params for r in rows),
        total_nonzeros=sum(r.nonzeros for r in rows),
        total_macs=sum(r.macs for r in rows),
        total_mults=sum(r.mults for r in rows),
        total_adds=sum(r.adds for r in rows),
    )


__all__ = ["RULES", "LayerScore", "Score", "ScoreRules", "score"]
