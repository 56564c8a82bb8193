"""Product and residual quantization of a layer's weights as compressed layers (Gong et al. 2014; for
convolutions, subvectors along the input channels as in Stock et al. 2020).

The weight is cut into subvectors of ``subvector`` consecutive input weights (for a convolution, per output
channel and kernel position: ``W[o, c:c+d, y, x]``). Product quantization replaces each subvector by the
nearest of ``2**bits`` codewords of one per-layer codebook; residual quantization by a sum of ``stages``
codewords, each stage's codebook fitted (k-means) to what the stages before left. The codebooks are
parameters: training sums the gradients of every subvector that uses a codeword into it, divided by the
number of uses (as for k-means weight sharing: the weights' learning rate then suits the codewords). Storage: the codes
(``bits`` each, per subvector and stage) and the codebooks in float32.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from factorch.cost import Cost
from factorch.layers._spec import ConvSpec, LinearSpec, spec_of
from factorch.layers.base import MaskedDenseLayer, NotFactorizable, Spec, count_params, default_input_shape, meta_macs
from factorch.layers.quantized import pack_codes, unpack_codes

PACKED_FORMAT = "codebook-vectors"


def kmeans(vectors: Tensor, k: int, iters: int = 25, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(codebook (k, d), codes (n,))`` of k-means on the rows of ``vectors`` (k-means++ seeding, seeded;
    empty clusters re-seeded at the worst-fitted vector; Lloyd's iterations)."""
    v = vectors.detach().double()
    n = v.shape[0]
    k = min(k, n)
    gen = torch.Generator().manual_seed(seed)
    centres = [v[int(torch.randint(n, (1,), generator=gen))]]
    d2 = (v - centres[0]).pow(2).sum(1)
    for _ in range(1, k):  # k-means++: the next centre drawn in proportion to the squared distance
        total = float(d2.sum())
        i = (
            int(torch.multinomial(d2 / total, 1, generator=gen))
            if total > 0
            else int(torch.randint(n, (1,), generator=gen))
        )
        centres.append(v[i])
        d2 = torch.minimum(d2, (v - v[i]).pow(2).sum(1))
    c = torch.stack(centres)
    codes = None
    for _ in range(iters):
        new = torch.cdist(v, c).argmin(1)
        if codes is not None and torch.equal(new, codes):
            break
        codes = new
        sums = torch.zeros_like(c).index_add_(0, codes, v)
        counts = torch.bincount(codes, minlength=k).double()
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            worst = int((v - c[codes]).pow(2).sum(1).argmax())
            c[empty], codes[worst] = v[worst], empty
    return c.float(), codes


class VectorQuantizedLayer(MaskedDenseLayer, nn.Module):
    """A dense ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` whose weight subvectors are codewords (product
    quantization, ``stages=1``) or sums of codewords (residual quantization). Its option is
    ``(subvector, bits, stages)``."""

    method = "pq"
    rank_names = ("subvector", "bits", "stages")
    exact_at_full_rank = False

    def __init__(self, layer: nn.Module, spec: Spec, subvector: int, bits: int, stages: int) -> None:
        super().__init__()
        shape, device = layer.weight.shape, layer.weight.device
        layer.register_parameter("weight", None)  # the weights are the codewords: not stored twice
        self.layer, self.spec = layer, spec
        self.subvector, self.bits, self.stages = int(subvector), int(bits), int(stages)
        self.weight_shape = tuple(shape)
        n = math.prod(shape) // self.subvector
        self.codebooks = nn.Parameter(torch.zeros(self.stages, 2**self.bits, self.subvector, device=device))
        self.register_buffer("codes", torch.zeros(self.stages, n, dtype=torch.int16, device=device))
        self.options: dict = {}

    @property
    def ranks(self) -> tuple[int, ...]:
        return (self.subvector, self.bits, self.stages)

    @staticmethod
    def _inputs(spec: Spec) -> int:
        return spec.in_per_group if isinstance(spec, ConvSpec) else spec.in_features

    @classmethod
    def check(cls, spec: Spec, options: dict) -> None:
        if not isinstance(spec, (ConvSpec, LinearSpec)):
            raise NotFactorizable(f"{cls.method} handles Conv1d, Conv2d and Linear layers, not {type(spec).__name__}")

    @classmethod
    def max_ranks(cls, spec: Spec, options: dict) -> tuple[int, ...]:
        return (1, 8, 1)

    @staticmethod
    def to_vectors(weight: Tensor, d: int) -> Tensor:
        """The subvectors ``(n, d)``: input weights in runs of ``d`` per output channel and kernel position."""
        moved = weight.movedim(1, -1) if weight.dim() > 2 else weight
        return moved.reshape(-1, d)

    def from_vectors(self, vectors: Tensor) -> Tensor:
        shape = self.weight_shape
        if len(shape) > 2:
            return vectors.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)
        return vectors.reshape(shape)

    @classmethod
    def option_cost(cls, spec: Spec, ranks: tuple[int, ...], input_size=None, **options) -> Cost:
        """Codes at ``bits`` per subvector and stage; the codebooks and the biases in float32."""
        d, bits, stages = (int(r) for r in ranks)
        dense = spec.dense(device="meta")
        weights = dense.weight.numel()
        biases = 0 if dense.bias is None else dense.bias.numel()
        vectors = weights // d
        macs = meta_macs(dense, default_input_shape(spec, input_size), spec.torch_dtype)
        code_bits = vectors * stages * bits + stages * 2**bits * d * 32
        return Cost(params=count_params(dense), nonzero_params=count_params(dense), weight_bits=0, macs=macs,
                    index_bits=code_bits + biases * 32)  # fmt: skip

    @classmethod
    def worth_it(cls, before: Cost, after: Cost) -> str | None:
        if after.size_bits < before.size_bits:
            return None
        return f"codes and codebooks ({after.size_bits:,.0f} bits) are not smaller than the layer"

    @classmethod
    def resolve_ranks(cls, layer: nn.Module, rank, *, input_size=None, name: str = "", **options) -> tuple[int, ...]:
        spec = spec_of(layer)
        cls.check(spec, options)
        where = name or type(layer).__name__
        if not isinstance(rank, (tuple, list)) or len(rank) != 3:
            raise ValueError(f"{where}: a {cls.method} option is (subvector, bits, stages), got {rank!r}")
        d, bits, stages = rank
        for label, value, lo, hi in (("subvector", d, 1, 1 << 16), ("bits", bits, 1, 12), ("stages", stages, 1, 8)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
                raise ValueError(f"{where}: {cls.method} {label} must be an int in {lo}..{hi}, got {value!r}")
        if cls._inputs(spec) % d:
            raise NotFactorizable(f"{cls._inputs(spec)} inputs per output are not a multiple of subvector {d}")
        return (int(d), int(bits), int(stages))

    @classmethod
    def build(cls, spec: Spec, ranks: tuple[int, ...] = (4, 8, 1), device=None, **options):
        return cls(spec.dense(device=device), spec, *(int(r) for r in ranks))

    @classmethod
    def from_dense(
        cls, layer: nn.Module, rank=(4, 8, 1), *, decompose_weights: bool = True, input_size=None, **options
    ):
        """Quantize ``layer``'s weight subvectors (``layer`` left untouched): stage by stage, k-means on the
        residual the earlier stages left."""
        ranks = cls.resolve_ranks(layer, rank, **options)
        new = cls.build(spec_of(layer), ranks, device=layer.weight.device)
        if decompose_weights:
            residual = cls.to_vectors(layer.weight.detach().float(), new.subvector)
            with torch.no_grad():
                for s in range(new.stages):
                    book, codes = kmeans(residual, 2**new.bits, seed=s)
                    new.codebooks[s, : book.shape[0]].copy_(book)
                    new.codes[s].copy_(codes.to(torch.int16))
                    residual = residual - book[codes]
                if layer.bias is not None:
                    new.layer.bias.copy_(layer.bias)
        return new

    def effective_weight(self) -> Tensor:
        books = self.codebooks
        parts = []
        for s in range(self.stages):
            codes = self.codes[s].long()
            book = books[s]
            if book.requires_grad:  # a codeword's summed gradient divided by its use count (value unchanged)
                uses = torch.bincount(codes, minlength=book.shape[0]).clamp_min(1).to(book.dtype)[:, None]
                book = book / uses + (book - book / uses).detach()
            parts.append(book[codes])
        return self.from_vectors(sum(parts))

    def extra_repr(self) -> str:
        return f"subvector={self.subvector}, bits={self.bits}, stages={self.stages}"

    def pack_state(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
        packed = {k: v for k, v in state.items() if k != "codes"}
        packed["code_bits"] = pack_codes(state["codes"].flatten().long(), self.bits, 0)
        return packed, PACKED_FORMAT

    @classmethod
    def unpack_state(cls, packed: dict[str, Tensor], fmt: str, spec: Spec) -> dict[str, Tensor]:
        if fmt != PACKED_FORMAT:
            return super().unpack_state(packed, fmt, spec)
        stages, k, d = packed["codebooks"].shape
        n = spec.dense(device="meta").weight.numel() // d
        codes = unpack_codes(packed["code_bits"], int(math.log2(k)), 0, stages * n).view(stages, n)
        state = {key: v for key, v in packed.items() if key != "code_bits"}
        state["codes"] = codes.to(torch.int16)
        return state


class ResidualQuantizedLayer(VectorQuantizedLayer):
    """:class:`VectorQuantizedLayer` under the registry name of residual quantization (``stages > 1``)."""

    method = "rq"
