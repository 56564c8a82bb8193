"""``challenge``: the lowest complexity score that keeps an accuracy floor, the whole pipeline in one call.

Each try asks :class:`~factorch.auto.config.AutoConfig` for a model at most at a score target (every method
the user allows: factorization ranks, sparsities, weight and activation bit widths), fine-tunes it by
distillation from the original network (quantization-aware where layers are quantized: their straight-through
estimators and learned step sizes train with it), and measures its accuracy on a validation split taken from
the training set. The targets move geometrically: lower after a try that keeps the floor, back toward the
last good one after a try that does not (bisection in log-score). The test set is used once, on the chosen
model, at the end.

With ``bits=(w, a)`` every try is factorized *and* quantized: the search chooses factorization ranks per layer
(the factorization methods whose chains keep their accuracy at those bits, ``low_bit_stages``) for the score
that quantizing at ``w``-bit weights and ``a``-bit activations leaves (the target divided by the score ratio
the quantization gives the dense model, measured in each try), then
every layer, the stages of the factorized chains included, is quantized (the first conv and the classifier at
``edge_bits``), and the distillation trains the quantized chain (learned step sizes at 4 bits or fewer).

With ``structure="channels"`` a try removes whole channels instead of factorizing: the same share of every
channel group (uniform structured pruning), at the largest MACs fraction whose model, quantized at ``bits``,
scores at most the target (bisection in log-MACs, each point priced by quantizing and scoring it), the pruned
layers refitted on the calibration inputs. Plain convs quantize with less damage than factorized chains,
whose every stage adds its own rounding. ``float_epochs`` splits each try's distillation around the
quantization: the smaller float network recovers first (lr 0.01), then the quantized one trains (``lr``).

A model trained on the whole training set scores higher on any split of it than on unseen data (resnet20:
95.64 % on the default validation split, 93.96 % on the test set), so a floor checked as is on such a split
lets through models that fall below it on new data. With ``reference_accuracy`` (the dense model's published
accuracy on held-out data, e.g. its model card's) the floor applied to the validation split is raised by the
dense model's own gap: ``min_accuracy + (dense validation - reference_accuracy)``, i.e. the tries may lose on
validation as many points as the floor allows below the reference.

Everything is written to ``out_dir`` as it happens (``challenge.json`` after every try, each try's model and
fine-tuning checkpoints), so an interrupted run resumes where it stopped and ends with the same result as an
uninterrupted one with the same seed.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from factorch.api import compress
from factorch.apply import edge_layers
from factorch.auto.closed_loop import TargetUnreachableError
from factorch.auto.config import AutoConfig
from factorch.calibrate.config import CalibrationConfig
from factorch.complexity import resolve_rules, score
from factorch.config import FactorizationConfig, Plan, QuantConfig
from factorch.io import load, save
from factorch.progress import progress_bar
from factorch.prune.config import ChannelPruneConfig
from factorch.rank.bisect import largest_feasible
from factorch.registry import get_method, list_methods
from factorch.surgery import candidate_layers, trace_layers
from factorch.train import evaluate, finetune

STATE_FILE = "challenge.json"
STATE_VERSION = 2  # 2: reference_accuracy in the settings


@dataclass
class Try:
    """One point of the search: the score asked for, and what the built, fine-tuned model reached."""

    target: float
    status: str  # "done" | "unreachable"
    score: float | None = None
    val_accuracy: float | None = None
    epochs: int = 0
    folder: str | None = None
    note: str = ""


@dataclass
class ChallengeResult:
    """The outcome: every try, the chosen model (lowest score keeping the floor on validation data) and its
    test accuracy (measured once, at the end)."""

    rules: str
    min_accuracy: float
    dense_score: float
    dense_val_accuracy: float
    tries: list[Try]
    best: int | None  # index into tries; None: no try kept the floor (the dense model is the answer)
    model: nn.Module = field(repr=False)
    test_accuracy: float | None = None
    dense_test_accuracy: float | None = None
    reference_accuracy: float | None = None

    @property
    def val_floor(self) -> float:
        """The floor applied on the validation split (see the module docstring)."""
        return val_floor(self.min_accuracy, self.dense_val_accuracy, self.reference_accuracy)

    @property
    def score(self) -> float:
        return self.dense_score if self.best is None else float(self.tries[self.best].score)

    def to_dict(self) -> dict:
        return {
            "rules": self.rules,
            "min_accuracy": self.min_accuracy,
            "reference_accuracy": self.reference_accuracy,
            "val_floor": self.val_floor,
            "dense_score": self.dense_score,
            "dense_val_accuracy": self.dense_val_accuracy,
            "dense_test_accuracy": self.dense_test_accuracy,
            "best": self.best,
            "score": self.score,
            "test_accuracy": self.test_accuracy,
            "tries": [asdict(t) for t in self.tries],
        }

    def to_markdown(self) -> str:
        lines = [
            f"# challenge: lowest {self.rules} score at >= {self.min_accuracy:g} %",
            "",
            f"floor on the validation split: {self.val_floor:.2f} %"
            + (
                ""
                if self.reference_accuracy is None
                else f" ({self.min_accuracy:g} + the dense model's {self.dense_val_accuracy:.2f} % on validation "
                f"- its reference {self.reference_accuracy:g} %)"
            ),
            "",
            f"dense: score {self.dense_score:.5g}, validation {self.dense_val_accuracy:.2f} %"
            + (f", test {self.dense_test_accuracy:.2f} %" if self.dense_test_accuracy is not None else ""),
            "",
            "| try | target | score | validation % | epochs | kept | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, t in enumerate(self.tries):
            kept = "best" if i == self.best else ("yes" if _passes(t, self.val_floor) else "no")
            score_text = "-" if t.score is None else f"{t.score:.5g}"
            acc = "-" if t.val_accuracy is None else f"{t.val_accuracy:.2f}"
            lines.append(f"| {i} | {t.target:.5g} | {score_text} | {acc} | {t.epochs} | {kept} | {t.note} |")
        lines += ["", f"chosen: score {self.score:.5g}"]
        if self.test_accuracy is not None:
            lines[-1] += f", test accuracy {self.test_accuracy:.2f} % (measured once, at the end)"
        return "\n".join(lines) + "\n"


def val_floor(min_accuracy: float, dense_val: float, reference_accuracy: float | None) -> float:
    """The floor on the validation split: ``min_accuracy``, raised by the dense model's validation accuracy
    above ``reference_accuracy`` when that is given (never lowered: a reference above the validation figure
    leaves the floor as asked)."""
    if reference_accuracy is None:
        return float(min_accuracy)
    return float(min_accuracy) + max(0.0, float(dense_val) - float(reference_accuracy))


def _passes(t: Try, floor: float) -> bool:
    return t.status == "done" and t.val_accuracy is not None and t.val_accuracy >= floor


def validation_split(
    dataset: Dataset, size: int, seed: int, plain: Dataset | None = None
) -> tuple[Subset, Subset, list[int]]:
    """``(train, validation, train indices)``: a seeded random ``size`` of ``dataset`` held out for the floor,
    read from ``plain`` (the same items without augmentation) when given."""
    n = len(dataset)
    if not 0 < size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} (the training set has {n} items), got {size}")
    if plain is not None and len(plain) != n:
        raise ValueError(f"val_data must hold the same {n} items as train_data (unaugmented), got {len(plain)}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[size:]), Subset(plain if plain is not None else dataset, order[:size]), order[size:]


def next_target(tries: Sequence[Try], floor: float, dense_score: float, first: float, step: float) -> float:
    """The score to try next, from the tries so far: ``first`` of the dense score at the start; after a try
    that keeps the floor, ``step`` times lower until one fails; then the geometric middle of the lowest target
    that kept the floor and the highest that did not (an unreachable target counts as not kept)."""
    good = [t.target for t in tries if _passes(t, floor)]
    bad = [t.target for t in tries if not _passes(t, floor)]
    hi = min(good) if good else dense_score
    below = [b for b in bad if b < hi]
    if not tries:
        return first * dense_score
    if not below:
        return hi * step
    return math.sqrt(hi * max(below))


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def challenge(
    model: nn.Module,
    train_data: Dataset,
    *,
    example_inputs: Tensor,
    min_accuracy: float,
    out_dir: str | Path,
    rules: str = "effdl",
    methods: Sequence[str] | None = None,
    epochs: int = 8,
    epochs_per_try: int = 1,
    test_data: Dataset | None = None,
    val_data: Dataset | None = None,
    val_size: int = 5000,
    reference_accuracy: float | None = None,
    calib_samples: int = 512,
    first: float = 0.1,
    step: float = 0.4,
    seed: int = 0,
    resume: bool = True,
    show_progress: bool = True,
    auto_options: dict[str, Any] | None = None,
    bits: int | tuple[int, int] | None = None,
    edge_bits: int = 8,
    lr: float | None = None,
    structure: str = "factorize",
    float_epochs: int = 0,
) -> ChallengeResult:
    """Search the lowest ``rules`` score at which the compressed, fine-tuned ``model`` keeps ``min_accuracy``.

    Args:
        model: the trained network (left untouched); the teacher of every fine-tuning.
        train_data: labelled training set; ``val_size`` items of it (seeded) are held out for the floor, and
            ``calib_samples`` of the rest calibrate each try (no labels).
        example_inputs: one batch of inputs (shapes for the search and the score).
        min_accuracy: the floor, in % on the validation split.
        out_dir: the run's folder (state, each try, the final model, report, plot).
        rules: score rules, see :func:`factorch.score`.
        methods: the methods the search may use per layer (default: every searchable registered method).
        epochs: training epochs in all (the tries share them).
        epochs_per_try: distillation epochs of each try.
        test_data: evaluated once, on the chosen model and the dense one, at the end.
        val_data: the items of ``train_data`` without augmentation (same order), to validate and calibrate on.
        val_size: validation items held out of ``train_data``.
        reference_accuracy: the dense model's accuracy on unseen data as published (e.g. its model card),
            when it was trained on the validation items too: the validation floor is raised by the dense
            model's gap (see the module docstring). ``None``: the floor is ``min_accuracy`` on validation.
        calib_samples: calibration inputs for each search.
        first: the first target, as a fraction of the dense model's score.
        step: how much lower each next target is while tries keep the floor.
        seed: seeds the split, the calibration subset and every fine-tuning.
        resume: continue the run in ``out_dir`` (an interrupted try resumes from its last checkpoint).
        show_progress: progress bars.
        auto_options: extra :class:`AutoConfig` fields (e.g. ``{"calib_samples": 256, "polish": 50}``).
        bits: quantize every try after its factorization search at these weight (and activation) bits (see the
            module docstring); ``methods`` then defaults to the factorization methods whose chains keep their
            accuracy at those bits (``low_bit_stages``).
        edge_bits: the bits of the first conv and the final classifier when ``bits`` is given.
        lr: the distillation's initial learning rate; ``None``: 0.01, or ``QUANTIZED_LR`` with ``bits`` (a
            resnet20 factorized and quantized at W4A4, 81.6 % before training, fell to 11 % after an epoch on
            4,000 images at 0.01 and rose to 88.5 % at 0.001).
        structure: how each try makes the network smaller before any quantization: ``"factorize"`` (the
            ``AutoConfig`` search over ``methods``) or ``"channels"`` (structured pruning: whole channels
            removed, the same share from every channel group, :class:`~factorch.ChannelPruneConfig` with
            ``allocation="uniform"``, to the largest MACs fraction whose model, quantized at ``bits``, meets
            the try's score; the pruned layers refitted on the calibration inputs). See the module docstring.
        float_epochs: with ``bits``, the first this many of each try's ``epochs_per_try`` distil the network
            before it is quantized (at lr 0.01), the rest after (at ``lr``): the structure recovers in float,
            then the quantized network trains.

    Returns:
        A :class:`ChallengeResult` (also written as ``report.md`` / ``report.json``, the chosen model as
        ``final/``, the tries as ``accuracy_vs_score.png``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rules_obj = resolve_rules(rules)
    bits = _check_bits(bits, edge_bits)
    if methods is None:
        methods = [m for m in list_methods(searchable=True) if bits is None or (_factorizes(m) and _low_bit(m, bits))]
    methods = tuple(methods)
    if bits is not None and not all(_factorizes(m) for m in methods):
        raise ValueError(
            f"challenge(bits=...) searches factorization ranks and then quantizes every layer; methods must be "
            f"factorization methods, got {[m for m in methods if not _factorizes(m)]}"
        )
    for name, value in (("epochs", epochs), ("epochs_per_try", epochs_per_try)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"challenge({name}=...) must be an int >= 1, got {value!r}")
    if epochs_per_try > epochs:
        raise ValueError(f"epochs_per_try ({epochs_per_try}) exceeds the epochs budget ({epochs})")
    if structure not in STRUCTURES:
        raise ValueError(f"challenge(structure=...) must be one of {', '.join(STRUCTURES)}, got {structure!r}")
    if isinstance(float_epochs, bool) or not isinstance(float_epochs, int) or not 0 <= float_epochs < epochs_per_try:
        raise ValueError(
            f"challenge(float_epochs=...) must be an int in [0, epochs_per_try={epochs_per_try}), got {float_epochs!r}"
        )
    if float_epochs and bits is None:
        raise ValueError("challenge(float_epochs=...) splits each try around its quantization: it needs bits=...")
    if reference_accuracy is not None and not 0 < reference_accuracy <= 100:
        raise ValueError(f"reference_accuracy must be a percentage in (0, 100], got {reference_accuracy!r}")
    if not 0 < first < 1 or not 0 < step < 1:
        raise ValueError(f"first and step must be fractions in (0, 1), got {first} and {step}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "version": STATE_VERSION,
        "rules": rules_obj.name,
        "min_accuracy": float(min_accuracy),
        "methods": list(methods),
        "epochs": epochs,
        "epochs_per_try": epochs_per_try,
        "val_size": val_size,
        "reference_accuracy": None if reference_accuracy is None else float(reference_accuracy),
        "calib_samples": calib_samples,
        "first": first,
        "step": step,
        "seed": seed,
        "auto_options": auto_options or {},
    }
    if bits is not None:  # only then, so that the runs of earlier versions keep their settings
        settings["bits"], settings["edge_bits"] = list(bits), int(edge_bits)
    if lr is not None or bits is not None:
        settings["lr"] = float(lr if lr is not None else QUANTIZED_LR)
    if structure != "factorize" or float_epochs:
        settings["structure"], settings["float_epochs"] = structure, float_epochs
    state_path = out / STATE_FILE
    state = {"settings": settings, "tries": []}
    if state_path.is_file():
        if not resume:
            raise FileExistsError(f"{out} already holds a challenge run; pass resume=True or another out_dir")
        state = json.loads(state_path.read_text())
        if state.get("settings") != settings:
            raise ValueError(
                f"{state_path} is a run with other settings ({state.get('settings')}); use another out_dir"
            )
    dense = copy.deepcopy(model).eval()
    train, val, train_items = validation_split(train_data, val_size, seed, val_data)
    gen = torch.Generator().manual_seed(seed)
    source = val_data if val_data is not None else train_data
    picks = torch.randperm(len(train_items), generator=gen)[:calib_samples].tolist()
    calib = torch.stack([source[train_items[i]][0] for i in picks])
    inputs = example_inputs[:1]
    dense_score = score(dense, inputs, rules=rules_obj).score
    dense_val = float(evaluate(dense, val, show_progress=False)["accuracy"])
    floor = val_floor(min_accuracy, dense_val, reference_accuracy)
    tries = [Try(**t) for t in state["tries"]]
    n_tries = epochs // epochs_per_try
    with progress_bar("challenge tries", n_tries, enabled=show_progress) as advance:
        advance(len(tries))
        while len(tries) < n_tries:
            target = next_target(tries, floor, dense_score, first, step)
            tries.append(_one_try(dense, train, val, calib, inputs, target, len(tries), out, settings, rules_obj,
                                  show_progress))  # fmt: skip
            state["tries"] = [asdict(t) for t in tries]
            _write_state(state_path, state)
            advance()
    kept = [i for i, t in enumerate(tries) if _passes(t, floor)]
    best = min(kept, key=lambda i: (tries[i].score, -tries[i].val_accuracy)) if kept else None
    chosen = dense if best is None else load(out / tries[best].folder, base_model=copy.deepcopy(model))
    result = ChallengeResult(rules_obj.name, float(min_accuracy), dense_score, dense_val, tries, best, chosen,
                             reference_accuracy=settings["reference_accuracy"])  # fmt: skip
    if test_data is not None:
        result.test_accuracy = float(evaluate(chosen, test_data, show_progress=False)["accuracy"])
        result.dense_test_accuracy = float(evaluate(dense, test_data, show_progress=False)["accuracy"])
    save(chosen, out / "final")
    (out / "report.md").write_text(result.to_markdown())
    (out / "report.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    plot_accuracy_vs_score(result, out / "accuracy_vs_score.png")
    return result


def _check_bits(bits, edge_bits: int) -> tuple[int, int] | None:
    if bits is None:
        return None
    pair = (bits, bits) if isinstance(bits, int) else tuple(bits)
    if len(pair) != 2:
        raise ValueError(f"challenge(bits=...) takes an int or a (weight_bits, act_bits) pair, got {bits!r}")
    for value in (*pair, edge_bits):
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8:
            raise ValueError(f"challenge(bits=..., edge_bits=...) take bit widths 2..8, got {bits!r}, {edge_bits!r}")
    return int(pair[0]), int(pair[1])


def _factorizes(method: str) -> bool:
    return issubclass(get_method(method).config, FactorizationConfig)


def _low_bit(method: str, bits: tuple[int, int]) -> bool:
    """Whether ``method``'s chains keep their accuracy with stages at ``bits`` (``low_bit_stages``)."""
    return min(bits) > 4 or all(getattr(cls, "low_bit_stages", True) for cls in get_method(method).layers.values())


def quantize_plan(model: nn.Module, inputs: Tensor, bits: tuple[int, int], edge_bits: int) -> Plan:
    """Every layer at ``bits`` (weights, activations), the first conv and the final classifier of ``model``
    (a dense model: its layers in execution order) at ``edge_bits`` (a key that also covers the stages of that
    layer once factorized); layers the forward pass never runs stay as they are."""
    order = {n: i for i, n in enumerate(trace_layers(model, (inputs,)))}
    names = [n for n, _ in candidate_layers(model)]
    used = sorted((n for n in names if n in order), key=order.__getitem__)
    edges = edge_layers(used, model)
    layers: dict[str, Any] = {"_default": QuantConfig(weight_bits=bits[0], act_bits=bits[1])}
    layers.update({n: QuantConfig(weight_bits=edge_bits, act_bits=edge_bits) for n in sorted(edges)})
    layers.update({n: None for n in names if n not in order})  # never run: no activations to calibrate
    return Plan(layers)


def _quantization_ratio(dense, calib, inputs, plan, rules) -> float:
    """How much quantizing by ``plan`` lowers the dense model's score (what a factorized model will get)."""
    quantized, _ = compress(dense, plan, example_inputs=inputs, calib_data=calib)
    return score(quantized, inputs, rules=rules).score / score(dense, inputs, rules=rules).score


STRUCTURES = ("factorize", "channels")
FLOAT_LR = 0.01  # float_epochs: the learning rate of the distillation before quantizing
QUANTIZED_LR = 0.001  # bits=...: the distillation's learning rate (see challenge's lr)
QUANTIZED_TOLERANCE = 1.01  # bits=...: a built model within 1 % over the target is kept
QUANTIZED_CORRECTIONS = 2  # bits=...: searches again with a corrected float target, at most this often


def _channels_model(dense, calib, inputs, target, settings, rules) -> tuple[nn.Module | None, str]:
    """The uniformly channel-pruned ``dense`` at the largest MACs fraction whose model (quantized at the
    settings' bits, when given) scores at most ``target``, refitted on ``calib``; ``(None, why)`` when even
    the smallest fraction tried does not."""
    bits = settings.get("bits")

    def pruned(fraction: float, refit: bool) -> nn.Module:
        config = ChannelPruneConfig(f"macs={fraction:.6g}", allocation="uniform")
        refit_with = CalibrationConfig(n_samples=len(calib), progress=False) if refit else None
        return compress(dense, config, example_inputs=inputs, calib_data=calib, calibrate=refit_with)[0]

    def scored(fraction: float) -> float:
        model = pruned(fraction, refit=False)
        if bits:
            plan = quantize_plan(model, inputs, tuple(bits), settings["edge_bits"])
            model = compress(model, plan, example_inputs=inputs, calib_data=calib[:CHANNELS_SCORE_SAMPLES])[0]
        return score(model, inputs, rules=rules).score

    def fraction_of(share: float) -> float:  # bisect in log-MACs: fractions from 1 down to CHANNELS_LEAST
        return CHANNELS_LEAST ** (1 - share)

    found = largest_feasible(lambda share: scored(fraction_of(share)), lambda s: s <= target, steps=CHANNELS_STEPS)
    if found is None:
        return None, f"channels pruned to macs={CHANNELS_LEAST:g} still score above {target:.6g}"
    return pruned(fraction_of(found[0]), refit=True), ""


CHANNELS_LEAST = 0.02  # structure="channels": the smallest MACs fraction tried
CHANNELS_STEPS = 10  # its bisection steps (in log-MACs: about 4 % apart at the end)
CHANNELS_SCORE_SAMPLES = 64  # inputs that set the activation ranges of a model built only to be scored


def _one_try(dense, train, val, calib, inputs, target, index, out, settings, rules, show_progress) -> Try:
    folder = f"try-{index}"
    if settings.get("structure") == "channels":
        return _channels_try(dense, train, val, calib, inputs, target, folder, out, settings, rules, show_progress)
    options = {"calib_samples": settings["calib_samples"], "progress": show_progress, **settings["auto_options"]}
    steps: list[Any] = []
    search_target = target
    if settings.get("bits"):
        plan = quantize_plan(dense, inputs, tuple(settings["bits"]), settings["edge_bits"])
        search_target = target / _quantization_ratio(dense, calib, inputs, plan, rules)
        steps = [plan]
    for _ in range(QUANTIZED_CORRECTIONS + 1 if steps else 1):
        cfg = AutoConfig(f"score={search_target:.6g}", rules=rules, methods=settings["methods"], **options)
        try:
            factorized, _ = compress(dense, cfg, example_inputs=inputs, calib_data=calib)
            small = compress(factorized, steps[0], example_inputs=inputs, calib_data=calib)[0] if steps else factorized
        except ValueError as err:  # up front ("out of reach"), or after building (TargetUnreachableError)
            if "out of reach" not in str(err) and not isinstance(err, TargetUnreachableError):
                raise
            return Try(target, "unreachable", note=str(err).split(" (")[0])
        if not steps:
            break  # the search's own closed loop checked the score
        built = score(small, inputs, rules=rules).score
        if built <= target * QUANTIZED_TOLERANCE:
            break
        # the quantized chains keep more float overhead (biases, per-channel scales) than the dense model's
        # layers did: search again for a float score lower by the measured miss
        search_target *= target / built
    if settings.get("float_epochs"):  # distil the float factorization, then quantize it again
        small = _distil(factorized, dense, train, settings["float_epochs"], FLOAT_LR, out / folder / "finetune-float",
                        settings, show_progress)  # fmt: skip
        small, _ = compress(small, steps[0], example_inputs=inputs, calib_data=calib)
    return _finish(small, dense, train, val, inputs, target, folder, out, settings, rules, show_progress)


def _distil(model, dense, train, epochs, lr, folder, settings, show_progress) -> nn.Module:
    return finetune(model, train, teacher=dense, epochs=epochs, seed=settings["seed"], lr=lr, out_dir=folder,
                    resume=True, show_progress=show_progress)  # fmt: skip


def _finish(small, dense, train, val, inputs, target, folder, out, settings, rules, show_progress) -> Try:
    """The try's last distillation (its epochs after ``float_epochs``), saved and measured."""
    epochs = settings["epochs_per_try"] - settings.get("float_epochs", 0)
    small = _distil(small, dense, train, epochs, settings.get("lr", 0.01), out / folder / "finetune", settings,
                    show_progress)  # fmt: skip
    save(small, out / folder / "model")
    achieved = score(small, inputs, rules=rules).score
    accuracy = float(evaluate(small, val, show_progress=False)["accuracy"])
    return Try(target, "done", achieved, accuracy, settings["epochs_per_try"], f"{folder}/model")


def _channels_try(dense, train, val, calib, inputs, target, folder, out, settings, rules, show_progress) -> Try:
    """A try of ``structure="channels"``: prune (see :func:`_channels_model`), distil ``float_epochs``,
    quantize at the settings' bits, distil the rest."""
    small, why = _channels_model(dense, calib, inputs, target, settings, rules)
    if small is None:
        return Try(target, "unreachable", note=why)
    if settings.get("bits"):
        if settings.get("float_epochs"):
            small = _distil(small, dense, train, settings["float_epochs"], FLOAT_LR, out / folder / "finetune-float",
                            settings, show_progress)  # fmt: skip
        plan = quantize_plan(small, inputs, tuple(settings["bits"]), settings["edge_bits"])
        small, _ = compress(small, plan, example_inputs=inputs, calib_data=calib)
    return _finish(small, dense, train, val, inputs, target, folder, out, settings, rules, show_progress)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The ``(score, accuracy)`` points no other point beats in both (lower score, higher accuracy), by score."""
    front, best = [], -math.inf
    for s, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if a > best:
            front.append((s, a))
            best = a
    return front


def plot_accuracy_vs_score(result: ChallengeResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [(t.score, t.val_accuracy) for t in result.tries if t.status == "done"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if done:
        ax.scatter(*zip(*done), color="tab:blue", label="tries (validation)", zorder=3)
        front = pareto_front(done + [(result.dense_score, result.dense_val_accuracy)])
        ax.plot(*zip(*front), color="tab:blue", alpha=0.5, label="Pareto front")
    ax.scatter([result.dense_score], [result.dense_val_accuracy], color="black", marker="s", label="dense")
    if result.best is not None:
        t = result.tries[result.best]
        ax.scatter([t.score], [t.val_accuracy], color="tab:red", marker="*", s=160, label="chosen", zorder=4)
    ax.axhline(result.val_floor, color="tab:red", linestyle="--", label=f"floor {result.val_floor:.2f} %")
    ax.set_xscale("log")
    ax.set_xlabel(f"{result.rules} score (log)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
