"""Save a compressed model as ``plan.json`` + an ordinary state dict; load it back by rebuilding the
structure from the plan (no decomposition, no pickled modules)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from factorch.apply import PLAN_ATTR
from factorch.layers._spec import spec_from_dict, spec_of
from factorch.models._io import CheckpointError, load_state_dict_file
from factorch.registry import layer_class_named
from factorch.surgery import add_zero_bias, get_module, replace_module

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "weights.pt"
PACKED_FILE = "weights.bin"  # save(pack=True): the raw bytes of every tensor, indexed in the plan
FORMAT = "factorch-compressed"
FORMAT_VERSION = 1


def model_plan(model: nn.Module) -> dict:
    """The JSON description of ``model``'s structural edits (what :func:`load` replays on the base model):
    channels removed by structured pruning, BatchNorm folds, then the compressed layers."""
    from factorch.surgery import compressed_layers

    layers = {}
    for name, module in compressed_layers(model, nested=True):  # a chain before its stages compressed in place
        layers[name] = {"class": type(module).__name__, **module.describe()}
    extra = getattr(model, PLAN_ATTR, {}) or {}
    plan = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "base": getattr(model, "factorch_spec", None),
        "folded_bn": extra.get("folded_bn", []),
        "layers": layers,
    }
    if extra.get("channels"):
        plan["channels"] = extra["channels"]
    return plan


def _packed_state(model: nn.Module, plan: dict, huffman: bool = False) -> dict[str, torch.Tensor]:
    """The state dict, each compressed layer's entries in its own compact format (recorded in ``plan``);
    with ``huffman``, the sparse layers' in their Huffman-coded format."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in plan["layers"]:
        layer = model.get_submodule(name)
        prefix = name + "."
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if huffman and hasattr(layer, "pack_state_huffman"):
            packed, fmt = layer.pack_state_huffman(own)
        else:
            packed, fmt = layer.pack_state(own)
        if fmt is None:
            continue
        for k in own:
            del state[prefix + k]
        state.update({prefix + k: v for k, v in packed.items()})
        plan["layers"][name]["packed"] = fmt
    return state


def save(model: nn.Module, path: str | Path, *, pack: bool = False) -> Path:
    """Write ``path/plan.json`` and ``path/weights.pt`` (a state dict that ``torch.load(weights_only=True)``
    reads; compressed layers in their compact format, e.g. a pruned layer's non-zeros and a 1-bit mask).
    Both files are written under temporary names first, so a failed save leaves nothing half-written.

    ``pack=True``: Deep Compression's format for the pruned and weight-shared layers: the positions of the
    non-zeros as Huffman-coded gaps and the weight-sharing indices Huffman-coded; a model with neither is
    refused. :func:`load` restores the same model bit for bit. Returns the folder."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = Path(path)
    plan = model_plan(model)
    if pack:
        if not any(_packs(model.get_submodule(n)) for n in plan["layers"]):
            raise ValueError(
                "save(pack=True) Huffman-codes the positions of pruned weights and the weight-sharing indices "
                "(Deep Compression); this model has neither: compress it with PruneConfig and/or KMeansConfig "
                "first, or save it with pack=False"
            )
    state = _packed_state(model, plan, huffman=pack)
    if pack:  # raw bytes and a short index: no per-tensor or zip framing (kilobytes on a small model)
        _drop_derivable_specs(plan)
        blob = _to_blob(state, plan)
    weights_name = PACKED_FILE if pack else WEIGHTS_FILE
    path.mkdir(parents=True, exist_ok=True)
    tmp_plan, tmp_weights = path / (PLAN_FILE + ".tmp"), path / (weights_name + ".tmp")
    try:
        tmp_plan.write_text(json.dumps(plan, separators=(",", ":")) if pack else json.dumps(plan, indent=2) + "\n")
        if pack:
            tmp_weights.write_bytes(blob)
        else:
            torch.save(state, tmp_weights)
        os.replace(tmp_weights, path / weights_name)
        os.replace(tmp_plan, path / PLAN_FILE)
        (path / (WEIGHTS_FILE if pack else PACKED_FILE)).unlink(missing_ok=True)  # the other format's, if any
    finally:
        for tmp in (tmp_plan, tmp_weights):
            tmp.unlink(missing_ok=True)
    return path


def _drop_derivable_specs(plan: dict) -> None:
    """Remove from ``plan`` each layer's dense spec that :func:`rebuild` reads off the base model anyway (the
    registry model, its channels removed and BatchNorms folded): half of a small packed model's plan."""
    if not plan.get("base"):
        return
    from factorch.layers._spec import spec_to_dict
    from factorch.models._resolve import build_from_spec

    with torch.device("meta"):
        base = rebuild(build_from_spec(plan["base"], "the model being saved"), {**plan, "layers": {}})
    for name, desc in plan["layers"].items():
        try:
            derived = spec_to_dict(spec_of(get_module(base, name)))
        except (AttributeError, TypeError, ValueError):
            continue
        if derived == desc["spec"]:
            del desc["spec"]


def _to_blob(state: dict[str, torch.Tensor], plan: dict) -> bytes:
    """The state dict's tensors as raw bytes, one after another, indexed in ``plan``: each compressed layer's
    tensors as ``[key within the layer, dtype, shape]`` in its own entry (``"blob"``), the others in the plan's
    ``"blob"`` list, read first (a tensor's length follows from its dtype and shape). Empty fields are left
    out: on a small model the plan is a good part of the file."""
    layers = plan["layers"]
    owner = {}
    for key in state:
        layer = key.rsplit(".", 1)[0]
        while layer and layer not in layers:
            layer = layer.rsplit(".", 1)[0] if "." in layer else ""
        owner[key] = layer
    plan["blob"] = []
    for desc in layers.values():
        desc["blob"] = []
        if not desc.get("options"):
            desc.pop("options", None)
    if not plan.get("folded_bn"):
        plan.pop("folded_bn", None)
    ordered = [k for k in state if not owner[k]] + [k for name in layers for k in state if owner[k] == name]
    for key in ordered:
        value = state[key]
        entry = [str(value.dtype).removeprefix("torch."), list(value.shape)]
        if owner[key]:
            layers[owner[key]]["blob"].append([key[len(owner[key]) + 1 :], *entry])
        else:
            plan["blob"].append([key, *entry])
    return b"".join(
        state[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for k in ordered
    )


def _blob_index(plan: dict) -> list:
    """``[key, dtype, shape]`` of every tensor of a packed file, in the order they were written."""
    index = [list(entry) for entry in plan["blob"]]
    for name, desc in plan.get("layers", {}).items():
        index += [[f"{name}.{key}", dtype, shape] for key, dtype, shape in desc.get("blob", [])]
    return index


def _from_blob(blob: bytes, index: list) -> dict[str, torch.Tensor]:
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    out, offset = {}, 0
    for key, dtype, shape in index:
        dtype = getattr(torch, dtype)
        end = offset + math.prod(shape) * dtype.itemsize
        if end > data.numel():
            raise ValueError(f"{key!r} ends at byte {end}, past the {data.numel()} bytes stored")
        out[key] = data[offset:end].clone().view(dtype).view(shape)
        offset = end
    if offset != data.numel():
        raise ValueError(f"{data.numel() - offset} bytes stored after the last indexed tensor")
    return out


def _packs(layer: nn.Module) -> bool:
    """Whether Deep Compression's format has something to code in ``layer``: weight-sharing indices, or the
    positions of pruned weights."""
    return hasattr(layer, "pack_state_huffman") and layer.huffman_worthwhile()


def _layer_class(name: str, desc: dict):
    try:
        return layer_class_named(desc.get("class"))
    except ValueError as err:
        raise CheckpointError(f"plan layer {name!r}: {err}") from None


def rebuild(base_model: nn.Module, plan: dict) -> nn.Module:
    """Apply ``plan`` to ``base_model`` in place: channels removed, fold markers, then compressed structures
    (weights unset)."""
    if plan.get("channels"):
        from factorch.prune.channels import apply_channel_record_

        for record in plan["channels"]:  # each structured-pruning step, in order
            apply_channel_record_(base_model, record)
    for conv_name, bn_name in plan.get("folded_bn", []):
        add_zero_bias(get_module(base_model, conv_name))
        replace_module(base_model, bn_name, nn.Identity())
    for name, desc in plan.get("layers", {}).items():
        cls = _layer_class(name, desc)
        dense = get_module(base_model, name)
        spec = spec_from_dict(desc["spec"]) if "spec" in desc else spec_of(dense)
        replace_module(base_model, name, cls.build(spec, tuple(desc["ranks"]), **desc.get("options", {})))
    extra = {"folded_bn": plan.get("folded_bn", [])}
    if plan.get("channels"):
        extra["channels"] = plan["channels"]
    setattr(base_model, PLAN_ATTR, extra)
    return base_model


def _unpack_state(state: dict[str, torch.Tensor], plan: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    for name, desc in plan.get("layers", {}).items():
        fmt = desc.get("packed")
        if not fmt:
            continue
        prefix = name + "."
        own = {k[len(prefix) :]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
        cls = _layer_class(name, desc)
        try:
            unpacked = cls.unpack_state(own, fmt, model.get_submodule(name).spec)
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"plan layer {name!r}: cannot unpack its {fmt!r} weights: {err}") from err
        state.update({prefix + k: v for k, v in unpacked.items()})
    return state


def load(path: str | Path, base_model: nn.Module | None = None) -> nn.Module:
    """Load a model written by :func:`save`.

    Args:
        path: the folder.
        base_model: the uncompressed architecture (its weights are ignored; it is modified in place). May be
            omitted when the compressed model came from a registry model (``factorch.models.create_model``).
    """
    path = Path(path)
    plan_path = path / PLAN_FILE
    if not plan_path.is_file():
        raise FileNotFoundError(f"{path} holds no {PLAN_FILE}; is it a folder written by factorch.save?")
    try:
        plan = json.loads(plan_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{plan_path} is not valid JSON: {err}") from err
    if plan.get("format") != FORMAT:
        raise CheckpointError(f"{plan_path} is not a factorch plan (format {plan.get('format')!r})")
    if plan.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{plan_path} has version {plan['version']}, newer than this factorch reads")
    if base_model is None:
        base = plan.get("base")
        if not base:
            raise ValueError(f"{path} was made from a model outside the registry: pass base_model=")
        from factorch.models._resolve import build_from_spec

        base_model = build_from_spec(base, str(plan_path))
    model = rebuild(base_model, plan)
    if plan.get("blob") is not None:
        weights_path = path / PACKED_FILE
        if not weights_path.is_file():
            raise FileNotFoundError(f"{path} holds no {PACKED_FILE}, which its {PLAN_FILE} indexes")
        try:
            state = _from_blob(weights_path.read_bytes(), _blob_index(plan))
        except (KeyError, RuntimeError, AttributeError, TypeError, ValueError) as err:
            raise CheckpointError(f"{weights_path} does not match its index in {PLAN_FILE}: {err}") from err
    else:
        weights_path = path / WEIGHTS_FILE
        state = load_state_dict_file(weights_path)
    state = _unpack_state(state, plan, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{weights_path} does not fit the rebuilt model: {err}") from err
    return model.eval()
