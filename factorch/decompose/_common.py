"""Validation and small numerical helpers shared by the decompositions (private)."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

__all__ = [
    "as_float64",
    "check_positive_int",
    "check_rank",
    "check_seed",
    "fix_column_signs",
    "unfold",
]


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1, else raise.

    Raises:
        TypeError: ``value`` is not an integer (``bool`` is refused).
        ValueError: ``value`` < 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_seed(seed: object) -> int:
    """Return ``seed`` as an ``int`` if it is an integer >= 0, else raise ``TypeError``/``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int >= 0, got {type(seed).__name__} ({seed!r})")
    if seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed}")
    return int(seed)


def check_rank(rank: object, max_rank: int, name: str = "rank") -> int:
    """Return ``rank`` as an ``int`` if ``1 <= rank <= max_rank``, else raise.

    Args:
        rank: the requested rank.
        max_rank: the largest rank allowed.
        name: the argument's name, used in the error message.

    Raises:
        TypeError: ``rank`` is not an integer (``bool`` is refused).
        ValueError: ``rank`` lies outside ``[1, max_rank]``; the message names ``name`` and the range.
    """
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"{name} must be an int in [1, {max_rank}], got {type(rank).__name__} ({rank!r})")
    if not 1 <= rank <= max_rank:
        raise ValueError(f"{name} must be in [1, {max_rank}], got {rank}")
    return int(rank)


def as_float64(tensor: object, name: str, *, min_ndim: int = 0, ndim: int | None = None) -> Tensor:
    """Validate a real, finite tensor and return it as float64 on its own device (a copy if cast).

    Raises:
        TypeError: not a ``torch.Tensor``, or complex.
        ValueError: wrong number of dimensions, an empty dimension, or a non-finite entry.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_complex():
        raise TypeError(f"{name} must be real, got dtype {tensor.dtype}")
    if ndim is not None and tensor.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")
    if tensor.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(tensor.shape)}")
    out = tensor.detach().to(torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return out


def unfold(tensor: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` unfolding: shape ``(I_mode, prod(other dims))``, other modes in order, last fastest."""
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def fix_column_signs(columns: Tensor) -> Tensor:
    """Return +1/-1 per column so that each column's entry of largest magnitude becomes positive.

    Used to make SVD/eigen-vector signs, which LAPACK leaves arbitrary, deterministic.
    """
    if columns.numel() == 0:
        return columns.new_ones(columns.shape[-1])
    idx = columns.abs().argmax(dim=0, keepdim=True)
    signs = torch.sign(columns.gather(0, idx)).squeeze(0)
    return torch.where(signs == 0, torch.ones_like(signs), signs)
