"""Deep Compression (Han et al. 2016) on a reference model, stage by stage, like the paper's table: dense ->
pruned -> weight-shared (k-means) -> centroids fine-tuned -> Huffman-coded; bytes on disk (``factorch.save``)
and test accuracy after each stage.

Every layer is pruned and shared, the first conv and the classifier included, as in the paper. Pruning:
global magnitude pruning to ``--sparsity`` in ``--steps`` steps with ``--prune-epochs`` epochs of
distillation in all (or ``--pruned DIR``: a folder written by ``factorch.save`` / ``factorch prune``); weight
sharing: ``KMeansConfig(bits=--bits)`` on every pruned layer (zeros kept); centroid fine-tuning:
``--share-epochs`` epochs of distillation from the dense model; packing: ``factorch.save(pack=True)``.
Test accuracy on the full test set, measured once per stage, after the stage's choices were made.

Run from the repository root::

    .venv/bin/python benchmarks/deep_compression.py --model vgg --pruned runs/vgg-sparse --bits 5

Writes ``benchmarks/results/deep_compression_<model>.{json,md}``, stamped with the commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch
from _common import commit

import factorch
from factorch.data import fashion_mnist
from factorch.train import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
X = torch.zeros(1, 1, 28, 28)


def stored_bytes(model, pack: bool = False) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        factorch.save(model, tmp, pack=pack)
        return sum(f.stat().st_size for f in Path(tmp).iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vgg")
    parser.add_argument("--pruned", default=None, help="a saved pruned model (else pruned here)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prune-epochs", type=int, default=5)
    parser.add_argument("--bits", type=int, default=5)
    parser.add_argument("--share-epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = fashion_mnist("train"), fashion_mnist("test")
    runs = Path("runs") / f"bench-dc-{args.model}-{args.sparsity:g}-{args.steps}x{args.prune_epochs}-b{args.bits}"
    dense = factorch.models.create_model(args.model, pretrained=True).eval()

    def acc(m) -> float:
        return round(evaluate(m, test, show_progress=False)["accuracy"], 2)

    rows = []

    def row(stage: str, model, pack: bool = False, note: str = "") -> None:
        size = stored_bytes(model, pack)
        rows.append({"stage": stage, "accuracy": acc(model), "bytes": size, "note": note})
        print(json.dumps(rows[-1]), flush=True)

    row("dense float32", dense)
    if args.pruned:
        pruned = factorch.load(args.pruned)
        note = f"loaded from {args.pruned}"
    else:
        pruned, _ = factorch.compress_in_stages(
            dense, factorch.PruneConfig(sparsity=args.sparsity, scope="global"), stages=args.steps, train_data=train,
            example_inputs=X, finetune_epochs=max(1, args.prune_epochs // args.steps),
            checkpoint_dir=runs / "prune", resume=True, keep_edges=False,
        )  # fmt: skip
        note = f"{args.steps} steps, {max(1, args.prune_epochs // args.steps) * args.steps} epochs of distillation"
    row(f"pruned (global magnitude, {args.sparsity:g})", pruned, note=note)
    shared, _ = factorch.compress(pruned, factorch.KMeansConfig(bits=args.bits), example_inputs=X, keep_edges=False)
    row(f"+ weight sharing ({args.bits} bits)", shared, note="k-means, linear init, no training")
    if args.share_epochs:
        shared = factorch.finetune(shared, train, teacher=dense, epochs=args.share_epochs, out_dir=runs / "share",
                                   resume=True, inplace=True)  # fmt: skip
        row("+ centroids fine-tuned", shared, note=f"{args.share_epochs} epoch(s) of distillation")
    row("+ Huffman coding (save(pack=True))", shared, pack=True)
    dense_bytes = rows[0]["bytes"]
    for r in rows:
        r["ratio"] = round(dense_bytes / r["bytes"], 2)
    out = {
        "setup": {"commit": commit(), "torch": torch.__version__, "platform": platform.platform(), **vars(args)},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"deep_compression_{args.model}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"# Deep Compression on {args.model}",
        "",
        f"commit {out['setup']['commit']}, torch {torch.__version__}. Bytes: the files `factorch.save` writes.",
        "",
        "| stage | accuracy % | bytes | smaller x | note |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['stage']} | {r['accuracy']:.2f} | {r['bytes']:,} | {r['ratio']:.1f} | {r['note']} |" for r in rows]
    (RESULTS / f"deep_compression_{args.model}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
