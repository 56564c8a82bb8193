"""The whole-network search behind ``AutoConfig``: candidates, damage scores, knapsack, build, measure."""

from __future__ import annotations

import copy
import hashlib
import math
import platform
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from factorch.apply import dense_layer_cost, model_storage
from factorch.auto.config import AutoConfig, Target
from factorch.auto.sensitivity import (
    SENSITIVITY_VERSION,
    TableCache,
    calibration_inputs,
    damage_function,
    default_cache_dir,
    fingerprint,
)
from factorch.auto.timing import time_pair
from factorch.config import Plan, config_for_method
from factorch.cost import Cost
from factorch.layers import layer_class
from factorch.layers._spec import spec_of
from factorch.layers.base import layer_geometry
from factorch.progress import progress_bar
from factorch.rank import MACRatioRank, ParamRatioRank
from factorch.rank.knapsack import solve_mckp
from factorch.registry import NotCompressible
from factorch.report import CompressionReport
from factorch.surgery import candidate_layers, conv_bn_pairs, fold_batchnorms, get_module, trace_layers

# CP fits for the search: scoring many candidate ranks needs a cheaper fit than CPConfig's default (200 ALS
# sweeps, then the stabilising correction), and the chosen layers are built with exactly the fit that was
# scored, so the model built is the model measured (see AutoConfig(stable_cp=...)).
CP_SWEEPS = 25


def fit_options(cfg: AutoConfig) -> dict[str, dict[str, Any]]:
    """Per method, the decomposition options that candidates are both scored and built with."""
    return {"cp": {"n_iter_max": CP_SWEEPS, "stabilize": bool(cfg.stable_cp)}}


UNDERSHOOT = 0.9  # a measured result below this share of the target is built again with more budget
TIMING_VERSION = 2  # bumped when the way candidates are timed changes (2: ONNX Runtime without spinning)
_INTERPOLATED_MAX = 7  # ranks added between two scored neighbours
FILL = 0.98  # a proposal other than the knapsack optimum must use at least this share of the budget
_BUILT_BYTES = 1 << 30  # probe layers kept across analyses in one process (a sweep, plain then calibrated)
_built_cache: OrderedDict[str, nn.Module] = OrderedDict()


def _module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _remember(key: str, module: nn.Module) -> None:
    """Keep ``module`` under ``key``, least recently used ones dropped beyond ``_BUILT_BYTES``."""
    _built_cache[key] = module
    _built_cache.move_to_end(key)
    total = sum(_module_bytes(m) for m in _built_cache.values())
    while total > _BUILT_BYTES and len(_built_cache) > 1:
        _, dropped = _built_cache.popitem(last=False)
        total -= _module_bytes(dropped)


@dataclass
class Candidate:
    method: str
    ranks: tuple[int, ...]
    params: int
    macs: int
    damage: float = math.nan  # the score used by the solver (non-increasing in rank per method)
    raw_damage: float = math.nan  # the score as measured
    measured: bool = True  # False: damage interpolated between two scored neighbours
    latency_s: float | None = None
    size: int = 0  # bytes stored compactly (Cost.size_bytes)

    @property
    def key(self) -> str:
        return f"{self.method}|{'x'.join(map(str, self.ranks))}"


@dataclass
class LayerChoices:
    name: str
    layer: nn.Module
    input_shape: tuple[int, ...]
    input_size: tuple[int, ...] | None
    per_position: int
    dense_params: int
    dense_macs: int
    dense_size: int = 0
    candidates: list[Candidate] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    dense_latency_s: float | None = None


def _round_ranks(ranks: tuple[int, ...], max_ranks: tuple[int, ...], step: int) -> tuple[int, ...]:
    if step == 1:
        return ranks
    return tuple(
        m if m <= step else max(step, min((r // step) * step, (m // step) * step)) for r, m in zip(ranks, max_ranks)
    )


def _cost(kind: str, c: Candidate) -> float:
    """A candidate's cost in a budget's units (``params`` counts non-zero parameters)."""
    return float({"latency": c.latency_s, "params": c.params, "size": c.size}.get(kind, c.macs))


def _dense_cost(kind: str, lc: LayerChoices) -> float:
    return float(
        {"latency": lc.dense_latency_s, "params": lc.dense_params, "size": lc.dense_size}.get(kind, lc.dense_macs)
    )


def _cheaper(kind: str, cost: Cost, lc: LayerChoices) -> bool:
    """A candidate worth offering: cheaper than the dense layer in the budget's units, dearer in none.

    Under a latency budget, MACs stand in until the candidates are timed.
    """
    unit = "macs" if kind == "latency" else kind
    dense = {"macs": lc.dense_macs, "params": lc.dense_params, "size": lc.dense_size}
    return cost.of(unit) < dense[unit] and cost.macs <= lc.dense_macs and cost.nonzero_params <= lc.dense_params


class AutoSearch:
    """One analysis of a model under an :class:`AutoConfig`; :meth:`solve` may then be called per target."""

    def __init__(
        self,
        model: nn.Module,
        cfg: AutoConfig,
        inputs: tuple[Tensor, ...],
        calib: Tensor | None,
        eval_fn: Callable[[nn.Module], float] | None,
    ) -> None:
        self.cfg, self.inputs, self.calib, self.eval_fn = cfg, inputs, calib, eval_fn
        self.kind = cfg.parsed_target.kind
        self.model = copy.deepcopy(model).eval()
        if cfg.fold_bn:
            fold_batchnorms(self.model, conv_bn_pairs(self.model))
        from factorch.profiling import profile

        self.totals_before = self._totals(model, profile(model, inputs))
        self.totals_work = self._totals(self.model, profile(self.model, inputs))
        self.layers: list[LayerChoices] = []
        self.skipped: dict[str, str] = {}
        self.stats: dict[str, Any] = {}
        self._problems: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
        self._fingerprints: dict[str, str] = {}
        self._damage_fn: Callable[..., float] | None = None
        self._table: TableCache | None = None
        self.fit_options = fit_options(cfg)
        self._enumerate()

    @staticmethod
    def _totals(model: nn.Module, prof) -> dict[str, float]:
        store = model_storage(model)
        return {"params": store["nonzero_params"], "macs": prof.total_macs, "size": store["size_bytes"]}

    # -- candidates -------------------------------------------------------------------------------------
    def _option_cost(self, lc: LayerChoices, method: str, ranks: tuple[int, ...]) -> Cost:
        _, options = self._problems[(lc.name, method)]
        cls = layer_class(method, lc.layer)
        return cls.option_cost(spec_of(lc.layer), ranks, lc.input_size, **options).scaled_macs(lc.per_position)

    def _candidate(self, lc: LayerChoices, method: str, ranks: tuple[int, ...], cost: Cost, **kw) -> Candidate:
        return Candidate(method, ranks, cost.nonzero_params, cost.macs, size=cost.size_bytes, **kw)

    def _enumerate(self) -> None:
        cfg = self.cfg
        shapes = trace_layers(self.model, self.inputs)
        layers = [(n, m) for n, m in candidate_layers(self.model) if n in shapes]
        layers.sort(key=lambda item: list(shapes).index(item[0]))
        edges = set()
        if cfg.keep_edges:
            convs = [n for n, m in layers if isinstance(m, (nn.Conv1d, nn.Conv2d))]
            linears = [n for n, m in layers if isinstance(m, nn.Linear)]
            edges = set(convs[:1] + linears[-1:])
        selector = ParamRatioRank if self.kind in ("params", "size") else MACRatioRank
        for name, layer in layers:
            if name in edges:
                self.skipped[name] = (
                    "first conv / final classifier kept dense (AutoConfig(keep_edges=False) to include)"
                )
                continue
            input_size, per_position = layer_geometry(layer, shapes[name])
            dense = dense_layer_cost(layer, input_size, per_position)
            lc = LayerChoices(
                name, layer, shapes[name], input_size, per_position, dense.nonzero_params, dense.macs, dense.size_bytes
            )
            for method in cfg.methods:
                try:
                    cls = layer_class(method, layer)
                    options = {**config_for_method(method).options(), **self.fit_options.get(method, {})}
                    problem = cls.rank_problem(layer, input_size=input_size, name=name, **options)
                except NotCompressible as err:
                    lc.reasons.append(f"{method}: {err}")
                    continue
                self._problems[(name, method)] = (problem, options)
                seen: dict[tuple[int, ...], Candidate] = {}
                for level in cfg.levels:
                    ranks = _round_ranks(selector(level)(problem), problem.max_ranks, cfg.round_to)
                    if ranks in seen:
                        continue
                    cost = self._option_cost(lc, method, ranks)
                    if _cheaper(self.kind, cost, lc):
                        seen[ranks] = self._candidate(lc, method, ranks, cost)
                if not seen:
                    lc.reasons.append(f"{method}: no option on the grid is cheaper than the dense layer")
                lc.candidates.extend(sorted(seen.values(), key=lambda c: (c.macs, c.params)))
            if lc.candidates:
                self.layers.append(lc)
            else:
                self.skipped[name] = "no candidate: " + "; ".join(lc.reasons)

    def _cache_path(self, kind: str, key: str) -> Path | None:
        if not self.cfg.cache:
            return None
        base = default_cache_dir() if self.cfg.cache_dir is None else Path(self.cfg.cache_dir)
        return base / kind / f"{key[:40]}.json"

    # -- damage -----------------------------------------------------------------------------------------
    def _damage(self) -> Callable[..., float]:
        if self._damage_fn is None:
            self._damage_fn = damage_function(self.model, self.calib, self.cfg.objective, self.eval_fn)
        return self._damage_fn

    def _replacement(self, lc: LayerChoices, c: Candidate) -> nn.Module:
        """The candidate's factorized layer, as :meth:`plan` builds it, made once per process.

        Built layers are kept by a hash of the dense layer's weights, the method, ranks and options, so the
        refinement rounds of a later analysis of the same model (another target of a sweep, the calibrated
        run after the plain one) reuse them instead of running the decompositions again.
        """
        if lc.name not in self._fingerprints:
            devices = sorted({str(t.device) for t in lc.layer.parameters()})
            self._fingerprints[lc.name] = fingerprint(lc.layer, None, {"layer": repr(lc.layer), "devices": devices})
        _, opts = self._problems[(lc.name, c.method)]
        key = f"{self._fingerprints[lc.name]}|{c.key}|{lc.input_size}|{sorted(opts.items())}"
        if key in _built_cache:
            _built_cache.move_to_end(key)
            return _built_cache[key]
        cls = layer_class(c.method, lc.layer)
        built = cls.from_dense(lc.layer, c.ranks, input_size=lc.input_size, **opts).eval()
        _remember(key, built)
        return built

    def score(self) -> None:
        cfg = self.cfg
        settings = {
            "version": SENSITIVITY_VERSION,
            "objective": cfg.objective,
            "fold_bn": cfg.fold_bn,
            "eval_fn": None if self.eval_fn is None else getattr(self.eval_fn, "__qualname__", repr(self.eval_fn)),
            "probe": self.fit_options,
        }
        path = self._cache_path("sensitivity", fingerprint(self.model, self.calib, settings))
        table = self._table = TableCache(path, settings)
        todo = [(lc, c) for lc in self.layers for c in lc.candidates if table.get(f"{lc.name}|{c.key}") is None]
        self.stats.update(scored=len(todo), cached=sum(len(lc.candidates) for lc in self.layers) - len(todo))
        self.stats["cache_file"] = str(path) if path else None
        if todo:
            damage = self._damage()
            with progress_bar("scoring candidates", len(todo), enabled=cfg.progress) as advance:
                current = None
                for lc, c in todo:
                    if current is not None and current != lc.name:
                        table.flush()  # an interrupted analysis resumes from the last finished layer
                    current = lc.name
                    table.put(f"{lc.name}|{c.key}", damage(lc.layer, self._replacement(lc, c)))
                    advance()
            table.flush()
        self._load_scores()

    def _load_scores(self) -> None:
        """Single-layer scores from the table onto the measured candidates, then :meth:`_settle`."""
        for lc in self.layers:
            for c in lc.candidates:
                if c.measured:
                    c.raw_damage = float(self._table.get(f"{lc.name}|{c.key}"))
        self._settle()

    def _settle(self) -> None:
        """Scores to solver damages: non-increasing in rank per method, then interpolated ranks added."""
        for lc in self.layers:
            lc.candidates = [c for c in lc.candidates if c.measured]
            # more rank never hurts in expectation: a score above that of a smaller rank is noise
            for method in {c.method for c in lc.candidates}:
                lowest = math.inf
                for c in sorted((c for c in lc.candidates if c.method == method), key=lambda c: (c.macs, c.params)):
                    lowest = min(lowest, c.raw_damage)
                    c.damage = lowest
        if self.kind != "latency":
            self._interpolate()

    def _joint(self, choice: dict[str, Candidate | None]) -> float:
        """The measured damage of ``choice`` with all its layers replaced at once (cached like the scores)."""
        key = f"joint|{_choice_tag(choice)}"
        if self._table.get(key) is None:
            context = self._context(choice)
            if not context:
                return 0.0
            layer, replacement = next(iter(context.items()))
            self._table.put(key, self._damage()(layer, replacement, context))
            self._table.flush()
        return float(self._table.get(key))

    def _total_cost(self, choice: dict[str, Candidate | None], fixed: float) -> float:
        return fixed + sum(
            _cost(self.kind, c) if c is not None else _dense_cost(self.kind, lc)
            for lc in self.layers
            for c in [choice[lc.name]]
        )

    def _context(self, choice: dict[str, Candidate | None]) -> dict[nn.Module, nn.Module]:
        return {lc.layer: self._replacement(lc, choice[lc.name]) for lc in self.layers if choice.get(lc.name)}

    def choose(self, fraction: float, total: float, fixed: float) -> tuple[dict[str, Candidate | None], float]:
        """The choice to build: proposals measured together, all their layers replaced at once.

        Proposals: the knapsack optimum of summed single-layer damages (:meth:`solve`), the "balanced" optimum
        of summed squared damages, the minimax choice (:meth:`solve_minimax`), with several methods the
        knapsack optimum of each method alone, uniform compression with each method (:meth:`solve_uniform`),
        then ``cfg.refine`` rounds of in-context re-scoring from the
        best so far: every measured candidate of every layer is scored again with the other layers replaced by
        that choice (as the increase over the layer left dense in the same context) and the knapsack is solved
        on those damages. Single-layer damages add up poorly at strong
        compression; measuring the whole choice on the calibration data settles it. Returns the proposal with
        the least measured damage and its predicted damage; ``self.stats["proposals"]`` lists them all.
        """
        self._load_scores()  # a previous call's refinement left in-context damages on the candidates
        proposals = [("knapsack", *self.solve(fraction, total, fixed))]
        others = [("balanced", self.solve(fraction, total, fixed, power=2.0))]
        others.append(("minimax", self.solve_minimax(fraction, total, fixed)))
        methods = sorted({c.method for lc in self.layers for c in lc.candidates})
        for method in methods if len(methods) > 1 else ():  # mixing methods is a choice to check, not a given
            try:
                others.append((f"knapsack {method} only", self.solve(fraction, total, fixed, method=method)))
            except ValueError:  # this method alone cannot reach the target
                pass
        # the naive baseline is a proposal too: where it fills the budget (FILL), the built choice is never
        # measured worse than it on the calibration data
        others.extend((f"uniform {method}", self.solve_uniform(fraction, total, fixed, method)) for method in methods)
        seen = {_choice_tag(proposals[0][1])}
        for name, found in others:
            if found is None or self._total_cost(found[0], fixed) < FILL * fraction * total:
                continue
            if (tag := _choice_tag(found[0])) not in seen:
                seen.add(tag)
                proposals.append((name, *found))
        measured = [(self._joint(choice), name, choice, pred) for name, choice, pred in proposals]
        best = min(measured, key=lambda m: m[0])
        table = self._table
        for round_ in range(1, self.cfg.refine + 1):
            tag = _choice_tag(best[2])
            context = self._context(best[2])
            todo = [
                (lc, c)
                for lc in self.layers
                for c in [None, *(c for c in lc.candidates if c.measured)]
                if table.get(_ctx_key(tag, lc, c)) is None
            ]
            self.stats["refined"] = self.stats.get("refined", 0) + len(todo)
            if todo:
                damage = self._damage()
                with progress_bar(f"refining (round {round_})", len(todo), enabled=self.cfg.progress) as advance:
                    for lc, c in todo:
                        replacement = None if c is None else self._replacement(lc, c)
                        table.put(_ctx_key(tag, lc, c), damage(lc.layer, replacement, context))
                        advance()
                table.flush()
            for lc in self.layers:
                base = float(table.get(_ctx_key(tag, lc, None)))
                for c in lc.candidates:
                    if c.measured:
                        c.raw_damage = max(0.0, float(table.get(_ctx_key(tag, lc, c))) - base)
            self._settle()
            choice, predicted = self.solve(fraction, total, fixed)
            if self._total_cost(choice, fixed) < FILL * fraction * total:
                break
            measured.append((self._joint(choice), f"refined {round_}", choice, predicted))
            if not measured[-1][0] < best[0]:
                break
            best = measured[-1]
        if self.cfg.polish:
            polished = self._polish(best[2], fraction, total, fixed)
            if polished is not None:
                best = (*polished, best[3])
                measured.append(best)
        self.stats["proposals"] = [{"proposal": m[1], "joint_damage": m[0], "predicted_damage": m[3]} for m in measured]
        self.stats["chosen"] = best[1]
        return best[2], best[3]

    def _polish(
        self, start: dict[str, Candidate | None], fraction: float, total: float, fixed: float
    ) -> tuple[float, str, dict[str, Candidate | None]] | None:
        """Local search on the measured whole-network damage, from ``start``, at most ``cfg.polish`` choices
        tried: a move takes one layer one step dearer on its ladder of options (dense, then its
        candidates from the costliest down) and, unless the budget allows it as is, another layer as few steps
        cheaper as bring the choice within the budget; the first move that lowers the measured damage is kept,
        until none does. Moves are tried in the order of their predicted change (the candidates' current
        damages, in-context after refinement). Only choices within ``[FILL, 1] * budget`` (or dearer than the
        current one) are considered. Returns ``(damage, "polished (n moves)", choice)``, or ``None`` if no
        move helped.

        Summed per-layer damages, even re-scored in context, miss how the errors of many strongly compressed
        layers compound; measuring whole choices does not (see benchmarks/README.md, auto_budget).
        """
        limit, low = fraction * total, FILL * fraction * total
        ladders: dict[str, list[Candidate | None]] = {}
        for lc in self.layers:
            # measured candidates, and interpolated ranks of the methods whose layers are cheap to build
            options = [c for c in lc.candidates if c.measured or c.method != "cp"]
            if (c := start[lc.name]) is not None and all(o.key != c.key for o in options):
                options.append(c)
            ladders[lc.name] = [None, *sorted(options, key=lambda c: -_cost(self.kind, c))]

        def position(choice: dict[str, Candidate | None], name: str) -> int:
            c = choice[name]
            return 0 if c is None else next(i for i, o in enumerate(ladders[name]) if o is not None and o.key == c.key)

        def damage_of(c: Candidate | None) -> float:
            return 0.0 if c is None else c.damage

        current, value = dict(start), self._joint(start)
        # every choice tried counts against the cap, measured now or read from the table, so a repeat run (all
        # read) retraces the first run's path and stops where it stopped; a choice already tried is not retried
        tried, evals, fresh, moves_kept = {_choice_tag(start)}, 0, 0, 0
        names = [lc.name for lc in self.layers]
        with progress_bar("polishing", self.cfg.polish, enabled=self.cfg.progress) as advance:
            while evals < self.cfg.polish:
                moves, spent = [], self._total_cost(current, fixed)
                for b in names:  # b one step dearer
                    ib = position(current, b)
                    if ib == 0:
                        continue
                    dearer = ladders[b][ib - 1]
                    gain = damage_of(dearer) - damage_of(current[b])
                    for a in [None, *names]:  # a cheaper, by as few steps as fit the budget (None: as is)
                        cand = dict(current)
                        cand[b] = dearer
                        cost = self._total_cost(cand, fixed)
                        if a is not None:
                            if a == b:
                                continue
                            ia = position(current, a)
                            for step in range(ia + 1, len(ladders[a])):
                                cand[a] = ladders[a][step]
                                cost = self._total_cost(cand, fixed)
                                if cost <= limit:
                                    break
                            if cand[a] is current[a]:  # a is at its cheapest already
                                continue
                        if cost <= limit and (cost >= low or cost >= spent) and _choice_tag(cand) not in tried:
                            delta = gain + (0.0 if a is None else damage_of(cand[a]) - damage_of(current[a]))
                            moves.append((delta, len(moves), cand))
                moves.sort(key=lambda m: m[:2])
                improved = False
                for _, _, cand in moves:
                    if evals >= self.cfg.polish:
                        break
                    tag = _choice_tag(cand)
                    if tag in tried:  # reached by two moves of this round
                        continue
                    tried.add(tag)
                    fresh += self._table.get(f"joint|{tag}") is None
                    measured = self._joint(cand)
                    evals += 1
                    advance()
                    if measured < value:
                        current, value, improved = cand, measured, True
                        moves_kept += 1
                        break
                if not improved:
                    break
        self.stats["polished"] = {"tried": evals, "measurements": fresh, "moves": moves_kept}
        return (value, f"polished ({moves_kept} moves)", current) if moves_kept else None

    def _interpolate(self) -> None:
        """Add ranks between scored neighbours (damage interpolated in cost) so budgets can be met closely.

        Above the highest scored level the path continues towards full rank, where the exact methods (all
        but CP) reproduce the layer (damage 0), as long as the factorized layer stays smaller than dense.
        """
        step = self.cfg.round_to
        for lc in self.layers:
            extra = []
            for method in {c.method for c in lc.candidates}:
                problem, _ = self._problems[(lc.name, method)]
                scored = [c for c in lc.candidates if c.method == method]
                known = {c.ranks for c in scored}
                anchors = list(scored)
                if (
                    getattr(layer_class(method, lc.layer), "exact_at_full_rank", True)
                    and problem.max_ranks not in known
                ):
                    cost = self._option_cost(lc, method, problem.max_ranks)
                    anchors.append(self._candidate(lc, method, problem.max_ranks, cost, damage=0.0))
                for a, b in zip(anchors, anchors[1:]):
                    gap = max(abs(rb - ra) for ra, rb in zip(a.ranks, b.ranks))
                    n = min(gap - 1, _INTERPOLATED_MAX)
                    for i in range(1, n + 1):
                        t = i / (n + 1)
                        ranks = tuple(round(ra + t * (rb - ra)) for ra, rb in zip(a.ranks, b.ranks))
                        ranks = _round_ranks(ranks, problem.max_ranks, step)
                        if ranks in known:
                            continue
                        known.add(ranks)
                        full = self._option_cost(lc, method, ranks)
                        if not _cheaper(self.kind, full, lc):
                            continue
                        ca, cb = _cost(self.kind, a), _cost(self.kind, b)
                        c = self._candidate(lc, method, ranks, full, measured=False)
                        cost = _cost(self.kind, c)
                        if not ca < cost < cb:
                            continue
                        w = (cost - ca) / (cb - ca)
                        c.damage = (1 - w) * a.damage + w * b.damage
                        extra.append(c)
            lc.candidates = sorted(lc.candidates + extra, key=lambda c: (c.method, c.macs, c.params))

    # -- latency ----------------------------------------------------------------------------------------
    def measure_candidates(self) -> None:
        cfg = self.cfg
        settings = {
            "runtime": cfg.runtime,
            "batch_size": cfg.batch_size,
            "threads": cfg.threads or torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "repeats": cfg.latency_repeats,
            "timing": TIMING_VERSION,
        }
        table = TableCache(self._cache_path("latency", fingerprint(nn.Identity(), None, settings)), settings)

        def entry(lc: LayerChoices, c: Candidate) -> str:
            return f"{spec_of(lc.layer)!r}|{tuple(lc.input_shape[1:])}|{c.key}"

        todo = [(lc, c) for lc in self.layers for c in lc.candidates if table.get(entry(lc, c)) is None]
        self.stats.update(timed=len(todo))
        with progress_bar("timing candidates", len(todo), enabled=cfg.progress) as advance:
            for lc, c in todo:
                dense = _random_like(spec_of(lc.layer).dense())
                cls = layer_class(c.method, lc.layer)
                _, options = self._problems[(lc.name, c.method)]
                cand = _random_like(cls.from_dense(lc.layer, c.ranks, decompose_weights=False, **options))
                x = torch.randn((1, *lc.input_shape[1:]), dtype=spec_of(lc.layer).torch_dtype)
                if isinstance(lc.layer, nn.Embedding):
                    x = torch.randint(0, lc.layer.num_embeddings, (1, *lc.input_shape[1:]))
                t = time_pair(
                    dense,
                    cand,
                    (x,),
                    batch_sizes=(cfg.batch_size,),
                    runtime=cfg.runtime,
                    repeats=cfg.latency_repeats,
                    threads=cfg.threads,
                )[cfg.batch_size]
                table.put(entry(lc, c), list(t))
                advance()
                if len(table.entries) % 8 == 0:
                    table.flush()
        table.flush()
        for lc in self.layers:
            denses = []
            for c in lc.candidates:
                d, s = table.get(entry(lc, c))
                denses.append(d)
                c.latency_s = s
            lc.dense_latency_s = sorted(denses)[len(denses) // 2]
            for c in lc.candidates:  # express every candidate against the layer's one dense time
                c.latency_s = c.latency_s / table.get(entry(lc, c))[0] * lc.dense_latency_s
            # never choose what is not measured faster than the dense layer
            lc.reasons += [
                f"{c.key}: measured not faster than dense" for c in lc.candidates if c.latency_s >= lc.dense_latency_s
            ]
            lc.candidates = [c for c in lc.candidates if c.latency_s < lc.dense_latency_s]

    # -- solve ------------------------------------------------------------------------------------------
    def reference_total(self, model_latency_s: float | None = None) -> tuple[float, float]:
        """``(total cost of the dense model, cost outside the candidate layers)`` in the target's units."""
        if self.kind == "latency":  # model_latency_s: the analysed model's time
            inside = sum(lc.dense_latency_s for lc in self.layers)
            return model_latency_s, max(0.0, model_latency_s - inside)
        inside = sum(_dense_cost(self.kind, lc) for lc in self.layers)
        return float(self.totals_before[self.kind]), float(self.totals_work[self.kind]) - inside

    def floor(self, total: float, fixed: float) -> float:
        """The smallest reachable fraction: every layer at its cheapest option."""
        cheapest = [
            min([_dense_cost(self.kind, lc)] + [_cost(self.kind, c) for c in lc.candidates]) for lc in self.layers
        ]
        return (fixed + sum(cheapest)) / total

    def _options(
        self, method: str | None = None
    ) -> tuple[list[list[Candidate | None]], list[list[float]], list[list[float]]]:
        """Per layer: its options (``None`` = dense first, then the candidates of ``method`` or of all methods),
        their costs and their damages."""
        options = [[None, *(c for c in lc.candidates if method in (None, c.method))] for lc in self.layers]
        costs = [
            [_dense_cost(self.kind, lc)] + [_cost(self.kind, c) for c in o[1:]] for lc, o in zip(self.layers, options)
        ]
        damages = [[0.0] + [c.damage for c in o[1:]] for o in options]
        return options, costs, damages

    def solve(
        self, fraction: float, total: float, fixed: float, power: float = 1.0, method: str | None = None
    ) -> tuple[dict[str, Candidate | None], float]:
        """The least-damage choice whose total cost is at most ``fraction * total``; returns it and its
        predicted damage (the plain sum). ``power`` > 1 minimises the sum of ``damage ** power`` instead, which
        spreads the damage more evenly over the layers (between the sum and :meth:`solve_minimax`);
        ``method`` restricts the choice to that method's candidates. Raises ``ValueError`` when the target is
        out of reach."""
        budget = fraction * total - fixed
        options, costs, damages = self._options(method)
        floor = self.floor(total, fixed) * total
        weighted = damages if power == 1.0 else [[d**power for d in dmg] for dmg in damages]
        if budget < 0 or (picks := solve_mckp(costs, weighted, budget)) is None:
            raise ValueError(
                f"target {self.kind}={fraction:g} is out of reach: the smallest candidates give "
                f"{self.kind} x{floor / total:.3f} (add methods, lower levels, fold_bn=True or keep_edges=False)"
            )
        picks = _spend_leftover(picks, costs, weighted, budget)
        choice = {lc.name: options[g][picks[g]] for g, lc in enumerate(self.layers)}
        return choice, sum(damages[g][o] for g, o in enumerate(picks))

    def solve_minimax(
        self, fraction: float, total: float, fixed: float
    ) -> tuple[dict[str, Candidate | None], float] | None:
        """The choice that keeps the largest single-layer damage least within the budget (the smallest threshold
        such that every layer's cheapest option with at most that damage fits), and, among the options within
        that threshold, the least total damage (the knapsack of :meth:`solve`). Spreads the damage evenly where
        sums of damages mislead (in the spirit of ALDS, Liebenwein et al. 2021, which minimises the largest
        per-layer error). ``None`` if out of reach.
        """
        budget = fraction * total - fixed
        options, costs, damages = self._options()

        def picks_at(tau: float) -> list[int]:
            return [
                min((k for k, d in enumerate(dmg) if d <= tau), key=lambda k, c=cost: (c[k], dmg[k]))
                for cost, dmg in zip(costs, damages)
            ]

        levels = sorted({d for dmg in damages for d in dmg})
        lo, hi = 0, len(levels) - 1
        if sum(c[k] for c, k in zip(costs, picks_at(levels[hi]))) > budget:
            return None
        while lo < hi:  # the smallest threshold whose cheapest picks fit
            mid = (lo + hi) // 2
            if sum(c[k] for c, k in zip(costs, picks_at(levels[mid]))) <= budget:
                hi = mid
            else:
                lo = mid + 1
        # among the choices within that threshold, the least total damage (spends the budget like solve)
        allowed = [[k for k, d in enumerate(dmg) if d <= levels[lo]] for dmg in damages]
        sub = solve_mckp(
            [[cost[k] for k in a] for cost, a in zip(costs, allowed)],
            [[dmg[k] for k in a] for dmg, a in zip(damages, allowed)],
            budget,
        )
        picks = picks_at(levels[lo]) if sub is None else [a[i] for a, i in zip(allowed, sub)]
        picks = _spend_leftover(picks, costs, damages, budget)
        choice = {lc.name: options[g][picks[g]] for g, lc in enumerate(self.layers)}
        return choice, sum(damages[g][o] for g, o in enumerate(picks))

    def solve_uniform(
        self, fraction: float, total: float, fixed: float, method: str
    ) -> tuple[dict[str, Candidate | None], float] | None:
        """Uniform compression with ``method`` among the candidates: every layer at about one per-layer cost
        ratio ``r`` (its costliest candidate within ``r`` times its dense cost, else its cheapest), the largest
        ``r`` that fits the budget (bisection). Layers without a candidate of ``method`` stay dense, as
        :func:`~factorch.auto.uniform_compress` leaves them. ``None`` if out of reach."""
        per_layer = [
            (lc, sorted((c for c in lc.candidates if c.method == method), key=lambda c: _cost(self.kind, c)))
            for lc in self.layers
        ]

        def choice_at(r: float) -> dict[str, Candidate | None]:
            picks: dict[str, Candidate | None] = {}
            for lc, cands in per_layer:
                within = [c for c in cands if _cost(self.kind, c) <= r * _dense_cost(self.kind, lc)]
                picks[lc.name] = (within[-1] if within else cands[0]) if cands else None
            return picks

        if not any(cands for _, cands in per_layer) or self._total_cost(choice_at(0.0), fixed) > fraction * total:
            return None
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            if self._total_cost(choice_at(mid), fixed) <= fraction * total:
                lo = mid
            else:
                hi = mid
        choice = choice_at(lo)
        return choice, sum(c.damage for c in choice.values() if c is not None)

    def plan(self, choice: dict[str, Candidate | None]) -> Plan:
        """The per-layer configs of ``choice``, with the decomposition options its candidates were scored with."""
        layers: dict[str, Any] = {"_default": None}
        for name, c in choice.items():
            if c is not None:
                rank = c.ranks[0] if len(c.ranks) == 1 else tuple(c.ranks)
                options = self.fit_options.get(c.method, {})
                layers[name] = config_for_method(c.method, fold_bn=self.cfg.fold_bn, **options).with_option(rank)
        return Plan(layers)


def _spend_leftover(picks: list[int], costs: list[list[float]], damages: list[list[float]], budget: float) -> list[int]:
    """Spend what a choice leaves of the budget: move a layer to a costlier option that does no more damage,
    the one whose damage falls most first (then the costliest), until nothing fits."""
    picks = list(picks)
    spent = sum(costs[g][o] for g, o in enumerate(picks))
    while True:
        best = None
        for g, o in enumerate(picks):
            for k, (cost, dmg) in enumerate(zip(costs[g], damages[g])):
                if cost <= costs[g][o] or dmg > damages[g][o] or spent - costs[g][o] + cost > budget:
                    continue
                score = (damages[g][o] - dmg, cost - costs[g][o])
                if best is None or score > best[0]:
                    best = (score, g, k)
        if best is None:
            return picks
        _, g, k = best
        spent += costs[g][k] - costs[g][picks[g]]
        picks[g] = k


def _choice_tag(choice: dict[str, Candidate | None]) -> str:
    text = ";".join(f"{name}={c.key if c else '-'}" for name, c in sorted(choice.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _ctx_key(tag: str, lc: LayerChoices, c: Candidate | None) -> str:
    return f"ctx|{tag}|{lc.name}|{c.key if c is not None else 'dense'}"


def _random_like(module: nn.Module) -> nn.Module:
    """``module`` with finite random weights (timing must not see uninitialised memory or denormals)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    return module.eval()


# -- the compress entry point ------------------------------------------------------------------------------
def _measure(
    report: CompressionReport,
    reference: nn.Module,
    built: nn.Module,
    inputs: tuple[Tensor, ...],
    search: AutoSearch,
    repeats: int,
) -> None:
    cfg = search.cfg
    sizes = tuple(dict.fromkeys((1, cfg.batch_size)))
    shapes = {lc.name: lc for lc in search.layers}
    for row in report.layers:
        if row.skipped is not None or row.name not in shapes:
            continue
        lc = shapes[row.name]
        new = get_module(built, row.name)
        x = torch.randn((1, *lc.input_shape[1:]), dtype=spec_of(lc.layer).torch_dtype)
        t = time_pair(
            lc.layer,
            new,
            (x,),
            batch_sizes=sizes,
            runtime=cfg.runtime,
            repeats=cfg.latency_repeats,
            threads=cfg.threads,
        )
        row.latency_ratio = t[cfg.batch_size][1] / t[cfg.batch_size][0]
        row.latency_ratio_b1 = t[1][1] / t[1][0]
    t = time_pair(
        reference, built, inputs, batch_sizes=sizes, runtime=cfg.runtime, repeats=repeats, threads=cfg.threads
    )
    report.totals.update(
        latency_ratio=t[cfg.batch_size][1] / t[cfg.batch_size][0],
        latency_ratio_b1=t[1][1] / t[1][0],
        latency_batch_size=cfg.batch_size,
        latency_before_s=t[cfg.batch_size][0],
        latency_after_s=t[cfg.batch_size][1],
        runtime=cfg.runtime,
        threads=cfg.threads or torch.get_num_threads(),
    )


def auto_compress(
    model: nn.Module,
    cfg: AutoConfig,
    *,
    inputs: tuple[Tensor, ...] | None,
    calib_data: Any,
    eval_fn: Callable[[nn.Module], float] | None,
    inplace: bool,
) -> tuple[nn.Module, CompressionReport]:
    """:func:`factorch.compress` for an :class:`AutoConfig` (see there)."""
    from factorch.apply import apply_plan

    target: Target = cfg.parsed_target
    if target.fraction is None and eval_fn is None:
        raise ValueError(f"AutoConfig(target={cfg.target!r}) without a fraction searches by accuracy: pass eval_fn")
    if cfg.max_accuracy_drop is not None and eval_fn is None:
        raise ValueError(
            "AutoConfig(max_accuracy_drop=...) needs eval_fn (a function model -> score, higher is better)"
        )
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable (model -> score), got {type(eval_fn).__name__}")
    calib = calibration_inputs(calib_data, cfg.calib_samples) if calib_data is not None else None
    if calib is None and (eval_fn is None or cfg.objective != "accuracy"):
        raise ValueError(
            "AutoConfig needs calib_data (a tensor or DataLoader of inputs) to score candidate layers, "
            "or eval_fn with objective='accuracy'"
        )
    if inputs is None:
        if calib is None:
            raise ValueError("AutoConfig needs example_inputs (or calib_data to take one from)")
        inputs = (calib[:1],)
    inputs = tuple(t[:1] for t in inputs)

    was_training = model.training
    search = AutoSearch(model, cfg, inputs, calib, eval_fn)
    search.score()
    if target.kind == "latency":
        search.measure_candidates()
        from factorch.profiling import measure_latency

        def timed(m: nn.Module) -> float:
            return measure_latency(m, inputs, batch_sizes=(cfg.batch_size,), repeats=20, threads=cfg.threads).median(
                cfg.batch_size
            )

        # the target is relative to the model as given; what the candidates leave is timed on the analysed
        # model (BatchNorms folded when fold_bn=True)
        total = timed(model)
        _, fixed = search.reference_total(timed(search.model) if cfg.fold_bn else total)
    else:
        total, fixed = search.reference_total()
    reference = copy.deepcopy(model) if inplace else model
    base_score = float(eval_fn(reference)) if eval_fn is not None else None

    def build(fraction: float) -> tuple[nn.Module, CompressionReport, float]:
        choice, predicted = search.choose(fraction, total, fixed)
        # the layers the search built and measured, not decomposed again
        prebuilt = {lc.name: search._replacement(lc, c) for lc in search.layers if (c := choice.get(lc.name))}
        built, report = apply_plan(
            model,
            search.plan(choice),
            example_inputs=inputs,
            inplace=False,
            keep_edges=True,
            fold_bn=cfg.fold_bn,
            prebuilt=prebuilt,
        )
        report.totals["predicted_damage"] = predicted
        for row in report.layers:
            if row.skipped is None:
                row.damage = choice[row.name].damage
            elif row.name in search.skipped:
                row.skipped = search.skipped[row.name]
            elif row.name in choice:
                row.skipped = "kept dense by the budget solver"
        built.train(was_training)
        return built, report, predicted

    warnings: list[str] = []
    attempts = []
    if target.fraction is None:  # smallest budget whose measured drop is within max_accuracy_drop
        allowed = cfg.max_accuracy_drop
        lo, hi, best = search.floor(total, fixed), 1.0, None
        for _ in range(7):
            mid = 0.5 * (lo + hi)
            try:
                built, report, _ = build(mid)
            except ValueError:
                lo = mid
                continue
            drop = base_score - float(eval_fn(built))
            attempts.append({"fraction": mid, "drop": drop})
            if drop <= allowed:
                hi, best = mid, (built, report, drop)
            else:
                lo = mid
        if best is None:
            built, report, _ = build(1.0)
            warnings.append(f"no budget below the dense model kept the drop within {allowed}")
        else:
            built, report, _ = best
        fraction = None
    else:
        fraction = target.fraction
        margin = 0.99 if target.kind == "latency" else 0.999
        tried: list[tuple[float, float, nn.Module, CompressionReport]] = []  # (goal, measured, model, report)
        goal = fraction
        for attempt in range(3):  # closed loop: the measured result, not the model of it, must meet the target
            if attempt and goal < (cheapest := search.floor(total, fixed) * 1.01):
                # the correction asks for less than the cheapest choice: try that (1 % over the floor leaves
                # room for the knapsack's rounding of costs), once
                if tried[-1][0] <= cheapest:
                    break
                goal = cheapest
            try:
                built, report, _ = build(goal)
            except ValueError:
                if not attempt:
                    raise  # the target itself is out of reach
                break
            ratio = _achieved(report, target.kind, built, reference, inputs, cfg)
            attempts.append({"fraction": goal, "achieved": ratio})
            tried.append((goal, ratio, built, report))
            met = [t for t in tried if t[1] <= fraction]
            if ratio <= fraction:
                if ratio >= UNDERSHOOT * fraction or goal >= 1.0:
                    break
                # far below the target (the per-layer estimates were pessimistic): relax toward it, aiming a
                # little under it, as a relaxed model that misses the target is an attempt lost
                goal = min(1.0, goal * fraction / ratio * 0.97)
            elif met:  # relaxing went past the target: try the secant between the two, aiming a little under
                g0, r0 = max(met, key=lambda t: t[0])[:2]
                goal = g0 + (goal - g0) * (0.97 * fraction - r0) / (ratio - r0)
            else:
                goal = goal * fraction / ratio * margin
        met = [t for t in tried if t[1] <= fraction]
        # of the models that meet the target, the one given the most budget; else the one measured closest
        _, ratio, built, report = max(met, key=lambda t: t[0]) if met else min(tried, key=lambda t: t[1])
        if ratio > fraction:
            warnings.append(
                f"measured {target.kind} x{ratio:.3f} is above the target {fraction:g} after {len(attempts)} "
                "attempt(s); the closest is returned"
            )
    if cfg.calibrate is not None:
        from factorch.apply import note_calibration
        from factorch.calibrate import calibrate_

        result = calibrate_(built, search.model, calib_data, config=cfg.calibrate)
        report.totals["calibration"] = result.to_dict()
        note_calibration(report, result)
    if cfg.measure or target.kind == "latency":
        _measure(report, reference, built, inputs, search, repeats=max(20, cfg.latency_repeats))
    if eval_fn is not None:
        after = float(eval_fn(built))
        report.totals.update(score_before=base_score, score_after=after, accuracy_drop=base_score - after)
        if cfg.max_accuracy_drop is not None and base_score - after > cfg.max_accuracy_drop:
            warnings.append(f"accuracy drop {base_score - after:.3g} exceeds max_accuracy_drop={cfg.max_accuracy_drop}")
    report.config = cfg.to_dict()
    report.totals.update(
        target=str(target),
        target_kind=target.kind,
        target_fraction=fraction,
        sensitivity={k: v for k, v in search.stats.items()},
        attempts=attempts,
    )
    if warnings:
        report.totals["warnings"] = warnings
    if inplace:
        _copy_into(model, built)
        built = model
    return built, report


def _achieved(
    report: CompressionReport,
    kind: str,
    built: nn.Module,
    reference: nn.Module,
    inputs: tuple[Tensor, ...],
    cfg: AutoConfig,
) -> float:
    if kind != "latency":  # params budgets count non-zeros; size budgets bytes stored compactly
        return float(report.totals[{"params": "nonzero_params_ratio", "size": "size_ratio"}.get(kind, f"{kind}_ratio")])
    t = time_pair(
        reference, built, inputs, batch_sizes=(cfg.batch_size,), runtime=cfg.runtime, repeats=20, threads=cfg.threads
    )
    return t[cfg.batch_size][1] / t[cfg.batch_size][0]


def _copy_into(model: nn.Module, built: nn.Module) -> None:
    """Make ``model`` (the caller's object) the compressed model: same class, new submodules and state."""
    model.__dict__.clear()
    model.__dict__.update(built.__dict__)
