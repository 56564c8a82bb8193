"""Checking the arguments shared by :func:`profile` and the latency functions, and building inputs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

Inputs = Tensor | Sequence[Tensor]


def check_model(model: object, argument: str = "model") -> nn.Module:
    """Return ``model`` if it is an ``nn.Module`` with materialized parameters, else raise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{argument} must be a torch.nn.Module, got {type(model).__name__}")
    for name, p in model.named_parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"{argument} has an uninitialized (lazy) parameter {name!r}; run one forward pass to "
                "materialize it before profiling"
            )
    return model


def as_input_tuple(example_inputs: object, argument: str = "example_inputs") -> tuple[Tensor, ...]:
    """``example_inputs`` (a tensor or a tuple/list of tensors) as a non-empty tuple of tensors."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError(f"{argument} must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")
    if not example_inputs:
        raise ValueError(f"{argument} is empty; pass at least one tensor")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"{argument}[{i}] must be a tensor, got {type(x).__name__}")
    return tuple(example_inputs)


def check_shape(input_shape: object, argument: str = "input_shape") -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints, or a ``TypeError``/``ValueError`` naming it."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"{argument} must be a tuple of ints like (1, 1, 28, 28), got {input_shape!r}")
    if not input_shape:
        raise ValueError(f"{argument} must hold at least one size, got {tuple(input_shape)!r}")
    for s in input_shape:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"{argument} must be a tuple of ints like (1, 1, 28, 28), got {input_shape!r}")
    if any(s < 1 for s in input_shape):
        raise ValueError(f"{argument} must hold positive sizes, got {tuple(input_shape)!r}")
    return tuple(input_shape)


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """dtype and device of the first floating-point parameter (or buffer) of ``model``.

    Falls back to torch's default dtype on the CPU for a model without floating-point tensors.
    """
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def resolve_inputs(model: nn.Module, example_inputs: object = None, input_shape: object = None) -> tuple[Tensor, ...]:
    """The inputs of one forward pass, from exactly one of ``example_inputs`` and ``input_shape``.

    ``input_shape`` makes one standard-normal tensor (fixed seed) in the model's dtype and on its
    device. A model that takes integer inputs (token ids) needs ``example_inputs``.
    """
    if example_inputs is None and input_shape is None:
        raise ValueError(
            "pass example_inputs (a tensor or a tuple of tensors) or input_shape (e.g. (1, 1, 28, 28)); got neither"
        )
    if example_inputs is not None and input_shape is not None:
        raise ValueError("pass either example_inputs or input_shape, not both")
    if example_inputs is not None:
        return as_input_tuple(example_inputs)
    shape = check_shape(input_shape)
    dtype, device = model_dtype_device(model)
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(shape, generator=generator).to(device=device, dtype=dtype),)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode, then restore the ``training`` flag of every submodule."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Set ``torch.set_num_threads(threads)`` for the block (nothing when ``None``), then restore it."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
