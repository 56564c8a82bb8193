"""Channel dependency analysis: which slices of which layers must be removed together.

Structured pruning removes whole channels (conv filters, Linear neurons) so that layers become physically
smaller. Removing output channel ``c`` of a conv also removes input channel ``c`` of every layer that reads
it, the matching BatchNorm features, the channel of every tensor added to it in a residual sum, ... This
module finds those couplings by tracing the model with :mod:`torch.fx` and propagating, for every tensor
of the graph, one *slot* per position along its channel dimension (dim 1, NC... layout). Operations unite
or create slots:

* ``Conv1d/2d/3d`` (``groups == 1``): a consumer of its input slots (``"in"``, weight dim 1) and the
  producer of fresh output slots (``"out"``, weight dim 0).
* Depthwise conv (``groups == in_channels == out_channels``): input channel ``c`` *is* output channel
  ``c``; both slices are attached to the same slot and the conv keeps ``groups == channels`` when pruned.
* Any other grouped conv (``1 < groups``, not depthwise) is **not pruned**: its input and output channels are
  marked unprunable (pruning whole groups consistently is not implemented).
* ``BatchNorm1d/2d/3d`` follow their input channels; activations, dropout, pooling, ``Identity``,
  spatial slicing (``x[:, :, ::2, ::2]``), spatial ``F.pad`` and reductions over spatial dims pass slots
  through.
* ``+``, ``-``, ``*``, ``/`` between two activations unite their slots position by position (residual
  sums, squeeze-and-excitation gates); broadcasting along the channel dim does not couple.
* ``torch.cat`` on dim 1 concatenates the slot lists (channel offsets); on another dim it unites them.
* ``flatten`` / ``view(N, -1)`` repeats each channel's slot over its ``H*W`` consecutive features, so a
  ``Linear`` after a flatten has ``H*W`` input features coupled with each channel; ``Linear`` -> ``Linear``
  couples neurons.
* A *channel map* (factorch's option-A :class:`~factorch.models.resnet.PadShortcut` and the
  :class:`ChannelMapShortcut` it becomes when pruned) is a leaf of the trace: it reads its input slots and
  produces fresh output slots, because ``out[:, dst[i]] = x[:, src[i]]`` stays valid for any subsets of kept
  input and output channels. Pruning rewrites ``src`` / ``dst`` and the padding becomes the absent
  ``dst`` entries; no channel of the residual stream before the shortcut is forced to match one after it.

Anything else (an unknown module or function, a channel-dim ``F.pad``, a view that splits the channel dim,
a per-channel constant, ``torch.split``, ``LayerNorm``, ``GroupNorm``, ...) makes every slot touching it
**unprunable**, with the reason recorded, so the analysis is never silently wrong. So are the network's
inputs and outputs (the classifier's output features are never pruned) and every slot touching a module
named in ``ignored``. Slots are merged with a union-find; each merged set is one prunable *channel*, a set
of :class:`Slice` s. Channels made of the same (module, role) pairs form a :class:`ChannelGroup`: the unit
that gets a minimum number of kept channels and a normalised importance.

Why not Torch-Pruning (Fang et al. 2023, ``DepGraph``): its graph treats the zero-padding shortcut of
option-A ResNets as an ordinary op, so after pruning the stage before a padded shortcut the classifier
receives the wrong number of features (56 instead of 32 on resnet20); and it saves pruned models by
pickling whole modules, whereas factorch saves a JSON record of kept indices plus an ordinary
``state_dict`` and rebuilds the structure on load (see :mod:`factorch.prune.channels`).

References: Li et al. 2017 (pruning filters), Fang et al. 2023 (DepGraph: dependency groups).
"""

from __future__ import annotations

import difflib
import math
import operator
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from factorch.models.resnet import PadShortcut

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
)
_PASS_FUNCTIONS = {
    torch.relu,
    torch.relu_,
    torch.sigmoid,
    torch.tanh,
    torch.abs,
    torch.clamp,
    operator.neg,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.sigmoid,
    F.tanh,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.interpolate,
}
_PASS_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "abs",
    "neg",
    "clamp",
    "clamp_",
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
    "half",
    "to",
}
_BINARY_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze"}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
# calls that read a tensor's metadata only: they neither couple nor block channels
_META_METHODS = {"size", "dim", "numel"}
_META_FUNCTIONS = {getattr, len}


class ChannelTraceError(ValueError):
    """The model cannot be traced by :mod:`torch.fx` (data-dependent control flow, unsupported calls)."""


class ChannelMapShortcut(nn.Module):
    """Strided identity shortcut that moves chosen input channels to chosen output channels, zero elsewhere.

    ``out[:, dst_index[i]] = x[:, src_index[i], ::stride, ::stride]``; every output channel not in
    ``dst_index`` is zero. The option-A :class:`~factorch.models.resnet.PadShortcut` is the case
    ``src_index = range(in)``, ``dst_index = range(pad, pad + in)``; after pruning, the kept channels of
    both sides are kept in the maps. The index tensors are non-persistent buffers (they move with
    ``.to()`` and are absent from the ``state_dict``); :meth:`to_dict` describes the module in JSON.

    Args:
        stride: spatial subsampling step (1 keeps every position).
        src_index: input channel read for each mapped output channel.
        dst_index: output channel written, one per entry of ``src_index``, all different.
        out_channels: number of output channels.

    Raises:
        ValueError: a stride below 1, index lists of different lengths, a repeated or out-of-range
            ``dst_index``, a negative ``src_index``, or ``out_channels < 1``.
    """

    def __init__(self, stride: int, src_index: Sequence[int], dst_index: Sequence[int], out_channels: int) -> None:
        super().__init__()
        src, dst = [int(i) for i in src_index], [int(i) for i in dst_index]
        if int(stride) < 1 or int(out_channels) < 1:
            raise ValueError(
                f"ChannelMapShortcut needs stride >= 1 and out_channels >= 1, got {stride} and {out_channels}"
            )
        if len(src) != len(dst):
            raise ValueError(f"ChannelMapShortcut: src_index has {len(src)} entries, dst_index {len(dst)}")
        if len(set(dst)) != len(dst) or any(not 0 <= d < out_channels for d in dst) or any(s < 0 for s in src):
            raise ValueError(
                f"ChannelMapShortcut: dst_index must hold distinct channels in [0, {out_channels}) and "
                f"src_index non-negative channels, got src={src}, dst={dst}"
            )
        self.stride, self.out_channels = int(stride), int(out_channels)
        self.register_buffer("src_index", torch.tensor(src, dtype=torch.long), persistent=False)
        self.register_buffer("dst_index", torch.tensor(dst, dtype=torch.long), persistent=False)

    @classmethod
    def from_pad_shortcut(cls, module: PadShortcut) -> ChannelMapShortcut:
        """The map that computes exactly what ``module`` computes."""
        before = (module.out_channels - module.in_channels) // 2
        src = list(range(module.in_channels))
        return cls(module.stride, src, [before + i for i in src], module.out_channels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able arguments of the constructor."""
        return {
            "stride": self.stride,
            "src_index": self.src_index.tolist(),
            "dst_index": self.dst_index.tolist(),
            "out_channels": self.out_channels,
        }

    def extra_repr(self) -> str:
        return f"stride={self.stride}, mapped={self.src_index.numel()}, out_channels={self.out_channels}"

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        out = torch.zeros_like(x[:, :1]).repeat(1, self.out_channels, 1, 1)
        return out.index_copy(1, self.dst_index, x.index_select(1, self.src_index))


class ChannelMap(NamedTuple):
    """A channel-map module as the analysis sees it: ``out[:, dst[i]] = in[:, src[i]]``."""

    stride: int
    src: tuple[int, ...]
    dst: tuple[int, ...]
    in_channels: int
    out_channels: int


def channel_map_of(module: nn.Module) -> ChannelMap | None:
    """The channel map of a :class:`PadShortcut` or :class:`ChannelMapShortcut`, ``None`` for other modules."""
    if type(module) is PadShortcut:
        module = ChannelMapShortcut.from_pad_shortcut(module)
        in_channels = len(module.src_index)
    elif type(module) is ChannelMapShortcut:
        in_channels = None
    else:
        return None
    src, dst = tuple(module.src_index.tolist()), tuple(module.dst_index.tolist())
    return ChannelMap(module.stride, src, dst, in_channels, module.out_channels)


class Slice(NamedTuple):
    """One index of one dimension of one layer: ``role`` ``"out"`` (output channel / neuron, weight dim 0)
    or ``"in"`` (input channel / feature, weight dim 1)."""

    module: str
    role: str
    index: int


@dataclass(frozen=True)
class LayerGeometry:
    """What a pruned layer costs, per kept channel (``kind`` ``"conv"``, ``"depthwise"``, ``"linear"``, ``"bn"``).

    Attributes:
        kind: the layer kind.
        out_size: output channels / features (BatchNorm: ``num_features``).
        in_size: input channels / features (depthwise and BatchNorm: equal to ``out_size``).
        macs_unit: MACs of one (output, input) channel pair summed over all calls (conv, linear), of one
            channel (depthwise), 0 for BatchNorm.
        params_unit: weights of one (output, input) pair (conv: kernel size; linear: 1), of one channel
            (depthwise: kernel size; BatchNorm: 2 when affine, else 0).
        bias: whether the layer has a bias (one parameter per output channel).
    """

    kind: str
    out_size: int
    in_size: int
    macs_unit: int
    params_unit: int
    bias: bool


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned by the same rule: each channel is the set of slices removed together.

    Attributes:
        name: the first layer (in execution order) producing the group's channels.
        channels: one tuple of :class:`Slice` per channel, in the producer's channel order.
        reasons: why the group cannot be pruned; empty when it can.
    """

    name: str
    channels: tuple[tuple[Slice, ...], ...]
    reasons: tuple[str, ...] = ()

    @property
    def prunable(self) -> bool:
        """Whether channels of this group may be removed."""
        return not self.reasons

    @property
    def size(self) -> int:
        """Number of channels."""
        return len(self.channels)

    @property
    def layers(self) -> tuple[tuple[str, str], ...]:
        """The (module, role) pairs the group slices, in order of first appearance."""
        return tuple(dict.fromkeys((s.module, s.role) for channel in self.channels for s in channel))


@dataclass(frozen=True)
class ChannelGraph:
    """Result of :func:`analyze_channels`.

    Attributes:
        model_name: class name of the analyzed model.
        groups: all channel groups, prunable or not, in execution order of their producers.
        layers: geometry of every conv / Linear / BatchNorm that some group slices.
        channel_maps: the channel-map shortcuts, by module name.
        order: module names in order of first execution.
    """

    model_name: str
    groups: tuple[ChannelGroup, ...]
    layers: dict[str, LayerGeometry] = field(default_factory=dict)
    channel_maps: dict[str, ChannelMap] = field(default_factory=dict)
    order: tuple[str, ...] = ()

    def group(self, name: str) -> ChannelGroup:
        """The group called ``name``; ``ValueError`` with close matches when there is none."""
        for g in self.groups:
            if g.name == name:
                return g
        names = [g.name for g in self.groups]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"{self.model_name} has no channel group named {name!r}.{hint}")

    @property
    def prunable_groups(self) -> tuple[ChannelGroup, ...]:
        """Groups whose channels may be removed."""
        return tuple(g for g in self.groups if g.prunable)

    @property
    def unprunable(self) -> dict[str, tuple[str, ...]]:
        """Reasons of every group that cannot be pruned, by group name."""
        return {g.name: g.reasons for g in self.groups if not g.prunable}


class ChannelTracer(fx.Tracer):
    """``torch.fx`` tracer that keeps channel-map shortcuts as leaves (their ``F.pad`` is a channel map)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m) in (PadShortcut, ChannelMapShortcut) or super().is_leaf_module(m, module_qualified_name)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def _shape(node: Any) -> tuple[int, ...] | None:
    """Shape of a node's tensor output recorded by ShapeProp; ``None`` for non-tensors and tuples."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return None if shape is None else tuple(shape)


def _arg(node: fx.Node, position: int, keyword: str, default: Any = None) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(keyword, default)


def _expand_index(index: Any, ndim: int) -> tuple | None:
    """``index`` as a tuple of slices and ints with ``...`` expanded; ``None`` for advanced indexing."""
    index = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, (slice, int)) or i is Ellipsis for i in index) or any(isinstance(i, bool) for i in index):
        return None
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (ndim - len(index) + 1) + index[at + 1 :]
    return index


def _dims(dim: Any, ndim: int) -> list[int] | None:
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    return [d + ndim if d < 0 else d for d in dims]


class _Propagation:
    """Walks the traced graph once, giving each tensor's channel dim a list of slots."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.uf = _UnionFind()
        self.ids: dict[fx.Node, list[int]] = {}
        self.member_slot: dict[Slice, int] = {}
        self.fixed: dict[int, list[str]] = {}
        self.layers: dict[str, LayerGeometry] = {}
        self.maps: dict[str, ChannelMap] = {}
        self.order: dict[str, int] = {}

    # slots -------------------------------------------------------------------------------------------
    def fresh(self, n: int, reason: str | None = None) -> list[int]:
        slots = [self.uf.new() for _ in range(n)]
        if reason is not None:
            for s in slots:
                self.fixed.setdefault(s, []).append(reason)
        return slots

    def fix(self, slots: Iterable[int], reason: str) -> None:
        for s in set(slots):
            self.fixed.setdefault(s, []).append(reason)

    def attach(self, slot: int, member: Slice) -> None:
        self.order.setdefault(member.module, len(self.order))
        if member in self.member_slot:
            self.uf.union(self.member_slot[member], slot)
        else:
            self.member_slot[member] = slot

    def attach_all(self, slots: Sequence[int], module: str, role: str) -> None:
        for i, s in enumerate(slots):
            self.attach(s, Slice(module, role, i))

    def unite(self, a: Sequence[int], b: Sequence[int]) -> None:
        for i, j in zip(a, b):
            self.uf.union(i, j)

    # walking -----------------------------------------------------------------------------------------
    def run(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            self.visit(node)
            shape = _shape(node)
            if node not in self.ids and shape is not None and len(shape) >= 2:
                self.ids[node] = self.fresh(shape[1], f"output of {node.name!r} is not tracked")

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            shape = _shape(node)
            if shape is not None and len(shape) >= 2:
                self.ids[node] = self.fresh(shape[1], f"network input {node.name!r}")
        elif node.op == "output":
            for arg in node.all_input_nodes:
                self.fix(self.ids.get(arg, ()), "network output")
        elif node.op == "get_attr":
            shape = _shape(node)
            if shape is not None and len(shape) >= 2:
                self.ids[node] = self.fresh(shape[1], f"constant {node.target!r} has per-channel values")
        else:
            why = self.call_module(node) if node.op == "call_module" else self.call_op(node)
            if why:
                self.unsupported(node, why)

    def unsupported(self, node: fx.Node, why: str) -> None:
        reason = f"{why} at {node.name!r}"
        for arg in node.all_input_nodes:
            self.fix(self.ids.get(arg, ()), reason)
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            self.ids[node] = self.fresh(shape[1], reason)

    def first_ids(self, node: fx.Node) -> list[int] | None:
        x = node.args[0] if node.args else None
        return self.ids.get(x) if isinstance(x, fx.Node) else None

    def pass_through(self, node: fx.Node) -> str:
        ids, shape = self.first_ids(node), _shape(node)
        if ids is None or shape is None or len(shape) < 2 or shape[1] != len(ids):
            return "op changes the channel dimension"
        self.ids[node] = ids
        return ""

    # modules -----------------------------------------------------------------------------------------
    def call_module(self, node: fx.Node) -> str:
        name, module = node.target, self.modules[node.target]
        kind = type(module)
        if self.first_ids(node) is None:
            return f"{kind.__name__} {name!r} reads an untracked input"
        if kind in CONVS:
            return self.conv(node, name, module)
        if kind is nn.Linear:
            return self.linear(node, name, module)
        if kind in BATCHNORMS:
            return self.batchnorm(node, name, module)
        if kind in (PadShortcut, ChannelMapShortcut):
            return self.channel_map(node, name, module)
        if kind is nn.Flatten:
            return self.reshape(node)
        if kind in _PASS_MODULES:
            return self.pass_through(node)
        return f"unsupported module {kind.__name__} {name!r}"

    def conv(self, node: fx.Node, name: str, conv: nn.Module) -> str:
        ids, shape = self.first_ids(node), _shape(node)
        kernel, calls = math.prod(conv.kernel_size), shape[0] * math.prod(shape[2:])
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        if conv.groups > 1 and not depthwise:
            return f"grouped conv {name!r} (groups={conv.groups}, not depthwise)"
        if depthwise:
            self.attach_all(ids, name, "in")
            self.attach_all(ids, name, "out")
            self.ids[node] = ids
        else:
            self.attach_all(ids, name, "in")
            self.ids[node] = self.fresh(conv.out_channels)
            self.attach_all(self.ids[node], name, "out")
        kind = "depthwise" if depthwise else "conv"
        self.add_layer(name, kind, conv.out_channels, conv.in_channels, kernel * calls, kernel, conv.bias is not None)
        return ""

    def linear(self, node: fx.Node, name: str, linear: nn.Linear) -> str:
        ids, shape = self.first_ids(node), _shape(node)
        if shape is None or len(shape) != 2:
            return f"Linear {name!r} on a {len(shape or ())}-d input (only (N, features) is tracked)"
        self.attach_all(ids, name, "in")
        self.ids[node] = self.fresh(linear.out_features)
        self.attach_all(self.ids[node], name, "out")
        bias = linear.bias is not None
        self.add_layer(name, "linear", linear.out_features, linear.in_features, shape[0], 1, bias)
        return ""

    def batchnorm(self, node: fx.Node, name: str, bn: nn.Module) -> str:
        if self.pass_through(node):
            return f"BatchNorm {name!r} on an input of another width"
        self.attach_all(self.ids[node], name, "out")
        params = 2 if bn.affine else 0
        self.add_layer(name, "bn", bn.num_features, bn.num_features, 0, params, False)
        return ""

    def channel_map(self, node: fx.Node, name: str, module: nn.Module) -> str:
        cmap = channel_map_of(module)
        ids = self.first_ids(node)
        if cmap.src and max(cmap.src) >= len(ids):
            return f"channel map {name!r} reads channel {max(cmap.src)} of a {len(ids)}-channel input"
        self.attach_all(ids, name, "in")
        self.ids[node] = self.fresh(cmap.out_channels)
        self.attach_all(self.ids[node], name, "out")
        self.maps[name] = cmap._replace(in_channels=len(ids))
        return ""

    def add_layer(self, name: str, kind: str, out_size: int, in_size: int, macs: int, params: int, bias: bool) -> None:
        old = self.layers.get(name)
        macs += old.macs_unit if old is not None else 0
        self.layers[name] = LayerGeometry(kind, out_size, in_size, macs, params, bias)

    # functions and methods ---------------------------------------------------------------------------
    def call_op(self, node: fx.Node) -> str:
        target = node.target
        method = node.op == "call_method"
        if (method and target in _META_METHODS) or (not method and target in _META_FUNCTIONS):
            return ""
        if (method and target in _PASS_METHODS) or (not method and target in _PASS_FUNCTIONS):
            return self.pass_through(node)
        if (method and target in _BINARY_METHODS) or (not method and target in _BINARY_FUNCTIONS):
            return self.binary(node)
        if (method and target in _REDUCE_METHODS) or (not method and target in _REDUCE_FUNCTIONS):
            return self.reduce(node)
        if (method and target in _RESHAPE_METHODS) or (not method and target in _RESHAPE_FUNCTIONS):
            return self.reshape(node)
        if not method and target in _CAT_FUNCTIONS:
            return self.cat(node)
        if not method and target is operator.getitem:
            return self.getitem(node)
        if not method and target is F.pad:
            return self.pad(node)
        label = target if method else getattr(target, "__name__", str(target))
        return f"unsupported operation {label!r}"

    def binary(self, node: fx.Node) -> str:
        out = _shape(node)
        if out is None or len(out) < 2:
            return "elementwise op without a channel dimension"
        result = None
        for arg in [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]:
            shape, ids = _shape(arg), self.ids.get(arg)
            if shape is None:
                continue
            channel_pos = len(shape) - (len(out) - 1)  # the operand dim aligned with the output's dim 1
            if ids is not None and len(shape) == len(out) and shape[1] == out[1]:
                if result is not None:
                    self.unite(result, ids)
                result = result or ids
            elif channel_pos >= 0 and shape[channel_pos] != 1 and math.prod(shape) != 1:
                return "elementwise op with a per-channel operand that is not an activation"
        if result is None:
            return "elementwise op without an operand of the output's width"
        self.ids[node] = result
        return ""

    def reduce(self, node: fx.Node) -> str:
        shape = _shape(node.args[0])
        dims = _dims(_arg(node, 1, "dim"), len(shape or ()))
        if shape is None or dims is None or min(dims) < 2:
            return "reduction over the batch or channel dimension"
        return self.pass_through(node)

    def reshape(self, node: fx.Node) -> str:
        ids, before, after = self.first_ids(node), _shape(node.args[0]), _shape(node)
        if ids is None or before is None or after is None or len(before) < 2 or len(after) < 2:
            return "reshape without a channel dimension"
        spatial = math.prod(before[2:])
        if len(after) == 2 and after[0] == before[0] and after[1] == len(ids) * spatial:
            self.ids[node] = [s for s in ids for _ in range(spatial)]
            return ""
        if after[:2] == before[:2] and math.prod(after[2:]) == spatial:
            self.ids[node] = ids
            return ""
        return "reshape that splits or merges the channel dimension"

    def cat(self, node: fx.Node) -> str:
        tensors, out = _arg(node, 0, "tensors"), _shape(node)
        dim = _arg(node, 1, "dim", 0)
        parts = [self.ids.get(t) if isinstance(t, fx.Node) else None for t in tensors]
        if out is None or any(p is None for p in parts):
            return "concatenation of untracked tensors"
        dim = dim + len(out) if dim < 0 else dim
        if dim == 1:
            self.ids[node] = [s for p in parts for s in p]
            return ""
        for p in parts[1:]:
            self.unite(parts[0], p)
        self.ids[node] = parts[0]
        return ""

    def getitem(self, node: fx.Node) -> str:
        shape = _shape(node.args[0])
        if self.first_ids(node) is None or shape is None:
            return "indexing of an untracked value"
        index = _expand_index(node.args[1], len(shape))
        if index is None or not isinstance(index[0], slice) or (len(index) > 1 and index[1] != slice(None)):
            return "indexing of the batch or channel dimension"
        return self.pass_through(node)

    def pad(self, node: fx.Node) -> str:
        shape, pad = _shape(node.args[0]), _arg(node, 1, "pad")
        if shape is None or len(pad) > 2 * (len(shape) - 2):
            return "F.pad of the channel dimension (wrap it in a module the analysis knows)"
        return self.pass_through(node)


def _check_ignored(model: nn.Module, ignored: Iterable[str]) -> tuple[str, ...]:
    names = [n for n, _ in model.named_modules() if n]
    ignored = (ignored,) if isinstance(ignored, str) else tuple(ignored)
    for name in ignored:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"ignored names {name!r}, which is not a module of {type(model).__name__}.{hint}")
    return ignored


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def trace_channels(model: nn.Module, example_inputs: Sequence[Tensor]) -> fx.GraphModule:
    """Trace ``model`` with :class:`ChannelTracer` and record every node's output shape (ShapeProp).

    The model runs once in eval mode under ``torch.no_grad()``; its training flags are restored.

    Raises:
        ChannelTraceError: torch.fx cannot trace the model, or the traced graph fails on the inputs.
    """
    label = type(model).__name__
    try:
        graph = ChannelTracer().trace(model)
    except Exception as err:  # fx raises many kinds of errors on untraceable code
        raise ChannelTraceError(
            f"cannot trace {label} with torch.fx for channel pruning ({type(err).__name__}: {err}); "
            "structured pruning needs a traceable forward (no data-dependent control flow)"
        ) from err
    gm = fx.GraphModule(model, graph, class_name=label)
    try:
        with _eval_mode(model), torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as err:
        raise ChannelTraceError(f"the traced graph of {label} fails on the example inputs: {err}") from err
    return gm


def _group_key(channel: list[Slice]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({(s.module, s.role) for s in channel}))


def _build_groups(prop: _Propagation, ignored: tuple[str, ...]) -> tuple[ChannelGroup, ...]:
    channels: dict[int, list[Slice]] = {}
    for member, slot in prop.member_slot.items():
        channels.setdefault(prop.uf.find(slot), []).append(member)
    reasons: dict[int, set[str]] = {}
    for slot, why in prop.fixed.items():
        reasons.setdefault(prop.uf.find(slot), set()).update(why)
    for root, members in channels.items():
        for m in members:
            if m.module in ignored or m.module.startswith(tuple(f"{i}." for i in ignored)):
                reasons.setdefault(root, set()).add(f"{m.module!r} is ignored")

    def sort_key(s: Slice) -> tuple[int, int, int]:
        return prop.order[s.module], s.role != "out", s.index

    by_key: dict[tuple, list[tuple[list[Slice], set[str]]]] = {}
    for root, members in channels.items():
        members.sort(key=sort_key)
        by_key.setdefault(_group_key(members), []).append((members, reasons.get(root, set())))
    return _name_groups(by_key, sort_key)


def _name_groups(by_key: dict, sort_key) -> tuple[ChannelGroup, ...]:
    groups = []
    for items in by_key.values():
        items.sort(key=lambda item: sort_key(item[0][0]))
        first = items[0][0]
        producer = next((s for s in first if s.role == "out"), None)
        name = producer.module if producer else f"{first[0].module}:{first[0].role}"
        why = tuple(sorted(set().union(*(r for _, r in items))))
        groups.append((sort_key(producer or first[0]), name, tuple(tuple(c) for c, _ in items), why))
    groups.sort(key=lambda g: g[0])
    seen: dict[str, int] = {}
    result = []
    for _, name, chans, why in groups:
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        result.append(ChannelGroup(label, chans, why))
    return tuple(result)


def analyze_channels(
    model: nn.Module, example_inputs: Tensor | Sequence[Tensor], *, ignored: Iterable[str] = ()
) -> ChannelGraph:
    """Find the channel groups of ``model``: slices of layers that must be removed together.

    Args:
        model: the network; not modified (it runs once in eval mode, its training flags are restored).
        example_inputs: a tensor or a tuple of tensors passed positionally to ``model``.
        ignored: names of modules never to prune (their input and output channels stay); a name also
            covers the modules inside it.

    Returns:
        The groups (prunable or not, with reasons), the geometry of every sliced layer, and the channel-map
        shortcuts.

    Raises:
        ChannelTraceError: the model cannot be traced with torch.fx.
        ValueError: a name in ``ignored`` is not a module of the model.
        TypeError: ``example_inputs`` is not a tensor or a tuple of tensors.
    """
    inputs = as_inputs(example_inputs)
    ignored = _check_ignored(model, ignored)
    gm = trace_channels(model, inputs)
    prop = _Propagation(dict(model.named_modules()))
    prop.run(gm.graph)
    groups = _build_groups(prop, ignored)
    order = tuple(sorted(prop.order, key=prop.order.get))
    return ChannelGraph(type(model).__name__, groups, dict(prop.layers), dict(prop.maps), order)


def as_inputs(example_inputs: Tensor | Sequence[Tensor], argument: str = "example_inputs") -> tuple[Tensor, ...]:
    """``example_inputs`` as a non-empty tuple of tensors, or a ``TypeError`` / ``ValueError`` naming it."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise TypeError(f"{argument} must be a tensor or a non-empty tuple of tensors, got {example_inputs!r}")
    if not all(isinstance(x, Tensor) for x in example_inputs):
        raise TypeError(f"{argument} must hold tensors only, got {[type(x).__name__ for x in example_inputs]}")
    return tuple(example_inputs)
