"""The analysis behind ``AutoConfig``: candidates per layer (:mod:`.candidates`), their damage scores
(measured into cached tables by :mod:`.sensitivity`, settled into immutable score tables, :mod:`.scoring`),
latency, and the proposals of the budget solvers (:mod:`.solvers`), polished by a local search
(:mod:`.local_search`). :mod:`.closed_loop` builds and measures the choice."""

from __future__ import annotations

import copy
import dataclasses
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from factorch.apply import dense_layer_cost, model_storage
from factorch.auto import candidates
from factorch.auto.candidates import (
    Candidate,
    LayerChoices,
    _cheaper,
    _cost,
    _dense_cost,
    _random_like,
    _remember,
    _round_ranks,
)
from factorch.auto.config import AutoConfig
from factorch.auto.local_search import polish
from factorch.auto.scoring import ScoreTable, monotone
from factorch.auto.sensitivity import (
    SENSITIVITY_VERSION,
    TableCache,
    damage_function,
    default_cache_dir,
    fingerprint,
)
from factorch.auto.solvers import FILL, _choice_tag, _ctx_key, _spend_leftover
from factorch.auto.timing import time_pair
from factorch.config import Plan, config_for_method
from factorch.cost import Cost
from factorch.layers import layer_class
from factorch.layers._spec import spec_of
from factorch.layers.base import layer_geometry
from factorch.progress import progress_bar
from factorch.rank import MACRatioRank, ParamRatioRank
from factorch.rank.bisect import largest_feasible
from factorch.rank.knapsack import solve_mckp
from factorch.registry import NotCompressible, get_method
from factorch.surgery import candidate_layers, conv_bn_pairs, fold_batchnorms, trace_layers


def fit_options(cfg: AutoConfig) -> dict[str, dict[str, Any]]:
    """Per method, the decomposition options that candidates are both scored and built with: each layer class
    says its own (``search_options``; e.g. CP's cheaper ALS fit), so the model built is the model measured."""
    out: dict[str, dict[str, Any]] = {}
    for method in cfg.methods:
        for cls in get_method(method).layers.values():
            out.setdefault(method, {}).update(cls.search_options(cfg))
    return {m: o for m, o in out.items() if o}


TIMING_VERSION = 2  # bumped when the way candidates are timed changes (2: ONNX Runtime without spinning)
_INTERPOLATED_MAX = 7  # ranks added between two scored neighbours


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
        from factorch.complexity import resolve_rules

        self.rules = resolve_rules(cfg.rules)
        self.model = copy.deepcopy(model).eval()
        if cfg.fold_bn:
            fold_batchnorms(self.model, conv_bn_pairs(self.model))
        from factorch.profiling import profile

        self.totals_before = self._totals(model, profile(model, inputs), self._model_score(model))
        self.totals_work = self._totals(self.model, profile(self.model, inputs), self._model_score(self.model))
        self.layers: list[LayerChoices] = []
        self.skipped: dict[str, str] = {}
        self.stats: dict[str, Any] = {}
        self._problems: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
        self._fingerprints: dict[str, str] = {}
        self._damage_fn: Callable[..., float] | None = None
        self._table: TableCache | None = None
        self._scores: ScoreTable | None = None
        self.fit_options = fit_options(cfg)
        self._enumerate()

    @staticmethod
    def _totals(model: nn.Module, prof, score: float | None) -> dict[str, float]:
        store = model_storage(model)
        totals = {"params": store["nonzero_params"], "macs": prof.total_macs, "size": store["size_bytes"]}
        if score is not None:
            totals["score"] = score
        return totals

    def _model_score(self, model: nn.Module) -> float | None:
        """The whole model's complexity score under the search's rules (score targets only)."""
        if self.kind != "score":
            return None
        from factorch.complexity import score

        return score(model, self.inputs, rules=self.rules).score

    # -- candidates -------------------------------------------------------------------------------------
    def _option_cost(self, lc: LayerChoices, method: str, ranks: tuple[int, ...]) -> Cost:
        _, options = self._problems[(lc.name, method)]
        cls = layer_class(method, lc.layer)
        return cls.option_cost(spec_of(lc.layer), ranks, lc.input_size, **options).scaled_macs(lc.per_position)

    def _candidate(self, lc: LayerChoices, method: str, ranks: tuple[int, ...], cost: Cost, **kw) -> Candidate:
        return Candidate(
            method, ranks, cost.nonzero_params, cost.macs, size=cost.size_bytes, score=self.rules.of_cost(cost), **kw
        )

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
                name, layer, shapes[name], input_size, per_position, dense.nonzero_params, dense.macs, dense.size_bytes,
                dense_score=self.rules.of_cost(dense),
            )  # fmt: skip
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
                grid = cls.search_grid(problem, cfg.levels)  # a class's own discrete options (bit widths)
                if self.kind == "score" and hasattr(cls, "score_grid"):  # e.g. activation bits too
                    grid = cls.score_grid(problem, cfg.levels)
                if grid is None:
                    grid = [
                        _round_ranks(selector(level)(problem), problem.max_ranks, cfg.round_to) for level in cfg.levels
                    ]
                for ranks in map(tuple, grid):
                    if ranks in seen:
                        continue
                    cost = self._option_cost(lc, method, ranks)
                    if _cheaper(self.kind, cost, lc, self.rules.of_cost(cost)):
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
        cache = candidates._built_cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        cls = layer_class(c.method, lc.layer)
        built = cls.from_dense(lc.layer, c.ranks, input_size=lc.input_size, **opts).eval()
        if getattr(built, "needs_activation_ranges", False):  # quantized inputs: ranges from this layer's inputs
            from factorch.layers.quantized import calibrate_activations

            calibrate_activations(built, self._layer_inputs(lc))
        _remember(key, built)
        return built

    def _layer_inputs(self, lc: LayerChoices, samples: int = 256) -> Tensor:
        """What ``lc``'s layer receives on the first ``samples`` calibration inputs (the dense model's)."""
        seen: list[Tensor] = []

        class _Seen(Exception):
            pass

        def grab(_module, args):
            seen.append(args[0].detach())
            raise _Seen

        handle = lc.layer.register_forward_pre_hook(grab)
        try:
            with torch.no_grad():
                for chunk in self.calib[:samples].split(128):
                    try:
                        self.model(chunk)
                    except _Seen:
                        pass
        finally:
            handle.remove()
        if not seen:
            raise ValueError(f"layer {lc.name!r} saw no calibration input")
        return torch.cat(seen)

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
        self._scores = None

    @property
    def scores(self) -> ScoreTable:
        """The single-layer score table: each candidate's damage with only its own layer replaced
        (after :meth:`score`; follows the candidates :meth:`measure_candidates` keeps)."""
        if self._scores is None:
            if self._table is None:
                raise RuntimeError("AutoSearch.scores before AutoSearch.score()")
            self._scores = self._settle(lambda lc, c: float(self._table.get(f"{lc.name}|{c.key}")))
        return self._scores

    def _settle(self, raw: Callable[[LayerChoices, Candidate], float]) -> ScoreTable:
        """Measured scores (``raw``) to a table of solver damages: non-increasing in rank per method
        (:func:`~factorch.auto.scoring.monotone`), then interpolated ranks added (not under a latency budget:
        an interpolated rank is not timed)."""
        options, damages = {}, {}
        for lc in self.layers:
            settled = monotone(lc.candidates, lambda c, lc=lc: raw(lc, c))
            extra = [] if self.kind == "latency" else self._interpolated(lc, settled)
            options[lc.name] = sorted(
                [*lc.candidates, *(c for c, _ in extra)], key=lambda c: (c.method, c.macs, c.params)
            )
            damages.update({(lc.name, k): d for k, d in settled.items()})
            damages.update({(lc.name, c.key): d for c, d in extra})
        return ScoreTable.of(options, damages)

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
        scores = self.scores
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
                (lc, c) for lc in self.layers for c in [None, *lc.candidates] if table.get(_ctx_key(tag, lc, c)) is None
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
            base = {lc.name: float(table.get(_ctx_key(tag, lc, None))) for lc in self.layers}
            scores = self._settle(
                lambda lc, c, tag=tag, base=base: max(0.0, float(table.get(_ctx_key(tag, lc, c))) - base[lc.name])
            )
            choice, predicted = self.solve(fraction, total, fixed, scores=scores)
            if self._total_cost(choice, fixed) < FILL * fraction * total:
                break
            measured.append((self._joint(choice), f"refined {round_}", choice, predicted))
            if not measured[-1][0] < best[0]:
                break
            best = measured[-1]
        if self.cfg.polish:
            polished = polish(self, best[2], fraction, total, fixed, scores)
            if polished is not None:
                best = (*polished, best[3])
                measured.append(best)
        self.stats["proposals"] = [{"proposal": m[1], "joint_damage": m[0], "predicted_damage": m[3]} for m in measured]
        self.stats["chosen"] = best[1]
        return best[2], best[3]

    def _polish(
        self, start: dict[str, Candidate | None], fraction: float, total: float, fixed: float
    ) -> tuple[float, str, dict[str, Candidate | None]] | None:
        """:func:`factorch.auto.local_search.polish` of this analysis, on the single-layer scores."""
        return polish(self, start, fraction, total, fixed, self.scores)

    def _interpolated(self, lc: LayerChoices, settled: dict[str, float]) -> list[tuple[Candidate, float]]:
        """Ranks between scored neighbours, each with its damage interpolated in cost from ``settled``
        (candidate key -> damage), so budgets can be met closely.

        Above the highest scored level the path continues towards full rank, where the exact methods (all
        but CP) reproduce the layer (damage 0), as long as the factorized layer stays smaller than dense.
        """
        step = self.cfg.round_to
        extra: list[tuple[Candidate, float]] = []
        for method in sorted({c.method for c in lc.candidates}):
            problem, _ = self._problems[(lc.name, method)]
            if layer_class(method, lc.layer).search_grid(problem, self.cfg.levels) is not None:
                continue  # a discrete grid (bit widths): nothing lies between its options
            scored = sorted((c for c in lc.candidates if c.method == method), key=lambda c: (c.macs, c.params))
            known = {c.ranks for c in scored}
            anchors = [(c, settled[c.key]) for c in scored]
            if getattr(layer_class(method, lc.layer), "exact_at_full_rank", True) and problem.max_ranks not in known:
                cost = self._option_cost(lc, method, problem.max_ranks)
                anchors.append((self._candidate(lc, method, problem.max_ranks, cost), 0.0))
            for (a, da), (b, db) in zip(anchors, anchors[1:]):
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
                    if not _cheaper(self.kind, full, lc, self.rules.of_cost(full)):
                        continue
                    ca, cb = _cost(self.kind, a), _cost(self.kind, b)
                    c = self._candidate(lc, method, ranks, full, measured=False)
                    cost = _cost(self.kind, c)
                    if not ca < cost < cb:
                        continue
                    w = (cost - ca) / (cb - ca)
                    extra.append((c, (1 - w) * da + w * db))
        return extra

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
            pairs = [table.get(entry(lc, c)) for c in lc.candidates]
            lc.dense_latency_s = sorted(d for d, _ in pairs)[len(pairs) // 2]
            # every candidate expressed against the layer's one dense time
            timed = [
                dataclasses.replace(c, latency_s=s / d * lc.dense_latency_s) for c, (d, s) in zip(lc.candidates, pairs)
            ]
            # never choose what is not measured faster than the dense layer
            lc.reasons += [
                f"{c.key}: measured not faster than dense" for c in timed if c.latency_s >= lc.dense_latency_s
            ]
            lc.candidates = [c for c in timed if c.latency_s < lc.dense_latency_s]
        self._scores = None  # the table follows the candidates kept

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
        self, scores: ScoreTable, method: str | None = None
    ) -> tuple[list[list[Candidate | None]], list[list[float]], list[list[float]]]:
        """Per layer: its options in ``scores`` (``None`` = dense first, then the options of ``method`` or of
        all methods), their costs and their damages."""
        options = [[None, *(c for c in scores.options[lc.name] if method in (None, c.method))] for lc in self.layers]
        costs = [
            [_dense_cost(self.kind, lc)] + [_cost(self.kind, c) for c in o[1:]] for lc, o in zip(self.layers, options)
        ]
        damages = [[scores.damage(lc.name, c) for c in o] for lc, o in zip(self.layers, options)]
        return options, costs, damages

    def solve(
        self,
        fraction: float,
        total: float,
        fixed: float,
        power: float = 1.0,
        method: str | None = None,
        scores: ScoreTable | None = None,
    ) -> tuple[dict[str, Candidate | None], float]:
        """The least-damage choice whose total cost is at most ``fraction * total``; returns it and its
        predicted damage (the plain sum). ``power`` > 1 minimises the sum of ``damage ** power`` instead, which
        spreads the damage more evenly over the layers (between the sum and :meth:`solve_minimax`);
        ``method`` restricts the choice to that method's candidates; ``scores``: the table to read (default the
        single-layer :attr:`scores`). Raises ``ValueError`` when the target is out of reach."""
        budget = fraction * total - fixed
        options, costs, damages = self._options(self.scores if scores is None else scores, method)
        floor = self.floor(total, fixed) * total
        weighted = damages if power == 1.0 else [[d**power for d in dmg] for dmg in damages]
        if budget < 0 or (picks := solve_mckp(costs, weighted, budget)) is None:
            goal = (
                f"score={fraction * total:.4g} ({self.rules.name})"
                if self.kind == "score"
                else f"{self.kind}={fraction:g}"
            )
            reach = f"score {floor:.4g}" if self.kind == "score" else f"{self.kind} x{floor / total:.3f}"
            raise ValueError(
                f"target {goal} is out of reach: the smallest candidates give {reach} (add methods, lower levels, "
                "fold_bn=True or keep_edges=False)"
            )
        picks = _spend_leftover(picks, costs, weighted, budget)
        choice = {lc.name: options[g][picks[g]] for g, lc in enumerate(self.layers)}
        return choice, sum(damages[g][o] for g, o in enumerate(picks))

    def solve_minimax(
        self, fraction: float, total: float, fixed: float, scores: ScoreTable | None = None
    ) -> tuple[dict[str, Candidate | None], float] | None:
        """The choice that keeps the largest single-layer damage least within the budget (the smallest threshold
        such that every layer's cheapest option with at most that damage fits), and, among the options within
        that threshold, the least total damage (the knapsack of :meth:`solve`). Spreads the damage evenly where
        sums of damages mislead (in the spirit of ALDS, Liebenwein et al. 2021, which minimises the largest
        per-layer error). ``None`` if out of reach.
        """
        budget = fraction * total - fixed
        options, costs, damages = self._options(self.scores if scores is None else scores)

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
        self, fraction: float, total: float, fixed: float, method: str, scores: ScoreTable | None = None
    ) -> tuple[dict[str, Candidate | None], float] | None:
        """Uniform compression with ``method`` among the candidates: every layer at about one per-layer cost
        ratio ``r`` (its costliest candidate within ``r`` times its dense cost, else its cheapest), the largest
        ``r`` that fits the budget (bisection). Layers without a candidate of ``method`` stay dense, as
        :func:`~factorch.auto.uniform_compress` leaves them. ``None`` if out of reach."""
        scores = self.scores if scores is None else scores
        per_layer = [
            (lc, sorted((c for c in scores.options[lc.name] if c.method == method), key=lambda c: _cost(self.kind, c)))
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
        found = largest_feasible(choice_at, lambda c: self._total_cost(c, fixed) <= fraction * total, steps=30)
        choice = found[1] if found else choice_at(0.0)
        return choice, scores.total(choice)

    def plan(self, choice: dict[str, Candidate | None]) -> Plan:
        """The per-layer configs of ``choice``, with the decomposition options its candidates were scored with."""
        layers: dict[str, Any] = {"_default": None}
        for name, c in choice.items():
            if c is not None:
                rank = c.ranks[0] if len(c.ranks) == 1 else tuple(c.ranks)
                options = self.fit_options.get(c.method, {})
                layers[name] = config_for_method(c.method, fold_bn=self.cfg.fold_bn, **options).with_option(rank)
        return Plan(layers)
