"""Weight sharing by k-means as a compressed layer (Han et al. 2016, Deep Compression, stage 2).

Each weight of the layer becomes an index into a per-layer codebook of ``2**bits`` shared values; the weight
tensor the layer computes with is ``centroids[codes]`` (times the pruning mask, when the layer was pruned:
pruned weights stay exactly zero and are not clustered). The centroids are a parameter: training sums the
gradients of the weights of each cluster into its centroid, as the paper fine-tunes them, divided by the
cluster's size so that the learning rate that suits the weights suits the centroids (a plain sum over
thousands of weights made ``finetune``'s default learning rate diverge at once). Centroids start
spread linearly over the weights' range (the paper's best initialisation) and are refined by Lloyd's
iterations in one dimension (sorted centroids: assignment by bucketing at the midpoints), written here since
no dependency of factorch offers a 1-D k-means on tensors.
"""

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
from factorch.layers.quantized import pack_codes, unpack_codes

PACKED_FORMAT = "codebook"
HUFFMAN_FORMAT = "codebook+huffman"
SHARED_BITS = tuple(range(1, 9))


def kmeans_1d(values: Tensor, k: int, iters: int = 30) -> tuple[Tensor, Tensor]:
    """``(centroids (k,) sorted, codes)`` of 1-D k-means on ``values``, linear initialisation over their range.

    An empty cluster is re-seeded at the value farthest from its centroid (a linear start can leave clusters
    empty between dense groups of values). Lloyd's iterations stop early when no assignment changes.
    """
    v = values.detach().double().flatten()
    lo, hi = float(v.min()), float(v.max())
    c = torch.linspace(lo, hi, k, dtype=torch.float64) if k > 1 else v.mean().reshape(1)
    codes = None
    for _ in range(iters):
        new = torch.bucketize(v, (c[1:] + c[:-1]) / 2) if k > 1 else torch.zeros_like(v, dtype=torch.long)
        if codes is not None and torch.equal(new, codes):
            break
        codes = new
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, codes, v)
        counts = torch.bincount(codes, minlength=k).double()
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        for empty in torch.nonzero(counts == 0).flatten().tolist():  # re-seed at the worst-fitted value
            worst = int((v - c[codes]).abs().argmax())
            c[empty] = v[worst]
            codes[worst] = empty
        c, order = torch.sort(c)
        codes = torch.argsort(order)[codes]
    return c.float(), codes


def distortion(values: Tensor, bits: int) -> float:
    """Mean squared error of ``values`` shared on ``2**bits`` k-means centroids."""
    c, codes = kmeans_1d(values, 2**bits)
    return float((c.double()[codes] - values.double().flatten()).pow(2).mean())


def elbow_bits(values: Tensor, candidates: tuple[int, ...] = SHARED_BITS) -> int:
    """The bit width at the elbow of the distortion curve: on ``log D(bits)`` against ``bits``, the point
    farthest below the chord between the first and last candidates (where more bits stop paying)."""
    d = [max(distortion(values, b), 1e-300) for b in candidates]
    y = [math.log(x) for x in d]
    x0, x1, y0, y1 = candidates[0], candidates[-1], y[0], y[-1]
    gap = [(y0 + (y1 - y0) * (b - x0) / (x1 - x0)) - yb for b, yb in zip(candidates, y)]
    return candidates[max(range(len(candidates)), key=lambda i: (gap[i], -i))]


class SharedWeightLayer(MaskedDenseLayer, nn.Module):
    """A dense ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` whose weights are ``centroids[codes] * mask``.

    Its option is ``(bits,)``: the codebook has ``2**bits`` entries. ``to_dense()`` gives the dense layer with
    the shared weights, exactly what this layer computes.

    References:
        Han, Mao and Dally 2016, "Deep compression".
    """

    method = "kmeans"
    rank_names = ("bits",)
    exact_at_full_rank = False
    priced_when_built = True  # pruned weights (kept zeros) make it smaller than its option alone says

    def __init__(self, layer: nn.Module, spec: Spec, bits: int) -> None:
        super().__init__()
        self.spec, self.bits = spec, int(bits)
        shape, device = layer.weight.shape, layer.weight.device
        layer.register_parameter("weight", None)  # the weights are centroids[codes]: not stored twice
        self.layer = layer  # the structure and the bias
        self.centroids = nn.Parameter(torch.zeros(2**self.bits, device=device))
        self.register_buffer("codes", torch.zeros(shape, dtype=torch.int16, device=device))
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=device))
        self.options: dict = {}

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.bits,)

    @classmethod
    def check(cls, spec: Spec, options: dict) -> None:
        if not isinstance(spec, (ConvSpec, LinearSpec)):
            raise NotFactorizable(f"kmeans handles Conv1d, Conv2d and Linear layers, not {type(spec).__name__}")

    @classmethod
    def max_ranks(cls, spec: Spec, options: dict) -> tuple[int, ...]:
        return (8,)

    @staticmethod
    def _numel(spec: Spec) -> tuple[int, int]:
        if isinstance(spec, ConvSpec):
            return spec.out_channels * spec.in_per_group * spec.kernel_numel, spec.out_channels * spec.bias
        return spec.out_features * spec.in_features, spec.out_features * spec.bias

    @classmethod
    def option_cost(cls, spec: Spec, ranks: tuple[int, ...], input_size=None, kept: int | None = None, **options):
        """``bits`` per non-zero weight, the codebook in float32, biases in float32, and a 1-bit mask over the
        weights when some are pruned (``kept`` of them left)."""
        bits = int(ranks[0])
        dense = spec.dense(device="meta")
        weights, biases = cls._numel(spec)
        kept = weights if kept is None else int(kept)
        macs = meta_macs(dense, default_input_shape(spec, input_size), spec.torch_dtype)
        return Cost(
            params=count_params(dense),
            nonzero_params=kept + biases,
            weight_bits=bits,
            macs=macs,
            mask_bits=weights if kept < weights else 0,
            index_bits=2**bits * 32 + biases * (32 - bits),
        )

    def layer_cost(self, input_size=None) -> Cost:
        return type(self).option_cost(self.spec, self.ranks, input_size, kept=int(self.mask.sum()))

    @classmethod
    def search_grid(cls, problem, levels) -> list[tuple[int, ...]]:
        return [(bits,) for bits in (8, 6, 5, 4, 3, 2)]

    @classmethod
    def worth_it(cls, before: Cost, after: Cost) -> str | None:
        """Smaller values, positions aside: the pruned positions are the same before and after (a pruned
        layer handed over dense has lost its mask's price, which a very sparse layer's mask would exceed)."""
        if after.size_bits - after.mask_bits < before.size_bits - before.mask_bits:
            return None
        return f"{after.weight_bits:g}-bit codes store no fewer bits"

    @classmethod
    def resolve_ranks(cls, layer: nn.Module, rank, *, input_size=None, name: str = "", **options) -> tuple[int, ...]:
        """``(bits,)`` from an int in 1..8, ``(bits,)``, or ``"elbow"`` (:func:`elbow_bits` of its weights)."""
        cls.check(spec_of(layer), options)
        if rank == "elbow":
            w = layer.weight.detach()
            return (elbow_bits(w[w != 0] if bool((w == 0).any()) else w),)
        if isinstance(rank, (tuple, list)) and len(rank) == 1:
            rank = rank[0]
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or int(rank) not in SHARED_BITS:
            raise ValueError(
                f"{name or type(layer).__name__}: kmeans bits must be an int in 1..8 or 'elbow', got {rank!r}"
            )
        return (int(rank),)

    @classmethod
    def build(cls, spec: Spec, ranks: tuple[int, ...] = (8,), device=None, **options) -> SharedWeightLayer:
        return cls(spec.dense(device=device), spec, int(ranks[0]))

    @classmethod
    def from_dense(cls, layer: nn.Module, rank=4, *, decompose_weights: bool = True, input_size=None, **options):
        """Share ``layer``'s weights (left untouched) on ``2**bits`` k-means centroids; exact zeros (pruned
        weights) stay zero and take no part in the clustering."""
        bits = cls.resolve_ranks(layer, rank, **options)[0]
        new = cls.build(spec_of(layer), (bits,), device=layer.weight.device)
        if decompose_weights:
            w = layer.weight.detach()
            mask = w != 0
            values = w[mask] if bool(mask.any()) else w.flatten()
            k = min(2**bits, max(1, values.numel()))
            centroids, codes = kmeans_1d(values, k)
            with torch.no_grad():
                new.centroids.zero_()
                new.centroids[:k].copy_(centroids)
                full = torch.zeros(w.shape, dtype=torch.int16, device=w.device)
                full[mask] = codes.to(torch.int16)
                new.codes.copy_(full)
                new.mask.copy_(mask if bool(mask.any()) else torch.ones_like(mask))
                if layer.bias is not None:
                    new.layer.bias.copy_(layer.bias)
        return new

    def shared_weight(self) -> Tensor:
        codes = self.codes.long()
        c = self.centroids
        if c.requires_grad:  # each centroid's summed gradient divided by its cluster's size (value unchanged)
            sizes = torch.bincount(codes[self.mask], minlength=c.numel()).clamp_min(1).to(c.dtype)
            c = c / sizes + (c - c / sizes).detach()
        return c[codes] * self.mask

    effective_weight = shared_weight

    def extra_repr(self) -> str:
        return f"bits={self.bits}, kept={int(self.mask.sum())}/{self.mask.numel()}"

    # -- compact storage: codes at their bit width, the mask's bits, the codebook ---------------------------
    def pack_state(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
        mask = state["mask"].to(torch.bool)
        packed = {k: v for k, v in state.items() if k not in ("codes", "mask")}
        packed["code_bits"] = pack_codes(state["codes"][mask].long(), self.bits, 0)
        if not bool(mask.all()):
            packed["mask_bits"] = pack_bits(mask)
        return packed, PACKED_FORMAT

    def huffman_worthwhile(self) -> bool:
        """The shared indices are always worth coding."""
        return True

    def pack_state_huffman(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
        """Deep Compression's storage: the non-zeros' positions as Huffman-coded gaps, their codebook indices
        Huffman-coded, the codebook and biases in float32."""
        from factorch.huffman import encode, position_tensors, stream_tensors

        mask = state["mask"].to(torch.bool)
        packed = {k: v for k, v in state.items() if k not in ("codes", "mask")}
        if not bool(mask.all()):  # a dense layer's positions are implied
            packed.update(position_tensors(mask.flatten().cpu().numpy(), "positions"))
        packed.update(stream_tensors(encode(state["codes"][mask].long().cpu().numpy()), "indices"))
        return packed, HUFFMAN_FORMAT

    @classmethod
    def unpack_state(cls, packed: dict[str, Tensor], fmt: str, spec: Spec) -> dict[str, Tensor]:
        shape = tuple(spec.dense(device="meta").weight.shape)
        if fmt == HUFFMAN_FORMAT:
            from factorch.huffman import decode, positions_from_tensors, stream_from_tensors

            state = dict(packed)
            if "positions" in state:
                flat = positions_from_tensors(state, "positions", math.prod(shape))
                mask = torch.from_numpy(flat).view(shape)
            else:
                mask = torch.ones(shape, dtype=torch.bool)
            codes = torch.zeros(shape, dtype=torch.int16)
            codes[mask] = torch.from_numpy(decode(stream_from_tensors(state, "indices"))).to(torch.int16)
            state.update(codes=codes, mask=mask)
            return state
        if fmt != PACKED_FORMAT:
            return super().unpack_state(packed, fmt, spec)
        mask = unpack_bits(packed["mask_bits"], shape) if "mask_bits" in packed else torch.ones(shape, dtype=torch.bool)
        bits = int(math.log2(packed["centroids"].numel()))
        codes = torch.zeros(shape, dtype=torch.int16)
        codes[mask] = unpack_codes(packed["code_bits"], bits, 0, int(mask.sum())).to(torch.int16)
        state = {k: v for k, v in packed.items() if k not in ("code_bits", "mask_bits")}
        state.update(codes=codes, mask=mask)
        return state
