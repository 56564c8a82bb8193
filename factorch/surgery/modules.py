"""Strict module surgery: find, replace and trace layers by qualified name; fold BatchNorm into convs."""

from __future__ import annotations

import difflib
from collections.abc import Iterator

import torch
from torch import nn

from factorch.layers import CompressedLayer, FactorizedLayer

FACTORIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)


def close_names(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; ``KeyError``-like ``ValueError`` with close matches when missing."""
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        raise ValueError(f"the model has no layer named {name!r}.{close_names(name, names)}")
    return model.get_submodule(name)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` in place of the submodule ``name`` (which must exist); returns the old module."""
    old = get_module(model, name)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child not in parent._modules:
        raise ValueError(f"{name!r} is not a direct child of {parent_name or 'the model'}")
    parent._modules[child] = new
    return old


def candidate_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Named dense layers of the types factorch factorizes (exact type match).

    The stages inside a :class:`~factorch.layers.FactorizedLayer` are parts of one factorization, never
    candidates of their own: a factorized layer is shrunk as a unit (``recompress``), see
    :func:`factorized_layers`.
    """
    inside: tuple[str, ...] = ()
    for name, module in model.named_modules():
        if not name or name.startswith(inside):
            continue
        if isinstance(module, CompressedLayer):
            inside = (*inside, name + ".")
        elif type(module) in FACTORIZABLE:
            yield name, module


def compressed_layers(model: nn.Module, *, nested: bool = False) -> Iterator[tuple[str, CompressedLayer]]:
    """Named compressed layers of ``model``: the outermost ones, and with ``nested`` also the stages of
    factorized layers compressed in place (quantized stages of a chain), each after its chain."""
    inside: tuple[str, ...] = ()
    for name, module in model.named_modules():
        if name and isinstance(module, CompressedLayer) and (nested or not name.startswith(inside)):
            inside = (*inside, name + ".")
            yield name, module


def chain_stages(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """``(name, stage, chain name)`` of the dense stages inside factorized layers (the layers a
    ``nests_in_chains`` method may compress in place), in module order."""
    for outer, chain in factorized_layers(model):
        inside: tuple[str, ...] = ()
        for sub, module in chain.named_modules():
            if not sub or sub.startswith(inside):
                continue
            if isinstance(module, CompressedLayer):
                inside = (*inside, sub + ".")
            elif type(module) in FACTORIZABLE:
                yield f"{outer}.{sub}", module, outer


def factorized_layers(model: nn.Module) -> Iterator[tuple[str, FactorizedLayer]]:
    """Named factorized layers of ``model`` (the outermost ones; their stages are not listed)."""
    return ((n, m) for n, m in compressed_layers(model) if isinstance(m, FactorizedLayer))


def trace_layers(model: nn.Module, example_inputs: tuple) -> dict[str, tuple[int, ...]]:
    """Input shape of every named module in the order of execution (first call), from one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, args, _name=name):
            if _name not in shapes and args and isinstance(args[0], torch.Tensor):
                shapes[_name] = tuple(args[0].shape)

        handles.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        from factorch.profiling import run_forward

        with torch.no_grad():
            run_forward(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes


def _conv_bn_pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and type(modules.get(src.target)) in (nn.Conv1d, nn.Conv2d)
            and len(src.users) == 1
        ):
            pairs.append((src.target, node.target))
    return pairs


def _conv_bn_pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for pname, parent in model.named_modules():
        if isinstance(parent, nn.Sequential):
            kids = list(parent._modules.items())
            for (a, ma), (b, mb) in zip(kids, kids[1:]):
                if type(ma) in (nn.Conv1d, nn.Conv2d) and isinstance(mb, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    prefix = f"{pname}." if pname else ""
                    pairs.append((prefix + a, prefix + b))
    return pairs


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv name, batchnorm name)`` for every BatchNorm fed only by a conv (torch.fx, else Sequential order).

    Convs inside a factorized layer are left out: its structure is rebuilt from its description when loading.
    """
    try:
        pairs = _conv_bn_pairs_fx(model)
    except Exception:  # noqa: BLE001 - models fx cannot trace fall back to Sequential adjacency
        pairs = _conv_bn_pairs_sequential(model)
    inside = tuple(name + "." for name, _ in compressed_layers(model))
    return [(conv, bn) for conv, bn in pairs if not conv.startswith(inside)]


def fold_bn_into_conv(conv: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (its running statistics, i.e. eval behaviour) into ``conv`` in place; ``conv`` gains a bias."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    with torch.no_grad():
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        bias = (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            bias = bias + bn.bias.double()
        shape = (-1,) + (1,) * (conv.weight.ndim - 1)
        conv.weight.copy_((conv.weight.double() * scale.reshape(shape)).to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
        else:
            conv.bias.copy_(bias.to(conv.bias.dtype))


def fold_batchnorms(model: nn.Module, pairs: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Fold every conv -> BatchNorm pair of ``model`` in place (the BatchNorm becomes ``nn.Identity``)."""
    pairs = conv_bn_pairs(model) if pairs is None else pairs
    for conv_name, bn_name in pairs:
        fold_bn_into_conv(get_module(model, conv_name), get_module(model, bn_name))
        replace_module(model, bn_name, nn.Identity())
    return pairs


def add_zero_bias(conv: nn.Module) -> None:
    """Give a conv a (zero) bias, as folding does; used to rebuild a folded model's structure."""
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))
