"""``AutoConfig``: a whole-network goal (MACs, parameters or measured latency) instead of per-layer ranks."""

from __future__ import annotations

import numbers
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

TARGET_KINDS = ("macs", "params", "size", "latency", "score")
OBJECTIVES = ("accuracy", "kl", "output")
RUNTIMES = ("torch", "onnxruntime")
AUTO_METHODS = ("tucker2", "cp", "svd", "spatial-svd")  # the default choice; any searchable registered method
AUTO_CONFIG_VERSION = 1


@dataclass(frozen=True)
class Target:
    """``kind`` in ``macs | params | size | latency`` and the fraction of the dense model to keep (``None``: as
    small as ``max_accuracy_drop`` allows); or ``score`` and the complexity score to reach (``value``, under
    ``AutoConfig.rules``), turned into a fraction of the dense model's score by the search."""

    kind: str
    fraction: float | None
    value: float | None = None

    @staticmethod
    def parse(text: str) -> Target:
        if not isinstance(text, str):
            raise TypeError(f"target must be a string like 'macs=0.33', got {type(text).__name__}")
        kind, sep, value = text.strip().partition("=")
        kind = kind.strip().lower()
        if kind not in TARGET_KINDS:
            raise ValueError(f"target {text!r}: the kind must be one of {', '.join(TARGET_KINDS)} (e.g. 'macs=0.33')")
        if not sep:
            return Target(kind, None)
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(f"target {text!r}: {value!r} is not a number; use e.g. '{kind}=0.33'") from None
        if kind == "score":
            if not fraction > 0:
                raise ValueError(f"target {text!r}: the score must be positive, got {fraction}")
            return Target(kind, None, fraction)
        if not 0 < fraction <= 1:
            raise ValueError(f"target {text!r}: the fraction to keep must be in (0, 1], got {fraction}")
        return Target(kind, fraction)

    def __str__(self) -> str:
        if self.value is not None:
            return f"{self.kind}={self.value:g}"
        return self.kind if self.fraction is None else f"{self.kind}={self.fraction:g}"


@dataclass
class AutoConfig:
    """Choose a method and ranks for every layer to meet a whole-network target.

    For each factorizable layer and each method, candidate ranks on a grid of per-layer cost levels are
    scored by the damage they do when that layer alone is replaced (on calibration data, or by ``eval_fn``);
    a multiple-choice knapsack then picks at most one candidate per layer minimising the summed damage
    within the budget. Under a latency target every candidate layer is timed against its dense layer on the
    target runtime, and only candidates measured faster are eligible.

    Args:
        target: ``"macs=F"``, ``"params=F"`` (keep fraction ``F`` of the whole model's MACs / parameters) or
            ``"latency=F"`` (measured, this machine and runtime, at ``batch_size``). Without ``=F`` (e.g.
            ``"macs"``), the smallest model whose accuracy drop, by ``eval_fn``, is at most
            ``max_accuracy_drop`` is searched for. ``"score=S"``: a complexity score of at most ``S`` under
            ``rules`` (see :func:`factorch.score`), e.g. ``"score=0.008"``; each candidate is priced by its
            stored bits and its MACs at the widest operand's bits.
        methods: the methods to choose from, among ``tucker2``, ``cp``, ``svd``, ``spatial-svd`` and every other
            searchable registered method (``prune``: sparsity levels; ``quant``: weight and activation bit
            widths; ``kmeans``: shared-weight bits...).
        objective: the damage score: ``"accuracy"`` (``eval_fn``'s drop when given, else the KL divergence of
            the network's softmax outputs, a label-free accuracy proxy), ``"kl"`` (always the KL proxy) or
            ``"output"`` (relative squared error of the network's outputs).
        round_to: ranks are multiples of this (e.g. 8 for vector units).
        max_accuracy_drop: with ``eval_fn``, the largest allowed drop of its score (same units, e.g. points
            of accuracy). With a fixed target it is checked and reported; without one it drives the search.
        batch_size: batch size at which latency is measured and targeted.
        runtime: ``"torch"`` (eager, CPU or the model's device) or ``"onnxruntime"`` (needs the ``onnx``
            extra) for latency measurements.
        levels: per-layer cost fractions at which candidate ranks are taken for each method.
        calib_samples: calibration inputs used for the damage scores (at most; fewer if ``calib_data`` has
            fewer). KL scores on a few hundred images are noisy enough to mislead the search at strong
            compression (see benchmarks/README.md); 1024 costs about four times the scoring time of 256.
        refine: rounds of in-context re-scoring: each candidate's damage is measured again with every other
            layer replaced by its current choice, the knapsack is solved again, and the new choice is kept only
            if the whole network's damage (measured, all layers replaced at once) is lower. Single-layer damages
            add up poorly at strong compression; this corrects for their interaction. ``0``: off.
        polish: at most this many choices tried (each one whole-network measurement, or read from the cache)
            by a local search after refinement: one layer one step dearer and another as few steps cheaper as
            fit the budget, kept when the whole network's measured damage falls (see ``AutoSearch._polish``).
            Catches what summed per-layer damages miss where many layers are compressed hard; each measurement
            is one pass over the calibration inputs. ``0``: off.
        stable_cp: CP candidates are scored, and the chosen CP layers built, with one and the same fit (so the
            model built is the model the search measured): 25 ALS sweeps, then with ``True`` the stabilising
            correction of ``factorch.decompose.cp`` (term norms kept small at 1 % more weight error; slower to
            analyse, and usually less accurate before fine-tuning, but robust to heavy fine-tuning or
            quantisation). ``False`` (default): plain ALS, the more accurate model without fine-tuning.
        keep_edges: leave the first conv and the final classifier dense.
        fold_bn: fold BatchNorms into the preceding convs before analysing (exact at inference; the compressed
            convs then carry the BatchNorm's scale and shift and the BatchNorm becomes an identity). ``None``
            (default): folded for latency and score targets (a separate BatchNorm pass is time the budget
            pays for; the score rules fold BatchNorms), not for MACs / parameter targets.
        measure: measure the chosen layers' and the whole model's latency (batch 1 and ``batch_size``) and
            add it to the report (always done for latency targets).
        threads: torch threads while timing (``None``: leave as is).
        latency_repeats: timed calls per candidate layer.
        cache: reuse (and write) the on-disk sensitivity and latency tables.
        cache_dir: where the tables go; default ``$FACTORCH_CACHE`` or ``~/.cache/factorch``.
        progress: show progress bars.
        calibrate: optional calibration settings applied after building (see ``CalibrationConfig``).
        rules: the score rules of a ``score=`` target: ``"effdl"``, ``"micronet-cifar100"``,
            ``"micronet-imagenet"`` or a ``ScoreRules``.
    """

    target: str | None = None
    _: KW_ONLY
    methods: tuple[str, ...] = AUTO_METHODS
    objective: str = "accuracy"
    round_to: int = 1
    max_accuracy_drop: float | None = None
    batch_size: int = 64
    runtime: str = "torch"
    levels: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.33, 0.45, 0.6, 0.8)
    calib_samples: int = 1024
    refine: int = 1
    polish: int = 200
    stable_cp: bool = False
    keep_edges: bool = True
    fold_bn: bool | None = None
    measure: bool = True
    threads: int | None = None
    latency_repeats: int = 7
    cache: bool = True
    cache_dir: str | None = None
    progress: bool = True
    calibrate: Any = field(default=None)
    rules: Any = "effdl"

    def __post_init__(self) -> None:
        from factorch.calibrate.config import as_calibration

        self.calibrate = as_calibration(self.calibrate)
        if self.target is None and self.max_accuracy_drop is None:
            raise ValueError("AutoConfig needs a target such as 'macs=0.33', or a max_accuracy_drop")
        from factorch.complexity import resolve_rules

        resolve_rules(self.rules)  # a clear error now, not after the analysis
        if self.parsed_target.kind == "score" and self.max_accuracy_drop is not None:
            raise ValueError("AutoConfig: a score target is an absolute goal; max_accuracy_drop searches for one")
        if self.fold_bn is None:
            self.fold_bn = self.parsed_target.kind in ("latency", "score")
        elif not isinstance(self.fold_bn, bool):
            raise ValueError(f"AutoConfig(fold_bn=...) must be True, False or None, got {self.fold_bn!r}")
        if isinstance(self.methods, str):
            self.methods = (self.methods,)
        self.methods = tuple(self.methods)
        from factorch.registry import list_methods

        allowed = list_methods(searchable=True)
        if not self.methods:
            raise ValueError(f"AutoConfig(methods=...) must name at least one of {', '.join(allowed)}")
        for m in self.methods:
            if m not in allowed:
                raise ValueError(f"AutoConfig(methods=...): unknown method {m!r}; choose from {', '.join(allowed)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"AutoConfig(objective=...) must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if self.runtime not in RUNTIMES:
            raise ValueError(f"AutoConfig(runtime=...) must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if isinstance(self.polish, bool) or not isinstance(self.polish, numbers.Integral) or self.polish < 0:
            raise ValueError(f"AutoConfig(polish=...) must be an int >= 0, got {self.polish!r}")
        for name in ("round_to", "batch_size", "calib_samples", "latency_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"AutoConfig({name}=...) must be an int >= 1, got {value!r}")
        if isinstance(self.refine, bool) or not isinstance(self.refine, numbers.Integral) or self.refine < 0:
            raise ValueError(f"AutoConfig(refine=...) must be an int >= 0, got {self.refine!r}")
        if not isinstance(self.stable_cp, bool):
            raise ValueError(f"AutoConfig(stable_cp=...) must be True or False, got {self.stable_cp!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"AutoConfig(threads=...) must be None or an int >= 1, got {self.threads!r}")
        self.levels = tuple(sorted(float(v) for v in self.levels))
        if not self.levels or not all(0 < v < 1 for v in self.levels):
            raise ValueError(f"AutoConfig(levels=...) must be fractions in (0, 1), got {self.levels!r}")
        if self.max_accuracy_drop is not None and not (
            isinstance(self.max_accuracy_drop, numbers.Real) and self.max_accuracy_drop >= 0
        ):
            raise ValueError(f"AutoConfig(max_accuracy_drop=...) must be a number >= 0, got {self.max_accuracy_drop!r}")

    @property
    def parsed_target(self) -> Target:
        return Target.parse(self.target if self.target is not None else "macs")

    def to_dict(self) -> dict[str, Any]:
        body = {
            k: getattr(self, k)
            for k in (
                "target",
                "methods",
                "objective",
                "round_to",
                "max_accuracy_drop",
                "batch_size",
                "runtime",
                "levels",
                "calib_samples",
                "refine",
                "polish",
                "stable_cp",
                "keep_edges",
                "fold_bn",
            )
        }
        body["rules"] = self.rules if isinstance(self.rules, str) else self.rules.name
        body["methods"], body["levels"] = list(self.methods), list(self.levels)
        body["calibrate"] = None if self.calibrate is None else self.calibrate.to_dict()
        return {"type": "AutoConfig", "version": AUTO_CONFIG_VERSION, **body}
