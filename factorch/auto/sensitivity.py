"""Damage scores: how much the network's outputs (or the user's metric) suffer when one layer is replaced."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorch.data.calib import calibration_inputs as calibration_inputs

SENSITIVITY_VERSION = 1  # bump when the scores change meaning, so old cache entries are not reused
_CHUNK = 128
_REPLAY_BYTES = 2 << 30  # recorded activations per (layer, context) beyond this: no replay for that layer


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, dict):
        for v in out.values():
            if isinstance(v, Tensor):
                return v
    raise TypeError(f"cannot score a model whose output is {type(out).__name__}; return a tensor of logits")


@torch.no_grad()
def model_outputs(model: nn.Module, inputs: Tensor) -> Tensor:
    """The model's outputs on ``inputs``, in chunks, as float64 on the CPU."""
    outs = []
    for start in range(0, inputs.shape[0], _CHUNK):
        outs.append(_first_tensor(model(inputs[start : start + _CHUNK])).double().cpu())
    return torch.cat(outs)


class OutputScorer:
    """Damage of a perturbed network relative to reference outputs.

    For logits ``(N, classes)`` and objective ``"accuracy"`` or ``"kl"``: the mean KL divergence
    ``KL(softmax(reference) || softmax(perturbed))``, a label-free proxy of the accuracy lost. Otherwise (or
    with objective ``"output"``): ``||y - y_ref||^2 / ||y_ref||^2``.
    """

    def __init__(self, reference: Tensor, objective: str) -> None:
        self.kl = objective in ("accuracy", "kl") and reference.ndim == 2 and reference.shape[1] > 1
        self.reference = reference
        self.ref_log = F.log_softmax(reference, dim=1) if self.kl else None

    def __call__(self, outputs: Tensor) -> float:
        if self.kl:
            log_q = F.log_softmax(outputs, dim=1)
            return float((self.ref_log.exp() * (self.ref_log - log_q)).sum(dim=1).mean())
        return float((outputs - self.reference).pow(2).sum() / self.reference.pow(2).sum().clamp_min(1e-300))


@contextlib.contextmanager
def substituted(layer: nn.Module, replacement: nn.Module) -> Iterator[None]:
    """While active, ``layer`` computes ``replacement(*inputs)`` instead of its own forward (its hooks still
    run); the dense computation is skipped, not done and discarded."""
    state = vars(layer)  # not setattr: nn.Module would register the replacement as a child named "forward"
    if "forward" in state:
        raise ValueError(f"{type(layer).__name__} already has its forward substituted")
    state["forward"] = replacement
    try:
        yield
    finally:
        del state["forward"]


@contextlib.contextmanager
def substituted_all(replacements: Mapping[nn.Module, nn.Module]) -> Iterator[None]:
    """:func:`substituted` for several layers at once."""
    with contextlib.ExitStack() as stack:
        for layer, replacement in replacements.items():
            stack.enter_context(substituted(layer, replacement))
        yield


def fingerprint(model: nn.Module, inputs: Tensor | None, settings: dict[str, Any]) -> str:
    """A hash of the model's weights and buffers, the calibration inputs and the settings."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if inputs is not None:
        t = inputs.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("FACTORCH_CACHE") or Path.home() / ".cache" / "factorch")


class TableCache:
    """A JSON table of scores on disk, written after every update, so an interrupted analysis resumes."""

    def __init__(self, path: Path | None, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.entries: dict[str, Any] = {}
        self.loaded = 0
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("meta") == json.loads(json.dumps(meta, default=str)):
                    self.entries = dict(data.get("entries", {}))
                    self.loaded = len(self.entries)
            except (OSError, ValueError):
                self.entries = {}

    def get(self, key: str) -> Any:
        return self.entries.get(key)

    def put(self, key: str, value: Any) -> None:
        self.entries[key] = value

    def flush(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "entries": self.entries}, default=str))
        tmp.replace(self.path)


def damage_function(
    model: nn.Module, inputs: Tensor | None, objective: str, eval_fn: Callable[[nn.Module], float] | None
) -> Callable[..., float]:
    """``damage(layer, replacement, context=None)``: the damage of running ``model`` with ``layer`` replaced
    (and, when given, every other ``{layer: replacement}`` of ``context`` replaced too; ``replacement`` may be
    ``None`` to score the context alone).

    With ``eval_fn`` (and objective ``"accuracy"``): ``eval_fn(model)`` before minus after (higher scores are
    better). Otherwise an :class:`OutputScorer` on ``inputs``.
    """

    def replacements(layer, replacement, context) -> dict[nn.Module, nn.Module]:
        subs = {k: v for k, v in (context or {}).items() if k is not layer}
        if replacement is not None:
            subs[layer] = replacement
        return subs

    if eval_fn is not None and objective == "accuracy":
        base = float(eval_fn(model))

        def by_metric(layer: nn.Module, replacement: nn.Module | None, context=None) -> float:
            with substituted_all(replacements(layer, replacement, context)), torch.no_grad():
                return base - float(eval_fn(model))

        return by_metric
    if inputs is None:
        raise ValueError("AutoConfig needs calib_data (or eval_fn with objective='accuracy') to score layers")
    scorer = OutputScorer(model_outputs(model, inputs), objective)
    replay = PrefixReplay(model, inputs)

    def by_outputs(layer: nn.Module, replacement: nn.Module | None, context=None) -> float:
        subs = replacements(layer, replacement, context)
        with replay(layer, {k: v for k, v in subs.items() if k is not layer}, subs):
            return scorer(model_outputs(model, inputs))

    return by_outputs


class PrefixReplay:
    """Replays what runs before a layer instead of computing it again for every candidate of that layer.

    Candidates of one layer (in one context of other replaced layers) change nothing that the network
    computes before that layer is called. The first evaluation for a ``(layer, context)`` records the outputs
    of the largest modules that finish before the layer starts (not its ancestors, called once per forward,
    returning a new tensor without changing their inputs in place); later evaluations for the same pair
    substitute those modules' forwards by the recorded outputs (cloned: a following in-place op must not alter
    them), so only the rest of the network runs. Execution order comes from one traced forward; the scores are
    the same as without replay. The model's own weights must not change between calls (replacements come and
    go through the arguments). A layer whose recording would exceed ``_REPLAY_BYTES`` is not replayed.
    """

    def __init__(self, model: nn.Module, inputs: Tensor) -> None:
        self.model, self.inputs = model, inputs
        self.key: tuple[int, ...] | None = None
        self.held: tuple[Any, ...] = ()  # keeps the keyed objects alive, so their ids are not reused
        self.recorded: dict[nn.Module, list[Tensor]] = {}
        spans: dict[nn.Module, list[int]] = {}  # module -> [start, end, calls, replayable, bytes per sample]
        clock = [0]

        versions: dict[nn.Module, list[tuple[Tensor, int]]] = {}

        def pre(module, args):
            spans.setdefault(module, [clock[0], -1, 0, 1, 0])[2] += 1
            versions[module] = [(a, a._version) for a in args if isinstance(a, Tensor)]
            clock[0] += 1

        def post(module, args, out):
            spans[module][1] = clock[0]
            inputs = versions.pop(module, [])
            # a module that changes its input in place (ReLU(inplace=True)) or returns it or a view of it
            # (Identity, Flatten) runs live: a replayed copy would not carry that aliasing to other references
            aliased = isinstance(out, Tensor) and any(
                out.untyped_storage().data_ptr() == a.untyped_storage().data_ptr() for a, _ in inputs
            )
            mutated = any(a._version != v for a, v in inputs)
            spans[module][3] &= isinstance(out, Tensor) and not aliased and not mutated
            spans[module][4] = out.numel() * out.element_size() if isinstance(out, Tensor) else 0
            clock[0] += 1

        handles = [
            h for m in model.modules() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))
        ]
        try:
            with torch.no_grad():
                model(inputs[:1])
        finally:
            for h in handles:
                h.remove()
        self.spans = spans

    def before(self, layer: nn.Module) -> list[nn.Module]:
        """The largest modules that run (once, returning a tensor) and finish before ``layer`` starts."""
        if layer not in self.spans or self.spans[layer][2] != 1:
            return []
        start = self.spans[layer][0]

        def visit(module: nn.Module) -> list[nn.Module]:
            if module is layer or module not in self.spans:
                return []
            m_start, m_end, calls, tensor, _ = self.spans[module]
            if m_start > start:
                return []
            if m_end < start and calls == 1 and tensor:
                return [module]
            return [found for child in module.children() for found in visit(child)]

        return visit(self.model)

    @contextlib.contextmanager
    def __call__(
        self, layer: nn.Module, context: Mapping[nn.Module, nn.Module], subs: Mapping[nn.Module, nn.Module]
    ) -> Iterator[None]:
        """Run with ``subs`` substituted; record or replay the modules before ``layer`` for this ``context``."""
        key = (id(layer), *sorted((id(k), id(v)) for k, v in context.items()))
        if key == self.key:
            replays = {m: self._replayer(chunks) for m, chunks in self.recorded.items()}
            with substituted_all({**subs, **replays}):
                yield
            return
        self.key, self.recorded, self.held = None, {}, ()
        before = self.before(layer)
        if sum(self.spans[m][4] for m in before) * self.inputs.shape[0] > _REPLAY_BYTES:
            before = []  # too much to keep: this layer's candidates run the whole network
        recorded: dict[nn.Module, list[Tensor]] = {m: [] for m in before}
        handles = [
            m.register_forward_hook(lambda mod, args, out: recorded[mod].append(out.detach().clone())) for m in recorded
        ]
        try:
            with substituted_all(subs):
                yield
        finally:
            for h in handles:
                h.remove()
        self.key, self.recorded, self.held = key, recorded, (layer, dict(context))

    @staticmethod
    def _replayer(chunks: list[Tensor]) -> Callable[..., Tensor]:
        calls = iter(range(len(chunks)))
        return lambda *args, **kwargs: chunks[next(calls)].clone()
