"""``Cost``: what one layer (or a whole model) costs, in every unit a budget or a score reads.

Every compressed layer reports one (``layer_cost``); the solver, the report and the score add them up.
This module imports nothing from factorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

BUDGET_KINDS = ("macs", "params", "size", "latency")


@dataclass(frozen=True)
class Cost:
    """The cost of a layer at batch size 1.

    Attributes:
        params: stored parameters, dense count (zeros included).
        nonzero_params: parameters that are not pruned away (what ``params=`` budgets count).
        weight_bits: bits per stored parameter value (32 for float32, 16 for half, 8 for int8, ...).
        macs: multiply-accumulates executed (a masked weight still executes its zeros on a dense kernel).
        mask_bits: bits of sparsity bookkeeping (a 1-bit mask over the pruned tensors), 0 when dense.
        index_bits: other bookkeeping (codebooks' indices, Huffman tables...), 0 when none.
        latency_s: measured time of one forward pass, when measured.
        op_bits: bits of the widest operand of each multiplication (weights or activations; 32 in float32,
            8 in W8A8, 1 in XNOR-Net): what a complexity score charges per MAC.
    """

    params: int
    nonzero_params: int
    weight_bits: float = 32.0
    macs: int = 0
    mask_bits: int = 0
    index_bits: int = 0
    latency_s: float | None = None
    op_bits: float = 32.0

    @staticmethod
    def dense(params: int, macs: int, weight_bits: float = 32.0) -> Cost:
        return Cost(params=int(params), nonzero_params=int(params), weight_bits=weight_bits, macs=int(macs))

    @property
    def size_bits(self) -> float:
        """Bits to store the layer compactly: the non-zero values at their width plus the bookkeeping."""
        return self.nonzero_params * self.weight_bits + self.mask_bits + self.index_bits

    @property
    def size_bytes(self) -> int:
        return int(math.ceil(self.size_bits / 8))

    def of(self, kind: str) -> float:
        """The figure a ``kind`` budget counts: ``macs``, ``params`` (non-zeros), ``size`` (bytes), ``latency``."""
        if kind == "macs":
            return float(self.macs)
        if kind == "params":
            return float(self.nonzero_params)
        if kind == "size":
            return float(self.size_bytes)
        if kind == "latency":
            if self.latency_s is None:
                raise ValueError("this cost has no measured latency")
            return float(self.latency_s)
        raise ValueError(f"unknown budget kind {kind!r}; choose from {', '.join(BUDGET_KINDS)}")

    def scaled_macs(self, factor: int) -> Cost:
        """This cost with its MACs charged ``factor`` times (a Linear applied at every position)."""
        return replace(self, macs=self.macs * int(factor))

    def with_latency(self, latency_s: float | None) -> Cost:
        return replace(self, latency_s=latency_s)

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        params = self.params + other.params
        value_bits = self.nonzero_params * self.weight_bits + other.nonzero_params * other.weight_bits
        nonzero = self.nonzero_params + other.nonzero_params
        latency = None if self.latency_s is None or other.latency_s is None else self.latency_s + other.latency_s
        return Cost(
            params=params,
            nonzero_params=nonzero,
            weight_bits=value_bits / nonzero if nonzero else 32.0,
            macs=self.macs + other.macs,
            mask_bits=self.mask_bits + other.mask_bits,
            index_bits=self.index_bits + other.index_bits,
            latency_s=latency,
            op_bits=(self.macs * self.op_bits + other.macs * other.op_bits) / (self.macs + other.macs)
            if self.macs + other.macs
            else max(self.op_bits, other.op_bits),
        )

    def to_dict(self) -> dict:
        return {
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "weight_bits": self.weight_bits,
            "macs": self.macs,
            "mask_bits": self.mask_bits,
            "index_bits": self.index_bits,
            "size_bytes": self.size_bytes,
            "latency_s": self.latency_s,
            "op_bits": self.op_bits,
        }
