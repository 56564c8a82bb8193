"""Compare factorch's decompositions with tensorly and tensorly-torch on real pretrained conv kernels.

Kernels: vgg ``features.4`` (64x64x3x3), ``features.11`` (128x128), ``features.17`` (256x256) and resnet20
``layer2.0.conv1`` (32x16), ``layer3.1.conv2`` (64x64), all from the weights that ship with factorch.

* Tucker-2 at ranks (C_out/2, C_in/2): ``factorch.decompose.tucker2`` vs
  ``tensorly.decomposition.partial_tucker(modes=[0, 1])`` (numpy backend, float64), each with its defaults.
* CP-4 at the rank R whose CP parameter count ``R * (C_out + C_in + kh + kw)`` is closest to the Tucker-2
  parameter count ``C_out R_out + R_out R_in kh kw + R_in C_in``: ``factorch.decompose.cp`` (stabilised, and
  ``stabilize=False``) vs ``tensorly.decomposition.parafac``, both with ``n_iter_max`` = ``--cp-iters``
  (default 100, tensorly's default) and otherwise their defaults. Also the largest rank-one-term norm
  / ||W|| (``factorch.decompose.cp_term_norms``): large values flag degenerate, cancelling terms.
* tensorly-torch (if installed): ``tltorch.FactorizedConv.from_conv(conv, factorization='tucker', ...)``,
  once with ``rank=0.5, fixed_rank_modes='spatial'`` and once with explicit ranks
  ``(C_out/2, C_in/2, kh, kw)`` (the same Tucker-2 as above); error of ``layer.weight.to_tensor()``.

Times are the median of ``--repeats`` runs (a decomposition slower than ``--slow-s`` is run once).
Errors are ||W - W_hat|| / ||W||. Run from the repository root::

    .venv/bin/python benchmarks/decompose_peers.py

Writes ``benchmarks/results/decompose_peers.json`` and ``.md`` after every kernel. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import factorch

RESULTS = Path(__file__).resolve().parent / "results"

KERNELS = [
    ("resnet20", "layer2.0.conv1"),
    ("vgg", "features.4"),
    ("resnet20", "layer3.1.conv2"),
    ("vgg", "features.11"),
    ("vgg", "features.17"),
]


LIMIT_S = [120.0]  # per-call wall-clock limit, set from --limit-s


class CallTimeout(Exception):
    pass


def _on_alarm(signum, frame):  # noqa: ARG001
    raise CallTimeout


def _timed(fn, repeats: int, slow_s: float):
    """``(last result, median seconds, number of runs)``; raises ``CallTimeout`` past ``LIMIT_S``."""
    times, out = [], None
    old = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for _ in range(repeats):
            signal.setitimer(signal.ITIMER_REAL, LIMIT_S[0])
            t0 = time.perf_counter()
            try:
                out = fn()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            times.append(time.perf_counter() - t0)
            if times[-1] > slow_s:
                break
    finally:
        signal.signal(signal.SIGALRM, old)
    return out, statistics.median(times), len(times)


def _rel(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    w = w.double()
    return float((w - w_hat.double()).norm() / w.norm())


def tucker_rows(w: torch.Tensor, ranks: tuple[int, int], repeats: int, slow_s: float) -> list[dict]:
    rows = []
    res, t, n = _timed(lambda: factorch.decompose.tucker2(w, ranks), repeats, slow_s)
    w_hat = factorch.decompose.tucker2_reconstruct(*res)
    rows.append(
        {
            "method": "tucker2",
            "impl": "factorch.decompose.tucker2",
            "rank": list(ranks),
            "time_s": t,
            "runs": n,
            "rel_error": _rel(w, w_hat),
        }
    )

    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    x = w.double().numpy()
    with tl.backend_context("numpy"):
        res, t, n = _timed(lambda: partial_tucker(x, rank=list(ranks), modes=[0, 1]), repeats, slow_s)
        (core, factors), _rec_errors = res  # tensorly >= 0.9 returns ((core, factors), rec_errors)
        w_hat = tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])
    rows.append(
        {
            "method": "tucker2",
            "impl": "tensorly partial_tucker (numpy)",
            "rank": list(ranks),
            "time_s": t,
            "runs": n,
            "rel_error": _rel(w, torch.from_numpy(np.asarray(w_hat))),
        }
    )
    return rows


def cp_rows(w: torch.Tensor, rank: int, iters: int, repeats: int, slow_s: float) -> list[dict]:
    rows = []
    norm = float(w.double().norm())
    for stabilize in (True, False):
        impl = f"factorch.decompose.cp (stabilize={stabilize})"
        try:
            res, t, n = _timed(
                lambda: factorch.decompose.cp(w, rank, n_iter_max=iters, stabilize=stabilize), repeats, slow_s
            )
        except CallTimeout:
            rows.append({"method": "cp", "impl": impl, "skipped": f"ran past {LIMIT_S[0]:g} s"})
            continue
        w_hat = factorch.decompose.cp_reconstruct(res.weights, res.factors)
        term = float(factorch.decompose.cp_term_norms(res.weights, res.factors).max()) / norm
        rows.append(
            {
                "method": "cp",
                "impl": impl,
                "rank": rank,
                "time_s": t,
                "runs": n,
                "rel_error": _rel(w, w_hat),
                "max_term_norm_rel": term,
            }
        )

    import tensorly as tl
    from tensorly.decomposition import parafac

    x = w.double().numpy()
    with tl.backend_context("numpy"):
        try:
            res, t, n = _timed(lambda: parafac(x, rank, n_iter_max=iters), repeats, slow_s)
        except CallTimeout:
            return [
                *rows,
                {"method": "cp", "impl": "tensorly parafac (numpy)", "skipped": f"ran past {LIMIT_S[0]:g} s"},
            ]
        weights, factors = res
        w_hat = torch.from_numpy(np.asarray(tl.cp_to_tensor((weights, factors))))
    tw = torch.from_numpy(np.asarray(weights, dtype=np.float64))
    tf = [torch.from_numpy(np.asarray(f, dtype=np.float64)) for f in factors]
    term = float(factorch.decompose.cp_term_norms(tw, tf).max()) / norm
    rows.append(
        {
            "method": "cp",
            "impl": "tensorly parafac (numpy)",
            "rank": rank,
            "time_s": t,
            "runs": n,
            "rel_error": _rel(w, w_hat),
            "max_term_norm_rel": term,
        }
    )
    return rows


def tltorch_rows(conv: torch.nn.Conv2d, ranks: tuple[int, int], repeats: int, slow_s: float) -> list[dict]:
    try:
        import tltorch
    except ImportError as err:
        return [{"method": "tucker (tltorch)", "impl": "tensorly-torch", "skipped": f"not installed: {err}"}]
    w = conv.weight.detach()
    kh, kw = w.shape[2:]
    rows = []
    settings = [
        ("rank=0.5, fixed_rank_modes='spatial'", {"rank": 0.5, "fixed_rank_modes": "spatial"}),
        (f"rank=({ranks[0]}, {ranks[1]}, {kh}, {kw})", {"rank": (ranks[0], ranks[1], kh, kw)}),
    ]
    for label, kwargs in settings:
        try:
            layer, t, n = _timed(
                lambda kwargs=kwargs: tltorch.FactorizedConv.from_conv(conv, factorization="tucker", **kwargs),
                repeats,
                slow_s,
            )
            with torch.no_grad():
                w_hat = layer.weight.to_tensor().reshape(w.shape)
            core_rank = list(layer.weight.rank)
            params = sum(p.numel() for p in layer.parameters()) - (0 if conv.bias is None else conv.bias.numel())
            rows.append(
                {
                    "method": "tucker (tltorch)",
                    "impl": f"tltorch FactorizedConv.from_conv({label})",
                    "rank": core_rank,
                    "time_s": t,
                    "runs": n,
                    "rel_error": _rel(w, w_hat),
                    "params": params,
                }
            )
        except Exception as err:  # a peer failing is a result, not a crash of the benchmark
            rows.append(
                {"method": "tucker (tltorch)", "impl": f"tltorch ({label})", "skipped": f"{type(err).__name__}: {err}"}
            )
    return rows


def to_markdown(kernels: list[dict], meta: dict) -> str:
    lines = [
        "# decompose_peers: factorch vs tensorly / tensorly-torch on pretrained conv kernels",
        "",
        f"torch {meta['torch']}, tensorly {meta.get('tensorly')}, tensorly-torch {meta.get('tltorch')}, "
        f"{meta['threads']} threads, {meta['platform']}. Time = median of up to {meta['repeats']} runs "
        f"(one run when a decomposition took > {meta['slow_s']} s). rel. error = ||W - W_hat|| / ||W||; "
        "max term = largest CP rank-one-term norm / ||W||. Tucker-2 ranks = half of each channel dim; CP "
        f"rank R = closest CP-4 parameter count to that Tucker-2; CP n_iter_max = {meta['cp_iters']} for "
        "both libraries; other options at each library's defaults (tensorly partial_tucker tol=1e-4, "
        "factorch tucker2 tol=1e-10).",
        "",
        "| kernel | shape | method | implementation | rank | time s | rel. error | max term | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in kernels:
        for r in k["rows"]:
            if "skipped" in r:
                cells = [
                    k["kernel"],
                    "x".join(map(str, k["shape"])),
                    r["method"],
                    r["impl"],
                    "-",
                    "-",
                    "-",
                    "-",
                    f"skipped: {r['skipped']}",
                ]
            else:
                rank = r["rank"] if isinstance(r["rank"], int) else "x".join(map(str, r["rank"]))
                params = r.get("params", k["params"].get(r["method"]))
                cells = [
                    k["kernel"],
                    "x".join(map(str, k["shape"])),
                    r["method"],
                    r["impl"],
                    str(rank),
                    f"{r['time_s']:.3f}" + ("" if r["runs"] > 1 else " (1 run)"),
                    f"{r['rel_error']:.4f}",
                    f"{r['max_term_norm_rel']:.3g}" if "max_term_norm_rel" in r else "-",
                    str(params) if params is not None else "-",
                ]
            lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def save(kernels: list[dict], meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decompose_peers.json").write_text(json.dumps({"meta": meta, "kernels": kernels}, indent=2))
    (RESULTS / "decompose_peers.md").write_text(to_markdown(kernels, meta))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-s", type=float, default=30.0)
    parser.add_argument("--cp-iters", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-cp", action="store_true")
    parser.add_argument("--limit-s", type=float, default=120.0, help="stop one decomposition call after this")
    args = parser.parse_args(argv)
    LIMIT_S[0] = args.limit_s
    torch.set_num_threads(args.threads)

    import tensorly

    try:
        import tltorch

        tltorch_version = getattr(tltorch, "__version__", "installed")
    except ImportError:
        tltorch_version = None
    meta = {
        "torch": torch.__version__,
        "factorch": factorch.__version__,
        "tensorly": tensorly.__version__,
        "tltorch": tltorch_version,
        "threads": args.threads,
        "platform": platform.platform(),
        "repeats": args.repeats,
        "slow_s": args.slow_s,
        "cp_iters": args.cp_iters,
        "limit_s": args.limit_s,
    }
    models: dict[str, torch.nn.Module] = {}
    kernels: list[dict] = []
    for model_name, layer_name in KERNELS:
        if model_name not in models:
            models[model_name] = factorch.models.create_model(model_name, pretrained=True).eval()
        conv = models[model_name].get_submodule(layer_name)
        w = conv.weight.detach().clone()
        c_out, c_in, kh, kw = w.shape
        ranks = (c_out // 2, c_in // 2)
        tucker_params = c_out * ranks[0] + ranks[0] * ranks[1] * kh * kw + ranks[1] * c_in
        cp_rank = max(1, round(tucker_params / (c_out + c_in + kh + kw)))
        cp_rank = min(cp_rank, factorch.decompose.cp_max_rank(w.shape))
        entry = {
            "kernel": f"{model_name} {layer_name}",
            "shape": list(w.shape),
            "dense_params": w.numel(),
            "tucker_ranks": list(ranks),
            "cp_rank": cp_rank,
            "params": {"tucker2": tucker_params, "cp": cp_rank * (c_out + c_in + kh + kw)},
            "rows": [],
        }
        kernels.append(entry)
        print(
            f"{entry['kernel']} {tuple(w.shape)}: Tucker-2 {ranks} ({tucker_params} params), CP R={cp_rank} "
            f"({entry['params']['cp']} params), dense {w.numel()}",
            flush=True,
        )
        steps = [
            lambda: tucker_rows(w, ranks, args.repeats, args.slow_s),
            lambda: tltorch_rows(conv, ranks, args.repeats, args.slow_s),
        ]
        if not args.skip_cp:
            steps.append(lambda: cp_rows(w, cp_rank, args.cp_iters, args.repeats, args.slow_s))
        for label, step in zip(("tucker2", "tltorch", "cp"), steps):
            try:
                new_rows = step()
            except CallTimeout:
                new_rows = [
                    {
                        "method": label,
                        "impl": "(rest of this group)",
                        "skipped": f"a call ran past --limit-s={args.limit_s:g} s",
                    }
                ]
            for r in new_rows:
                entry["rows"].append(r)
                print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            save(kernels, meta)
    print(to_markdown(kernels, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
