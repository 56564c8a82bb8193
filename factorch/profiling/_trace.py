"""Run a forward pass and, when it fails, say which layer failed on which input shapes.

Forward hooks on every submodule keep the stack of modules that are executing. When an exception
escapes the model, the innermost module it passed through is the layer that failed; the error is
re-raised as a :class:`ForwardError` (a ``ValueError``) naming that layer's qualified name and type,
the input shapes it received, the model's input shapes and the original message::

    input shape (1, 3, 28, 28) does not fit the model: layer 'conv1' (Conv2d) failed on input
    (1, 3, 28, 28): Given groups=1, weight of size [16, 1, 3, 3], expected input[1, 3, 28, 28] to have
    1 channels, but got 3 channels instead

Use :func:`run_forward` for one call with no overhead on success, or :func:`trace_forward` to keep the
hooks on for a block (the profiler attributes MACs to layers with its ``on_boundary`` callback).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from factorch.profiling._format import format_shapes

#: Exceptions that a shape that does not fit raises inside torch or user code. Other exceptions
#: (``TypeError`` for a wrong number of arguments, ``KeyboardInterrupt``, out-of-memory) pass through.
SHAPE_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, ValueError, IndexError, AssertionError)
_PASS_THROUGH: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,) + (
    (torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else ()
)


class ForwardError(ValueError):
    """A forward pass failed inside a layer; says which layer, on which inputs, and why.

    Attributes:
        layer_name: qualified name of the innermost module executing when the error was raised
            (``""`` for the model itself).
        layer_type: class name of that module.
        layer_input_shapes: shapes of the tensors it received (``None`` for a non-tensor argument).
        input_shapes: shapes of the model's inputs.
    """

    def __init__(
        self,
        message: str,
        *,
        layer_name: str,
        layer_type: str,
        layer_input_shapes: list[tuple[int, ...] | None],
        input_shapes: list[tuple[int, ...] | None],
    ) -> None:
        super().__init__(message)
        self.layer_name = layer_name
        self.layer_type = layer_type
        self.layer_input_shapes = layer_input_shapes
        self.input_shapes = input_shapes


def tensor_shapes(args: Sequence[Any], kwargs: Mapping[str, Any] | None = None) -> list[tuple[int, ...] | None]:
    """Shapes of positional then keyword arguments; ``None`` for anything that is not a tensor."""
    values = [*args, *(kwargs or {}).values()]
    return [tuple(v.shape) if isinstance(v, Tensor) else None for v in values]


def first_tensor_shape(output: Any) -> tuple[int, ...] | None:
    """Shape of the first tensor in ``output`` (a tensor, or nested tuples/lists/dicts), else ``None``."""
    if isinstance(output, Tensor):
        return tuple(output.shape)
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            shape = first_tensor_shape(item)
            if shape is not None:
                return shape
    return None


def _shape_text(shapes: list[tuple[int, ...] | None]) -> str:
    return format_shapes(shapes) if shapes else "no tensors"


@dataclass
class Frame:
    """One module call on the stack: its qualified name, the module, and the arguments it received."""

    name: str
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    pending: BaseException | None = field(default=None, repr=False)


class ModuleTrace:
    """Forward hooks on every submodule of ``model`` that keep the stack of executing modules.

    Also counts the completed calls of each module and records the output shape of its first call.
    A module registered under two names (shared) is hooked once, under its first name.

    Args:
        model: the model to trace.
        on_boundary: called with the innermost executing frame (``None`` outside the model) just before
            a module is entered or left, so a caller can charge the work done since the last boundary to
            that frame.
    """

    def __init__(self, model: nn.Module, on_boundary: Callable[[Frame | None], None] | None = None) -> None:
        self.model = model
        self.stack: list[Frame] = []
        self.calls: dict[str, int] = {}
        self.output_shapes: dict[str, tuple[int, ...] | None] = {}
        self.failure: tuple[BaseException, Frame] | None = None
        self._on_boundary = on_boundary
        self._handles: list[RemovableHandle] = []

    def attach(self) -> None:
        """Register the hooks (idempotent)."""
        if self._handles:
            return
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post_hook(name), always_call=True))

    def detach(self) -> None:
        """Remove every hook this trace registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _boundary(self) -> None:
        if self._on_boundary is not None:
            self._on_boundary(self.stack[-1] if self.stack else None)

    def _pre_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._boundary()
            # An exception being handled around this call is not a failure of this call.
            self.stack.append(Frame(name, module, args, kwargs, pending=sys.exc_info()[1]))

        return hook

    def _post_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._boundary()
            index = self._innermost(module)
            if index is None:
                return
            frame = self.stack[index]
            del self.stack[index:]
            error = sys.exc_info()[1]
            if error is not None and error is not frame.pending:
                # Called by ``always_call`` while ``error`` unwinds: the innermost frame sees it first.
                if self.failure is None or self.failure[0] is not error:
                    self.failure = (error, frame)
                return
            self.calls[name] = self.calls.get(name, 0) + 1
            if name not in self.output_shapes:
                self.output_shapes[name] = first_tensor_shape(output)

        return hook

    def _innermost(self, module: nn.Module) -> int | None:
        """Index of the innermost frame of ``module`` on the stack."""
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i].module is module:
                return i
        return None

    def failed_frame(self, error: BaseException) -> Frame | None:
        """The innermost frame that ``error`` unwound through, or ``None`` if it arose outside the model."""
        if self.failure is not None and self.failure[0] is error:
            return self.failure[1]
        return None


def forward_error(error: BaseException, frame: Frame, inputs: Sequence[Any]) -> ForwardError:
    """The :class:`ForwardError` for ``error`` raised while ``frame`` was the innermost call."""
    layer_shapes = tensor_shapes(frame.args, frame.kwargs)
    input_shapes = tensor_shapes(inputs)
    name = frame.name if frame.name else "(model)"
    message = str(error).strip() or type(error).__name__
    return ForwardError(
        f"input shape {_shape_text(input_shapes)} does not fit the model: layer {name!r} "
        f"({type(frame.module).__name__}) failed on input {_shape_text(layer_shapes)}: {message}",
        layer_name=frame.name,
        layer_type=type(frame.module).__name__,
        layer_input_shapes=layer_shapes,
        input_shapes=input_shapes,
    )


def _translatable(error: BaseException) -> bool:
    return (
        isinstance(error, SHAPE_ERRORS) and not isinstance(error, _PASS_THROUGH) and not isinstance(error, ForwardError)
    )


@contextmanager
def trace_forward(
    model: nn.Module,
    inputs: Sequence[Any] = (),
    *,
    on_boundary: Callable[[Frame | None], None] | None = None,
) -> Iterator[ModuleTrace]:
    """Keep a :class:`ModuleTrace` on ``model`` for the block and name the layer of any failure.

    An error of a kind in :data:`SHAPE_ERRORS` that escapes a module of ``model`` inside the block is
    re-raised as a :class:`ForwardError` (chained to the original); errors raised outside the model's
    modules, and other kinds of error, pass through unchanged. The hooks are removed on exit.

    Args:
        model: the model whose calls are traced.
        inputs: the model's inputs, named in the error message.
        on_boundary: see :class:`ModuleTrace`.

    Yields:
        The trace (call counts and first output shapes per qualified module name).
    """
    trace = ModuleTrace(model, on_boundary)
    trace.attach()
    try:
        yield trace
    except BaseException as err:
        frame = trace.failed_frame(err) if _translatable(err) else None
        if frame is None:
            raise
        raise forward_error(err, frame, inputs) from err
    finally:
        trace.detach()


def run_forward(model: nn.Module, inputs: Tensor | Sequence[Any]) -> Any:
    """``model(*inputs)``; a failure is re-raised as a :class:`ForwardError` naming the failing layer.

    The call runs without hooks, so it costs nothing extra when it succeeds. When it raises an error of
    a kind in :data:`SHAPE_ERRORS`, the same inputs are run again under :func:`trace_forward` to find the
    innermost module that failed (a module's side effects before the failure, such as batch-norm
    statistics in training mode, therefore happen twice). The grad mode and train/eval mode are the
    caller's.

    Args:
        model: the model to call.
        inputs: a tensor or a sequence of positional arguments.

    Returns:
        Whatever the model returns.

    Raises:
        ForwardError: the forward pass failed inside a module of ``model``.
    """
    args = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    try:
        return model(*args)
    except BaseException as err:
        if not _translatable(err):
            raise
        original = err
    try:
        with trace_forward(model, args):
            model(*args)
    except ForwardError as located:
        raise located from original
    # The second run succeeded or failed outside any module: nothing better to say than the original.
    raise original
