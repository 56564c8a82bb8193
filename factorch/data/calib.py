"""Calibration inputs: the first N inputs of a tensor or a DataLoader, as one tensor."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


def calibration_inputs(calib_data: Any, n_samples: int) -> Tensor:
    """The first ``n_samples`` inputs of ``calib_data``: a tensor of inputs, or an iterable (e.g. a
    ``DataLoader``) yielding ``(inputs, targets)`` pairs or input tensors.

    Raises:
        TypeError: ``calib_data`` is none of those.
        ValueError: it yields no samples.
    """
    if isinstance(calib_data, Tensor):
        if calib_data.ndim < 1 or calib_data.shape[0] == 0:
            raise ValueError("calib_data is an empty tensor; give a batch of inputs (N, ...)")
        return calib_data[:n_samples]
    if not isinstance(calib_data, Iterable):
        raise TypeError(
            "calib_data must be a tensor of inputs or an iterable (e.g. a DataLoader) of (inputs, targets) "
            f"or inputs, got {type(calib_data).__name__}"
        )
    chunks, count = [], 0
    for batch in calib_data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError(f"calib_data yielded {type(x).__name__}; expected tensors or (inputs, targets) pairs")
        chunks.append(x[: n_samples - count])
        count += chunks[-1].shape[0]
        if count >= n_samples:
            break
    if count == 0:
        raise ValueError("calib_data yielded no samples")
    return torch.cat(chunks)
