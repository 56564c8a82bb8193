"""The common frame of every factorized layer: a chain of ordinary torch layers plus the spec of the dense
layer it replaces, so that it can be rebuilt without decomposing (for loading) and turned back to dense."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import OrderedDict
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from factorch.cost import Cost
from factorch.layers._spec import ConvSpec, EmbeddingSpec, LinearSpec, spec_of
from factorch.rank import RankLike, RankProblem, Spectrum, as_selector
from factorch.registry import NotCompressible

Spec = ConvSpec | LinearSpec | EmbeddingSpec
NOMINAL_SIZE = 32  # spatial input size assumed for MACs when none is known


class NotFactorizable(NotCompressible):
    """A layer that a method cannot (or should not) factorize; the message is the reason."""


class CompressedLayer:
    """The protocol of every compressed layer (factorized, pruned, quantized...), whatever its method.

    A compressed layer replaces one dense layer (whose :attr:`spec` it keeps) and is described by its
    *option*: a tuple of ints named by :attr:`rank_names` (the ranks of a factorization, the weights kept by
    pruning...). It provides, as classmethods, ``check(spec, options)``, ``max_ranks``, ``rank_problem`` (the
    options a search may try, with their costs), ``resolve_ranks`` (a user's option, e.g. ``0.5`` or
    ``"vbmf"``, to explicit ints), ``build(spec, ranks, device, **options)`` (the structure, weights unset:
    what loading rebuilds), ``from_dense(layer, option, **options)`` and :meth:`option_cost`; and, per
    instance, ``to_dense()``, ``reconstruct_weight()``, :meth:`describe` (the JSON spec that ``factorch.save``
    writes) and, optionally, a compact storage of its state (:meth:`pack_state` / :meth:`unpack_state`).
    """

    method: ClassVar[str] = ""
    rank_names: ClassVar[tuple[str, ...]] = ("rank",)
    exact_at_full_rank: ClassVar[bool] = True  # the largest option reproduces the dense layer (damage 0)
    cheap_to_build: ClassVar[bool] = True  # the local search may also try options that were not scored
    spec: Spec
    ranks: tuple[int, ...]
    options: dict

    @classmethod
    def option_cost(
        cls, spec: Spec, ranks: tuple[int, ...], input_size: tuple[int, ...] | None = None, **options
    ) -> Cost:
        """The :class:`~factorch.cost.Cost` of this layer class at ``ranks`` (batch 1, spatial ``input_size``)."""
        params, macs = cls.cost(spec, ranks, input_size, **options)
        return Cost.dense(params, macs, weight_bits=torch.finfo(spec.torch_dtype).bits)

    compress_edges: ClassVar[bool] = False  # True: the first conv / final classifier are not kept dense by default
    # True: the method also compresses the dense stages inside a factorized layer (quantizing a Tucker-2 chain's
    # three convs), each stage becoming one of this class; the chain stays the unit of factorization
    nests_in_chains: ClassVar[bool] = False

    @classmethod
    def worth_it(cls, before: Cost, after: Cost) -> str | None:
        """``None`` when the compressed layer (``after``) is worth replacing the dense one (``before``) with;
        else the reason it is not. Default (factorization): fewer parameters, and fewer MACs unless the dense
        layer has none (a lookup)."""
        if after.params < before.params and (before.macs == 0 or after.macs < before.macs):
            return None
        return f"params {after.params} vs {before.params}, MACs {after.macs} vs {before.macs}"

    @classmethod
    def search_grid(cls, problem: RankProblem, levels) -> list[tuple[int, ...]] | None:
        """The options ``AutoConfig`` offers for a layer, when the class has its own discrete grid (bit
        widths); ``None``: one option per level of the cost-ratio selector (ranks, sparsities)."""
        return None

    @classmethod
    def search_options(cls, auto_config) -> dict:
        """Options that ``AutoConfig``'s candidates of this class are scored and built with (default none)."""
        return {}

    def layer_cost(self, input_size: tuple[int, ...] | None = None) -> Cost:
        """The cost of this very layer."""
        return type(self).option_cost(self.spec, self.ranks, input_size, **self.options)

    def describe(self) -> dict:
        """JSON-able description: method, ranks, options and the dense spec (enough to rebuild)."""
        from factorch.layers._spec import spec_to_dict

        return {
            "method": self.method,
            "ranks": list(self.ranks),
            "options": dict(self.options),
            "spec": spec_to_dict(self.spec),
        }

    def pack_state(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
        """This layer's own state dict entries (keys relative to the layer) in a compact storage format.

        Returns ``(entries, format name)``; the default stores them as they are (format ``None``).
        """
        return state, None

    @classmethod
    def unpack_state(cls, packed: dict[str, Tensor], fmt: str, spec: Spec) -> dict[str, Tensor]:
        """The state dict entries that :meth:`pack_state` packed."""
        raise ValueError(f"{cls.__name__} does not know the packed format {fmt!r}")


def pack_bits(flags: Tensor) -> Tensor:
    """A boolean tensor as a uint8 tensor of its bits (row-major, most significant bit first)."""
    import numpy as np

    return torch.from_numpy(np.packbits(flags.to(torch.bool).flatten().cpu().numpy()))


def unpack_bits(packed: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The boolean tensor of ``shape`` that :func:`pack_bits` packed."""
    import numpy as np

    bits = np.unpackbits(packed.cpu().numpy(), count=math.prod(shape))
    return torch.from_numpy(bits.astype(bool)).view(shape)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_macs(
    module: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32, integer_input: bool = False
) -> int:
    """Multiply-accumulates of one forward pass, counted on the meta device (no real compute)."""
    if integer_input:
        x = torch.zeros(input_shape, dtype=torch.long, device="meta")
    else:
        x = torch.empty(input_shape, dtype=dtype, device="meta")
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // 2


def layer_geometry(layer: nn.Module, input_shape: tuple[int, ...] | None) -> tuple[tuple[int, ...] | None, int]:
    """``(spatial input size, MACs multiplier)`` of ``layer`` for a traced batch-1 ``input_shape``.

    Convolutions take the spatial size; a Linear applied to ``(N, ..., in)`` inputs is charged once per
    position of the middle dimensions (the multiplier). Unknown shapes give ``(None, 1)``.
    """
    if input_shape is None:
        return None, 1
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return tuple(input_shape[2:]), 1
    if isinstance(layer, nn.Linear) and len(input_shape) > 2:
        return None, max(1, math.prod(input_shape[1:-1]))
    return None, 1


def default_input_shape(spec: Spec, input_size: tuple[int, ...] | None) -> tuple[int, ...]:
    """Shape of a batch-1 input of the layer (for MACs)."""
    if isinstance(spec, ConvSpec):
        size = tuple(input_size) if input_size else (NOMINAL_SIZE,) * spec.dim
        return (1, spec.in_channels, *size)
    if isinstance(spec, LinearSpec):
        return (1, spec.in_features)
    return (1,)


def svdvals(matrix: Tensor) -> Spectrum:
    m = matrix.detach().double()
    return Spectrum(torch.linalg.svdvals(m), (m.shape[0], m.shape[1]))


def group_kernels(weight: Tensor, groups: int) -> list[Tensor]:
    """Per-group slices ``(C_out/groups, C_in/groups, *k)`` of a conv weight, in float64."""
    return list(weight.detach().double().chunk(groups, dim=0))


class FactorizedLayer(nn.Sequential, CompressedLayer):
    """A chain of standard layers computing (an approximation of) a dense layer.

    Subclasses define the chain (:meth:`build`), the weights from a decomposition (:meth:`_set_factors`),
    the rank problem and :meth:`reconstruct_weight`. The chain is made of ordinary ``nn.Conv*`` /
    ``nn.Linear`` modules (or einsum-based TT layers), so it runs with channels_last inputs, ``torch.export``
    and ONNX export like any model.
    """

    method: ClassVar[str] = ""
    rank_names: ClassVar[tuple[str, ...]] = ("rank",)

    def __init__(self, stages: OrderedDict[str, nn.Module], spec: Spec, ranks: tuple[int, ...], **options) -> None:
        super().__init__(stages)
        self.spec = spec
        self.ranks = tuple(int(r) for r in ranks)
        self.options = dict(options)

    # -- to implement ---------------------------------------------------------------------------------
    @classmethod
    def check(cls, spec: Spec, options: dict) -> None:
        """Raise :class:`NotFactorizable` with the reason when the method cannot handle this layer."""

    @classmethod
    def max_ranks(cls, spec: Spec, options: dict) -> tuple[int, ...]:
        raise NotImplementedError

    @classmethod
    def spectra(cls, layer: nn.Module, spec: Spec, options: dict) -> tuple[tuple[Spectrum, ...], ...]:
        raise NotImplementedError

    @classmethod
    def build(cls, spec: Spec, ranks: tuple[int, ...], device=None, **options) -> FactorizedLayer:
        raise NotImplementedError

    def _set_factors(self, layer: nn.Module) -> None:
        raise NotImplementedError

    #: whether the chain's stages keep their accuracy when quantized to 4 bits or fewer (``challenge(bits=...)``
    #: searches only methods whose chains do); see ``CPConv`` for the measurement that set it False there
    low_bit_stages: ClassVar[bool] = True

    def _chain_weight(self) -> Tensor:
        """The dense weight the chain computes, in float64, its stages being plain layers."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------
    def reconstruct_weight(self) -> Tensor:
        """The dense weight this layer computes, in float64 (stages compressed in place, e.g. quantized,
        counted with the weights they compute with)."""
        return self.with_plain_stages()._chain_weight()

    def layer_cost(self, input_size: tuple[int, ...] | None = None) -> Cost:
        """The cost of this very layer: the chain's MACs; its storage with the stages compressed in place
        counted by their own costs (e.g. quantized codes and scales), the other parameters at float width."""
        chain = super().layer_cost(input_size)
        stages = self.compressed_stages()
        if not stages:
            return chain
        inside = {id(p) for _, m in stages for p in m.parameters()}
        plain = [p for p in self.parameters() if id(p) not in inside]
        total = Cost.dense(0, 0)
        for _, stage in stages:
            total = total + stage.layer_cost()
        if plain:
            total = total + Cost.dense(sum(p.numel() for p in plain), 0, torch.finfo(plain[0].dtype).bits)
        return dataclasses.replace(
            total,
            macs=chain.macs,
            op_bits=max(chain.op_bits if plain else 0, *(m.layer_cost().op_bits for _, m in stages)),
        )

    def compressed_stages(self) -> list[tuple[str, CompressedLayer]]:
        """The stages compressed in place (``nests_in_chains`` methods), by name within this layer."""
        return [(n, m) for n, m in self.named_modules() if n and isinstance(m, CompressedLayer)]

    def with_plain_stages(self) -> FactorizedLayer:
        """This layer, or a copy with every compressed stage replaced by its dense equivalent (``to_dense``)."""
        stages = self.compressed_stages()
        if not stages:
            return self
        plain = copy.deepcopy(self)
        for name, _ in stages:
            parent_name, _, child = name.rpartition(".")
            parent = plain.get_submodule(parent_name) if parent_name else plain
            parent._modules[child] = parent._modules[child].to_dense()
        return plain

    @classmethod
    def cost(
        cls, spec: Spec, ranks: tuple[int, ...], input_size: tuple[int, ...] | None = None, **options
    ) -> tuple[int, int]:
        """``(params, MACs)`` of the factorized layer for a batch-1 input of spatial ``input_size``."""
        module = cls.build(spec, ranks, device="meta", **options)
        integer = isinstance(spec, EmbeddingSpec)
        return count_params(module), meta_macs(
            module, default_input_shape(spec, input_size), spec.torch_dtype, integer_input=integer
        )

    @staticmethod
    def dense_cost(layer: nn.Module, input_size: tuple[int, ...] | None = None) -> tuple[int, int]:
        spec = spec_of(layer)
        meta = spec.dense(device="meta")
        integer = isinstance(spec, EmbeddingSpec)
        return count_params(meta), meta_macs(
            meta, default_input_shape(spec, input_size), spec.torch_dtype, integer_input=integer
        )

    @classmethod
    def rank_problem(
        cls, layer: nn.Module, *, input_size: tuple[int, ...] | None = None, name: str = "", **options
    ) -> RankProblem:
        spec = spec_of(layer)
        cls.check(spec, options)
        return RankProblem(
            method=cls.method,
            max_ranks=cls.max_ranks(spec, options),
            spectra=cls.spectra(layer, spec, options),
            cost=lambda r: cls.cost(spec, r, input_size, **options),
            dense_cost=cls.dense_cost(layer, input_size),
            name=name,
        )

    @classmethod
    def resolve_ranks(
        cls, layer: nn.Module, rank: RankLike, *, input_size=None, name: str = "", **options
    ) -> tuple[int, ...]:
        return as_selector(rank)(cls.rank_problem(layer, input_size=input_size, name=name, **options))

    @classmethod
    def from_dense(
        cls,
        layer: nn.Module,
        rank: RankLike,
        *,
        decompose_weights: bool = True,
        input_size: tuple[int, ...] | None = None,
        **options,
    ) -> FactorizedLayer:
        """Factorize ``layer`` at ``rank``.

        Args:
            layer: the dense layer (left untouched).
            rank: an int or per-mode tuple, a fraction of full rank, ``"vbmf"``, ``"energy:0.95"``, or a
                selector from :mod:`factorch.rank`.
            decompose_weights: ``False`` builds the structure only (weights uninitialised), e.g. before
                loading a state dict. Ranks must then be explicit ints.
            input_size: spatial input size, for rank selectors that look at MACs.
            **options: method options (e.g. ``form`` for CP).
        """
        spec = spec_of(layer)
        cls.check(spec, options)
        if decompose_weights or not isinstance(rank, (int, tuple, list)):
            ranks = cls.resolve_ranks(layer, rank, input_size=input_size, **options)
        else:
            ranks = as_selector(rank)(RankProblem(cls.method, cls.max_ranks(spec, options)))
        device = layer.weight.device if hasattr(layer, "weight") else None
        module = cls.build(spec, ranks, device=device, **options)
        if decompose_weights:
            with torch.no_grad():
                module._set_factors(layer)
        return module

    def recompress(
        self, rank: RankLike, *, input_size: tuple[int, ...] | None = None, name: str = ""
    ) -> FactorizedLayer:
        """This layer shrunk to smaller ranks as a unit, by its own method (multi-stage compression).

        The result is a new layer of the same class approximating what this layer computes (``self`` is left
        untouched). Tucker-2 decomposes its core and merges the new 1x1 factors into the outer 1x1 convs, the
        SVD layers truncate their rank-``r`` product exactly (Eckart-Young), both without forming the dense
        kernel; other methods decompose :meth:`to_dense` again. Inner stages are never factorized on their own.

        Args:
            rank: explicit ranks (an int or per-mode tuple, at most :attr:`ranks`), or a rule applied to this
                layer as it stands: its current ranks are its full rank (a fraction ``0.5`` halves them; weakened
                ``"vbmf:w"`` moves toward them, as in MUSCO), spectra come from its own kernel (``"vbmf"``,
                ``"energy:0.95"``), and cost ratios (``"macs:0.25"``, ``"params:0.25"``) are of the dense layer
                it replaces, as in :meth:`from_dense`. What a rule chooses never exceeds the current ranks.
            input_size: spatial input size, for rank selectors that look at MACs.
            name: the layer's name, for messages.

        Raises:
            ValueError: explicit ranks above the current ones, or invalid for the method.

        References:
            Gusak et al. 2019, "Automated multi-stage compression of neural networks" (MUSCO).
        """
        if self.compressed_stages():
            stage, layer = self.compressed_stages()[0]
            raise ValueError(
                f"{name or type(self).__name__}: its stage {stage!r} is compressed in place ({layer.method}); "
                "shrink the float chain first, then compress its stages"
            )
        ranks = self._recompress_ranks(rank, input_size=input_size, name=name)
        new = type(self).build(self.spec, ranks, device=self._device(), **self.options)
        with torch.no_grad():
            new._shrink_from(self)
        return new

    def _recompress_ranks(self, rank: RankLike, *, input_size, name: str) -> tuple[int, ...]:
        label = name or type(self).__name__
        cls, dense = type(self), self.to_dense()
        if isinstance(rank, (int, tuple, list)) and not isinstance(rank, bool):
            ranks = cls.resolve_ranks(dense, rank, input_size=input_size, name=label, **self.options)
            if any(r > c for r, c in zip(ranks, self.ranks)):
                raise ValueError(
                    f"{label}: recompress takes ranks at most the layer's current ranks {self.ranks}, "
                    f"got {tuple(ranks)}"
                )
            return tuple(ranks)
        problem = cls.rank_problem(dense, input_size=input_size, name=label, **self.options)
        problem.max_ranks = tuple(min(m, c) for m, c in zip(problem.max_ranks, self.ranks))
        own = self.own_spectra()
        if own is not None:
            problem.spectra = own
        return tuple(min(r, c) for r, c in zip(as_selector(rank)(problem), self.ranks))

    def own_spectra(self) -> tuple[tuple[Spectrum, ...], ...] | None:
        """Per mode, the spectra of this layer's own small matrices (e.g. the unfoldings of a Tucker-2 core),
        which rank rules such as VBMF read when recompressing; ``None``: those of the dense kernel."""
        return None

    def _shrink_from(self, old: FactorizedLayer) -> None:
        """Set this (smaller) layer's weights from ``old``; by default, decompose ``old``'s dense kernel."""
        if tuple(old.ranks) == self.ranks:
            self.load_state_dict(copy.deepcopy(old.state_dict()))
            return
        self._set_factors(old.to_dense())

    def to_dense(self) -> nn.Module:
        """A dense layer of the original type computing what this layer computes."""
        dense = self.spec.dense(device=self._device())
        plain = self.with_plain_stages()
        with torch.no_grad():
            dense.weight.copy_(plain._chain_weight().to(dense.weight.dtype))
            bias = plain.output_bias()
            if bias is not None:
                dense.bias.copy_(bias)
        return dense

    def output_bias(self) -> Tensor | None:
        last = self[-1]
        return getattr(last, "bias", None)

    def _device(self):
        return next(self.parameters()).device

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={r}" for n, r in zip(self.rank_names, self.ranks))


def copy_into(param: Tensor, value: Tensor) -> None:
    if param.shape != value.shape:
        raise RuntimeError(f"internal error: shape {tuple(value.shape)} does not fit {tuple(param.shape)}")
    param.copy_(value.to(param.dtype))


def as_stages(**stages: nn.Module) -> OrderedDict[str, nn.Module]:
    return OrderedDict(stages)


def require_conv(method: str, spec: Spec, dims: tuple[int, ...] = (1, 2)) -> ConvSpec:
    if not isinstance(spec, ConvSpec):
        raise NotFactorizable(f"{method} factorizes convolutions only, not {type(spec).__name__.removesuffix('Spec')}")
    if spec.dim not in dims:
        raise NotFactorizable(f"{method} needs a {' or '.join(f'{d}-D' for d in dims)} convolution, got {spec.dim}-D")
    return spec


class MaskedDenseLayer(CompressedLayer):
    """The frame of the compressed layers that keep their dense layer whole and change how its weights are
    used (a pruning mask, a quantization grid, shared values): their rank problem has no spectra, their cost is
    priced by ``option_cost`` on the dense layer's spec, and they compute the dense layer (:attr:`layer`, its
    structure and bias) with the weight :meth:`effective_weight` gives."""

    layer: nn.Module

    def effective_weight(self) -> Tensor:
        """The weight this layer computes with (differentiable: what training updates flows through it)."""
        raise NotImplementedError

    def dense_forward(self, x: Tensor, weight: Tensor) -> Tensor:
        """The dense layer's operation on ``x`` with ``weight`` (and its own bias, stride, padding...)."""
        if isinstance(self.spec, ConvSpec):
            return self.layer._conv_forward(x, weight, self.layer.bias)
        return nn.functional.linear(x, weight, self.layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense_forward(x, self.effective_weight())

    def reconstruct_weight(self) -> Tensor:
        return self.effective_weight().detach().double()

    def operand_bits(self) -> tuple[float, float]:
        """Bits of the weight and of the activation that each multiplication of this layer reads (what
        ``factorch.score`` charges): the float values it computes with, unless the layer quantizes them."""
        weight = self.layer.weight
        if weight is None:  # a layer that derives its weight (e.g. shared weights: centroids[codes])
            weight = self.effective_weight()
        bits = torch.finfo(weight.dtype).bits
        return float(bits), float(bits)

    def to_dense(self) -> nn.Module:
        """The dense layer with the effective weight: what this layer computes (for weights-only methods)."""
        weight = self.effective_weight().detach()
        dense = self.spec.dense(device=weight.device)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.layer.bias is not None:
                dense.bias.copy_(self.layer.bias)
        return dense

    @classmethod
    def cost(cls, spec: Spec, ranks: tuple[int, ...], input_size=None, **options) -> tuple[int, int]:
        """``(non-zero params, MACs)``: what a ``params=`` budget counts, and the dense kernel's MACs."""
        c = cls.option_cost(spec, ranks, input_size, **options)
        return c.nonzero_params, c.macs

    @staticmethod
    def dense_cost(layer: nn.Module, input_size=None) -> tuple[int, int]:
        return FactorizedLayer.dense_cost(layer, input_size)

    @classmethod
    def rank_problem(cls, layer: nn.Module, *, input_size=None, name: str = "", **options) -> RankProblem:
        spec = spec_of(layer)
        cls.check(spec, options)
        return RankProblem(
            method=cls.method,
            max_ranks=cls.max_ranks(spec, options),
            spectra=None,
            cost=lambda r: cls.cost(spec, r, input_size, **options),
            dense_cost=cls.dense_cost(layer, input_size),
            name=name,
        )
