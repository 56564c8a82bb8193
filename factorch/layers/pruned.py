"""Unstructured pruning as a compressed layer: a dense Conv/Linear whose weight is multiplied by a fixed
0/1 mask (Han et al. 2015). The mask is a buffer, so fine-tuning never revives a pruned weight; the zeros are
still executed by the dense kernel (MACs unchanged), and ``factorch.save`` stores only the non-zeros plus a
1-bit mask (:meth:`PrunedLayer.pack_state`)."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from factorch.cost import Cost
from factorch.layers._spec import ConvSpec, LinearSpec, spec_of
from factorch.layers.base import (
    MaskedDenseLayer,
    NotFactorizable,
    Spec,
    count_params,
    default_input_shape,
    meta_macs,
    pack_bits,
    unpack_bits,
)

PACKED_FORMAT = "nonzeros+bitmask"
HUFFMAN_FORMAT = "nonzeros+huffman"


def kept_count(numel: int, option) -> int:
    """Weights kept for a pruning option: a sparsity in [0, 1) (share removed), an int count, or ``(count,)``.

    A sparsity keeps ``numel - round(sparsity * numel)`` weights, at least one.
    """
    if isinstance(option, (tuple, list)):
        if len(option) != 1:
            raise ValueError(f"a pruning option has one value (weights kept), got {tuple(option)}")
        option = option[0]
    if isinstance(option, bool) or not isinstance(option, numbers.Real):
        raise ValueError(f"a pruning option is a sparsity in [0, 1) or an int count of weights kept, got {option!r}")
    if isinstance(option, numbers.Integral):
        if not 1 <= option <= numel:
            raise ValueError(f"weights kept must be in [1, {numel}], got {option}")
        return int(option)
    if not 0 <= option < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {option}")
    return max(1, numel - int(round(float(option) * numel)))


def magnitude_mask(weight: Tensor, kept: int) -> Tensor:
    """A boolean mask keeping the ``kept`` largest-magnitude entries of ``weight`` (ties broken by position)."""
    flat = weight.detach().abs().flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=weight.device)
    if kept >= flat.numel():
        mask[:] = True
    else:
        mask[torch.topk(flat.float(), kept, sorted=False).indices] = True
    return mask.view_as(weight)


class PrunedLayer(MaskedDenseLayer, nn.Module):
    """A dense ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` (kept whole as :attr:`layer`) computing with
    ``layer.weight * mask``.

    Its option is ``(kept,)``: the number of weights kept. ``to_dense()`` gives the dense layer with the pruned
    weights at zero, exactly what this layer computes.

    References:
        Han et al. 2015, "Learning both weights and connections for efficient neural networks".
    """

    method = "prune"
    rank_names = ("kept",)

    def __init__(self, layer: nn.Module, spec: Spec, mask: Tensor, **options) -> None:
        super().__init__()
        self.layer = layer
        self.spec = spec
        self.register_buffer("mask", mask.to(torch.bool))
        self.options = dict(options)

    @property
    def ranks(self) -> tuple[int, ...]:
        return (int(self.mask.sum()),)

    # -- the protocol ------------------------------------------------------------------------------------
    @classmethod
    def check(cls, spec: Spec, options: dict) -> None:
        if not isinstance(spec, (ConvSpec, LinearSpec)):
            raise NotFactorizable(f"prune handles Conv1d, Conv2d and Linear layers, not {type(spec).__name__}")
        criterion = options.get("criterion", "magnitude")
        if criterion != "magnitude":
            raise ValueError(f"prune: unknown criterion {criterion!r}; choose from magnitude")

    @classmethod
    def worth_it(cls, before: Cost, after: Cost) -> str | None:
        if after.nonzero_params < before.nonzero_params or after.nonzero_params == 0:
            return None
        return f"prune keeps every weight ({after.nonzero_params} of {before.nonzero_params})"

    @staticmethod
    def _weight_numel(spec: Spec) -> int:
        if isinstance(spec, ConvSpec):
            return spec.out_channels * spec.in_per_group * spec.kernel_numel
        return spec.out_features * spec.in_features

    @classmethod
    def max_ranks(cls, spec: Spec, options: dict) -> tuple[int, ...]:
        return (cls._weight_numel(spec),)

    @classmethod
    def option_cost(cls, spec: Spec, ranks: tuple[int, ...], input_size=None, **options) -> Cost:
        dense = spec.dense(device="meta")
        params = count_params(dense)
        numel = cls._weight_numel(spec)
        kept = min(int(ranks[0]), numel)
        macs = meta_macs(dense, default_input_shape(spec, input_size), spec.torch_dtype)
        return Cost(
            params=params,
            nonzero_params=params - numel + kept,
            weight_bits=torch.finfo(spec.torch_dtype).bits,
            macs=macs,
            mask_bits=numel if kept < numel else 0,
        )

    @classmethod
    def resolve_ranks(cls, layer: nn.Module, rank, *, input_size=None, name: str = "", **options) -> tuple[int, ...]:
        """``(kept,)`` for a sparsity, a count, ``(count,)``, or a cost-ratio selector (``"params:0.1"``)."""
        spec = spec_of(layer)
        cls.check(spec, options)
        numel = cls._weight_numel(spec)
        if isinstance(rank, (numbers.Real, tuple, list)) and not isinstance(rank, bool):
            try:
                return (kept_count(numel, rank),)
            except ValueError as err:
                raise ValueError(f"{name or type(layer).__name__}: {err}") from None
        from factorch.rank import as_selector

        return tuple(as_selector(rank)(cls.rank_problem(layer, input_size=input_size, name=name, **options)))

    @classmethod
    def build(cls, spec: Spec, ranks: tuple[int, ...] = (), device=None, **options) -> PrunedLayer:
        """The structure (weights unset, mask all kept): what loading rebuilds before the state dict."""
        dense = spec.dense(device=device)
        return cls(dense, spec, torch.ones_like(dense.weight, dtype=torch.bool, device=device), **options)

    @classmethod
    def from_dense(
        cls,
        layer: nn.Module,
        rank=0.5,
        *,
        decompose_weights: bool = True,
        input_size=None,
        criterion: str = "magnitude",
        **options,
    ) -> PrunedLayer:
        """Prune ``layer`` (left untouched): keep the largest-magnitude weights.

        Args:
            layer: a dense Conv1d / Conv2d / Linear.
            rank: a sparsity in [0, 1) (the share removed), an int (weights kept) or ``(kept,)``.
            decompose_weights: ``False`` builds the structure only (before loading a state dict).
            input_size: spatial input size, for cost-ratio selectors.
            criterion: ``"magnitude"``.
        """
        spec = spec_of(layer)
        cls.check(spec, {"criterion": criterion})
        kept = cls.resolve_ranks(layer, rank, input_size=input_size, criterion=criterion)[0]
        device = layer.weight.device
        if not decompose_weights:
            return cls.build(spec, (kept,), device=device, criterion=criterion)
        dense = spec.dense(device=device)
        with torch.no_grad():
            dense.weight.copy_(layer.weight)
            if layer.bias is not None:
                dense.bias.copy_(layer.bias)
            mask = magnitude_mask(layer.weight, kept)
            dense.weight.mul_(mask)
        return cls(dense, spec, mask, criterion=criterion)

    def effective_weight(self) -> Tensor:
        return self.layer.weight * self.mask

    def recompress(self, rank, *, input_size=None, name: str = "") -> PrunedLayer:
        """This layer pruned further (``self`` untouched): the largest surviving weights are kept."""
        kept = kept_count(self.mask.numel(), rank) if not isinstance(rank, str) else None
        if kept is None:
            kept = type(self).resolve_ranks(self.to_dense(), rank, input_size=input_size, name=name)[0]
        if kept > self.ranks[0]:
            raise ValueError(
                f"{name or 'PrunedLayer'}: recompress keeps at most the {self.ranks[0]} weights left, got {kept}"
            )
        return type(self).from_dense(self.to_dense(), kept, **self.options)

    @property
    def sparsity(self) -> float:
        return 1.0 - float(self.mask.sum()) / self.mask.numel()

    def extra_repr(self) -> str:
        return f"kept={self.ranks[0]}/{self.mask.numel()} (sparsity {self.sparsity:.3f})"

    # -- compact storage -----------------------------------------------------------------------------------
    def pack_state(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
        """``layer.weight`` and ``mask`` become the non-zero values (in mask order) and the mask's bits."""
        mask = state["mask"].to(torch.bool)
        weight = state["layer.weight"]
        packed = {k: v for k, v in state.items() if k not in ("mask", "layer.weight")}
        packed["values"] = weight[mask].clone()
        packed["mask_bits"] = pack_bits(mask)
        return packed, PACKED_FORMAT

    def huffman_worthwhile(self) -> bool:
        """Some weights are pruned: their positions are worth coding."""
        return not bool(self.mask.all())

    def pack_state_huffman(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
        """The non-zero values, their positions as Huffman-coded gaps (Deep Compression's sparse storage)."""
        from factorch.huffman import position_tensors

        mask = state["mask"].to(torch.bool)
        packed = {k: v for k, v in state.items() if k not in ("mask", "layer.weight")}
        packed["values"] = state["layer.weight"][mask].clone()
        packed.update(position_tensors(mask.flatten().cpu().numpy(), "positions"))
        return packed, HUFFMAN_FORMAT

    @classmethod
    def unpack_state(cls, packed: dict[str, Tensor], fmt: str, spec: Spec) -> dict[str, Tensor]:
        if fmt == HUFFMAN_FORMAT:
            from factorch.huffman import positions_from_tensors

            shape = spec.dense(device="meta").weight.shape
            state = dict(packed)
            mask = torch.from_numpy(positions_from_tensors(state, "positions", math.prod(shape)))
            mask = mask.view(shape)
            values = state.pop("values")
            weight = torch.zeros(shape, dtype=values.dtype)
            weight[mask] = values
            state["layer.weight"], state["mask"] = weight, mask
            return state
        if fmt != PACKED_FORMAT:
            return super().unpack_state(packed, fmt, spec)
        shape = spec.dense(device="meta").weight.shape
        mask = unpack_bits(packed["mask_bits"], tuple(shape))
        values = packed["values"]
        weight = torch.zeros(shape, dtype=values.dtype)
        weight[mask] = values
        state = {k: v for k, v in packed.items() if k not in ("values", "mask_bits")}
        state["layer.weight"], state["mask"] = weight, mask
        return state
