"""Building blocks of compact networks: factorized by design rather than compressed after training.

``Fire``, ``DepthwiseSeparableConv``, ``InvertedResidual``, ``ResNeXtBlock``, ``AsymmetricConv`` (``blocks``);
``ShiftConv2d`` and ``ShiftAttentionConv2d`` (``shift``); ``TRL`` and ``TCL`` (``tensor``). Each is made of
plain torch operations, so ``factorch.profile`` and ``factorch.score`` count it exactly (a shift is a memory
move, not a MAC).
"""

from factorch.nn.blocks import AsymmetricConv, DepthwiseSeparableConv, Fire, InvertedResidual, ResNeXtBlock
from factorch.nn.shift import ShiftAttentionConv2d, ShiftConv2d, to_shift_model
from factorch.nn.tensor import TCL, TRL

__all__ = [
    "AsymmetricConv",
    "DepthwiseSeparableConv",
    "Fire",
    "InvertedResidual",
    "ResNeXtBlock",
    "ShiftAttentionConv2d",
    "ShiftConv2d",
    "TCL",
    "TRL",
    "to_shift_model",
]
