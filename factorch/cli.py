"""The ``factorch`` command line (this module only parses arguments and calls the public API)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from factorch.auto.config import AutoConfig
from factorch.registry import list_methods

DESCRIPTION = (
    "factorch makes trained PyTorch networks smaller and faster - factorization (Tucker-2, CP, SVD, spatial SVD, "
    "tensor-train), unstructured and structured pruning, or a per-layer mix chosen for a whole-network budget - "
    "and measures the gain: parameters, MACs, bytes on disk, measured latency and accuracy, before and after."
)

# a wide console when output is not a terminal (files, pipes, CI logs), so tables keep one line per row; cells
# that do not fit a narrow terminal fold onto more lines, never cut short
console = Console() if Console().is_terminal else Console(width=240)


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")


def _add_auto_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default="tucker2,cp,svd,spatial-svd", help="methods the target search may use")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of latency measurements and targets")
    p.add_argument("--round-to", type=int, default=1, help="ranks are multiples of this")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"], help="runtime timed for latency")
    p.add_argument(
        "--calib", type=int, default=AutoConfig.calib_samples, help="training images used to score candidate layers"
    )
    p.add_argument("--refine", type=int, default=1, help="rounds of in-context re-scoring of the chosen layers")
    p.add_argument(
        "--polish",
        type=int,
        default=AutoConfig.polish,
        help="choices the local search after refinement may try, one whole-network measurement each (0: off)",
    )
    p.add_argument(
        "--stable-cp",
        action="store_true",
        help="score and build CP layers with the stabilising correction (for heavy fine-tuning or quantisation)",
    )


def _add_prune_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sparsity", type=float, default=0.5, help="prune: share of the weights removed, in [0, 1)")
    p.add_argument(
        "--scope",
        default="global",
        choices=["global", "layer"],
        help="prune: one magnitude threshold across layers (global) or the same sparsity in each (layer)",
    )


def _auto_config(args: argparse.Namespace, target: str):
    return AutoConfig(
        target,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        batch_size=args.batch_size,
        round_to=args.round_to,
        runtime=args.runtime,
        calib_samples=args.calib,
        refine=args.refine,
        polish=args.polish,
        stable_cp=args.stable_cp,
        fold_bn=getattr(args, "fold_bn", None),  # None: folded for latency targets
        threads=getattr(args, "threads", None),
    )


def _calibration(args: argparse.Namespace, n: int):
    from factorch.data import calibration_subset, fashion_mnist

    train = fashion_mnist("train", args.data_root, augment=False)
    return torch.utils.data.DataLoader(calibration_subset(train, min(n, len(train))), batch_size=128)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape must be integers like 1,1,28,28, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"input shape must be positive integers like 1,1,28,28, got {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factorch", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a reference model on Fashion-MNIST")
    p.add_argument("model", help="registry name (see `factorch models`) or package.module:factory")
    p.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist"])
    p.add_argument("--data-root", default=None, help="folder with the IDX files")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (checkpoint, weights, model card)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    _add_threads(p)

    p = sub.add_parser("evaluate", help="test accuracy and loss on Fashion-MNIST")
    p.add_argument("model", help="registry name, saved folder, checkpoint, or package.module:factory")
    p.add_argument("--pretrained", action="store_true", help="load the shipped Fashion-MNIST weights")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_threads(p)

    p = sub.add_parser("profile", help="per-layer parameters and MACs")
    p.add_argument("model", help="registry name, saved folder, checkpoint, or package.module:factory")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--input-shape", type=_parse_shape, default=(1, 1, 28, 28))
    p.add_argument("--latency", action="store_true", help="also measure latency at batch 1 and 64")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_threads(p)

    p = sub.add_parser("score", help="complexity score (effdl or MicroNet rules), per layer and in total")
    p.add_argument("model", help="registry name, saved folder, checkpoint, or package.module:factory")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--input-shape", type=_parse_shape, default=(1, 1, 28, 28))
    p.add_argument("--rules", default="effdl", choices=["effdl", "micronet-cifar100", "micronet-imagenet"])
    p.add_argument("--free-16bit", dest="free_16bit", action="store_true", default=None,
                   help="count values wider than 16 bits as 16 bits (MicroNet rules: the default)")  # fmt: skip
    p.add_argument("--no-free-16bit", dest="free_16bit", action="store_false")
    p.add_argument("--json", action="store_true", help="print the score as JSON")

    p = sub.add_parser("benchmark", help="latency per runtime: a model, or a compressed model against its original")
    p.add_argument("model", help="registry name, saved folder (compressed: timed against its base model), checkpoint")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--against", default=None, help="the dense model to compare with (default: a compressed "
                   "folder's base model; none for a plain model)")  # fmt: skip
    p.add_argument("--runtimes", default="torch,onnxruntime", help="comma-separated: torch, onnxruntime, compile")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--input-shape", type=_parse_shape, default=(1, 1, 28, 28))
    p.add_argument("--json", action="store_true")
    _add_threads(p)

    p = sub.add_parser(
        "challenge", help="lowest complexity score that keeps an accuracy floor: search, compress, distil, repeat"
    )
    p.add_argument("model", help="registry name, saved folder, checkpoint, or package.module:factory")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--rules", default="effdl", choices=["effdl", "micronet-cifar100", "micronet-imagenet"])
    p.add_argument("--min-accuracy", type=float, required=True, help="the floor, in %% on the validation split")
    p.add_argument("--out", required=True, help="the run's folder (resumed when it holds one)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: every searchable one)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs in all")
    p.add_argument("--epochs-per-try", type=int, default=1)
    p.add_argument("--val-size", type=int, default=5000, help="training images held out for the floor")
    p.add_argument(
        "--reference-accuracy",
        default="card",
        help="the dense model's accuracy on unseen data, in %%: the validation floor is raised by its gap to the "
        "dense validation accuracy (default 'card': the model card's test accuracy for --pretrained registry "
        "models; 'none': the floor as given)",
    )
    p.add_argument(
        "--bits",
        default=None,
        help="quantize every try after its factorization search: weight bits, or weight,activation bits (e.g. 4 "
        "or 4,8); the first conv and the classifier at --edge-bits",
    )
    p.add_argument("--edge-bits", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help="distillation learning rate (0.01; with --bits 0.001)")
    p.add_argument(
        "--structure",
        choices=("factorize", "channels"),
        default="factorize",
        help="how each try shrinks the network before quantizing: an AutoConfig factorization search over "
        "--methods, or whole channels pruned (the same share of every group) to the largest MACs that meet the score",
    )
    p.add_argument(
        "--float-epochs",
        type=int,
        default=0,
        help="with --bits: of each try's --epochs-per-try, these distil before quantizing (lr 0.01), the rest after",
    )
    p.add_argument("--calib", type=int, default=512, help="calibration images per search")
    p.add_argument("--first", type=float, default=0.1, help="first target, a fraction of the dense score")
    p.add_argument("--step", type=float, default=0.4, help="each next target this much lower while the floor holds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-shape", type=_parse_shape, default=(1, 1, 28, 28))
    p.add_argument("--data-root", default=None)
    _add_threads(p)

    p = sub.add_parser("compress", help="compress a model's layers (any method, or a budget) and report before/after")
    p.add_argument("model", help="registry name, saved folder, checkpoint, or package.module:factory")
    p.add_argument("--pretrained", action="store_true", help="start from the shipped Fashion-MNIST weights")
    p.add_argument("--method", choices=list_methods(cli=True), help="one method for all layers")
    p.add_argument(
        "--target",
        default=None,
        help="instead of --method/--rank: a whole-model goal macs=F | params=F | size=F | latency=F (keep fraction "
        "F; params counts non-zeros); methods and options are chosen per layer",
    )
    _add_auto_options(p)
    p.add_argument(
        "--rank",
        default="vbmf",
        help="vbmf | vbmf:W | energy:0.95 | params:0.25 | macs:0.33 | a fraction like 0.5 | an int like 16",
    )
    p.add_argument("--form", default="4", choices=["4", "3"], help="CP form (4 factors or MobileNet-like 3)")
    _add_prune_options(p)
    p.add_argument(
        "--fold-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fold BatchNorm into the preceding conv first (default: only for --target latency=F)",
    )
    p.add_argument("--allow-larger", action="store_true", help="keep layers that do not get smaller")
    p.add_argument("--input-shape", type=_parse_shape, default=(1, 1, 28, 28))
    p.add_argument("--out", required=True, help="folder for the compressed model, report.md and report.json")
    p.add_argument("--no-eval", action="store_true", help="skip the test-accuracy evaluation")
    p.add_argument(
        "--calibrate",
        type=int,
        default=0,
        metavar="N",
        help="refit the factorized layers to the dense responses on N training images (0: off)",
    )
    p.add_argument("--data-root", default=None)
    p.add_argument(
        "--stages",
        type=int,
        default=1,
        metavar="K",
        help="multi-stage (MUSCO): K rounds of compress + fine-tune, shrinking the factorized layers further each "
        "round toward the target (geometric steps for --target macs=F or --rank macs:F; --rank vbmf is re-applied)",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=None,
        metavar="E",
        help="distillation epochs on the training set after each stage (default: 1 with --stages > 1, else 0)",
    )
    p.add_argument("--finetune-lr", type=float, default=0.01, help="learning rate of the fine-tuning")
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=None,
        metavar="D",
        help="stages: stop, keeping the previous stage, when test accuracy falls more than D points",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning (stage i uses seed + i - 1)")
    p.add_argument("--resume", action="store_true", help="continue the staged run in OUT/stages")
    _add_threads(p)

    p = sub.add_parser(
        "prune",
        help="prune a model: unstructured (--sparsity) or whole channels (--target, physically smaller layers)",
    )
    p.add_argument("model", help="registry name, saved folder, checkpoint, or package.module:factory")
    p.add_argument("--pretrained", action="store_true", help="start from the shipped Fashion-MNIST weights")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--sparsity", type=float, help="unstructured: share of the weights removed, in [0, 1)")
    goal.add_argument(
        "--target",
        help="structured: macs=F, params=F or latency=F (measured) of the whole model (implies --structured)",
    )
    p.add_argument("--structured", action="store_true", help="remove whole filters / channels / neurons")
    p.add_argument(
        "--scope", default="global", choices=["global", "layer"], help="unstructured: one threshold, or per layer"
    )
    p.add_argument(
        "--criterion",
        default="l1",
        choices=["l1", "bn-scale", "activation"],
        help="structured: how channels are ranked (filter L1 norm, BatchNorm scale, feature-map magnitude)",
    )
    p.add_argument(
        "--allocation",
        default="auto",
        choices=["auto", "global", "uniform", "levels"],
        help="structured: channels ranked across the network, the same share from every layer, one share per "
        "feature-map size searched by measured damage (and latency), or whichever keeps the outputs closest to "
        "the unpruned model's on the calibration images",
    )
    p.add_argument(
        "--max-latency",
        type=float,
        default=None,
        metavar="F",
        help="structured: also run in at most F x the dense latency, measured on --runtime at --batch-size",
    )
    p.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"], help="where latency is measured")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the latency measurements")
    p.add_argument("--steps", type=int, default=1, metavar="K", help="prune in K steps, fine-tuning after each")
    p.add_argument(
        "--schedule", default="polynomial", choices=["polynomial", "linear"], help="sparsity steps (Zhu & Gupta / Han)"
    )
    p.add_argument("--finetune-epochs", type=int, default=None, metavar="E", help="distillation epochs per step")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--calib", type=int, default=1024, help="structured, criterion activation: training images used")
    p.add_argument(
        "--calibrate",
        type=int,
        default=1024,
        metavar="N",
        help="structured: refit each layer that lost input channels to the dense responses on N training images "
        "(least squares, no labels; 0: off)",
    )
    p.add_argument("--input-shape", type=_parse_shape, default=(1, 1, 28, 28))
    p.add_argument("--out", required=True, help="folder for the pruned model, report.md and report.json")
    p.add_argument("--no-eval", action="store_true", help="skip the test-accuracy evaluation")
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the stepped run in OUT/stages")
    _add_threads(p)

    p = sub.add_parser(
        "quantize",
        help="quantize a model: int8 (or 2-8 bit, half) weights and activations, binary weights, or k-means "
        "weight sharing; calibrated on training images, optionally fine-tuned with distillation",
    )
    p.add_argument("model", help="registry name, saved folder, checkpoint, or package.module:factory")
    p.add_argument("--pretrained", action="store_true", help="start from the shipped Fashion-MNIST weights")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--binary", choices=["binaryconnect", "bwn", "xnor"], help="binary weights in this mode")
    kind.add_argument("--kmeans", metavar="BITS", help="k-means weight sharing at BITS (1-8) or 'elbow'")
    p.add_argument("--weight-bits", type=int, default=8, help="2-8, 16 (half) or 32 (float)")
    p.add_argument("--act-bits", type=int, default=8, help="2-8, 16 (half) or 32 (weights only)")
    p.add_argument("--observer", default="minmax", choices=["minmax", "percentile", "mse"])
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per channel)")
    p.add_argument("--calib", type=int, default=512, help="training images that set the activation ranges")
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="E", help="distillation epochs after (QAT)")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--pack", action="store_true", help="save in Deep Compression's Huffman-coded format")
    p.add_argument("--input-shape", type=_parse_shape, default=(1, 1, 28, 28))
    p.add_argument("--out", required=True, help="folder for the quantized model, report.md and report.json")
    p.add_argument("--no-eval", action="store_true", help="skip the test-accuracy evaluation")
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=0)
    _add_threads(p)

    p = sub.add_parser("export", help="export a model to ONNX (float32, or static int8 that ONNX Runtime runs fast)")
    p.add_argument("model", help="registry name, saved folder, checkpoint, or package.module:factory")
    p.add_argument("--pretrained", action="store_true", help="start from the shipped Fashion-MNIST weights")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--int8", action="store_true", help="static QDQ int8, per-channel weights (ONNX Runtime)")
    p.add_argument("--calib", type=int, default=512, help="int8: training images that set the activation ranges")
    p.add_argument("--input-shape", type=_parse_shape, default=(1, 1, 28, 28))
    p.add_argument("--time", action="store_true", help="time the exported model on ONNX Runtime (batch 1 and 64)")
    p.add_argument("--data-root", default=None)
    _add_threads(p)

    p = sub.add_parser("finetune", help="fine-tune a compressed model, optionally distilling from the original")
    p.add_argument("dir", help="a folder written by `factorch compress`")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--distill", action="store_true", help="distil from the original (teacher) network")
    p.add_argument("--teacher", default=None, help="teacher model (default: the pretrained model DIR came from)")
    p.add_argument("--hints", default=None, help="FitNets hints: student=teacher module pairs, comma-separated")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the distillation term")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for the fine-tuned model, checkpoint and history")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--data-root", default=None)
    _add_threads(p)

    p = sub.add_parser("sweep", help="AutoConfig at several targets: accuracy vs MACs and measured latency")
    p.add_argument("model", help="registry name, saved folder, checkpoint, or package.module:factory")
    p.add_argument("--pretrained", action="store_true", help="start from the shipped Fashion-MNIST weights")
    p.add_argument("--targets", default="0.5,0.33,0.25,0.2", help="comma-separated fractions to keep")
    p.add_argument("--kind", default="macs", choices=["macs", "params", "latency"], help="what the fractions bound")
    p.add_argument("--baseline", default="tucker2", help="method of the uniform-ratio baseline ('none' to skip)")
    _add_auto_options(p)
    p.add_argument("--input-shape", type=_parse_shape, default=(1, 1, 28, 28))
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", required=True, help="folder for sweep.json, sweep.md and the PNG plots")
    _add_threads(p)

    p = sub.add_parser("models", help="list the reference models")
    p.add_argument("pattern", nargs="?", default="*")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from factorch.data import fashion_mnist
    from factorch.models._resolve import MODEL_JSON, WEIGHTS, architecture_spec, build_model
    from factorch.train import TrainConfig, evaluate, train

    out = Path(args.out)
    model = build_model(args.model)
    train_set = fashion_mnist("train", args.data_root, seed=args.seed)
    test_set = fashion_mnist("test", args.data_root)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed
    )
    spec = architecture_spec(args.model)
    if (out / "checkpoint.pt").is_file() and not args.resume:
        raise SystemExit(f"error: {out}/checkpoint.pt exists; pass --resume to continue it or choose another --out")

    def report(epoch: int, m: dict) -> None:
        console.print(
            f"epoch {epoch}: train loss {m['train_loss']:.4f}, train acc {m['train_accuracy']:.2f} %, "
            f"test acc {m['test_accuracy']:.2f} %, {m['wall_time_s']:.0f} s"
        )

    result = train(
        model,
        train_set,
        config,
        out_dir=out,
        test_data=test_set,
        resume=args.resume,
        extra_state=spec,
        on_epoch_end=report,
    )
    final = evaluate(model, test_set, show_progress=False)
    torch.save(model.state_dict(), out / WEIGHTS)
    (out / MODEL_JSON).write_text(json.dumps(spec, indent=2) + "\n")
    card = {
        "model": args.model,
        "command": "factorch " + " ".join(shlex.quote(a) for a in args.argv),
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "wall_time_s": round(result.wall_time_s, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "test_accuracy": round(final["accuracy"], 2),
        "test_loss": round(final["loss"], 4),
        "history": result.history,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    console.print(
        f"[bold green]done[/]: test accuracy {final['accuracy']:.2f} %, wall time "
        f"{result.wall_time_s:.0f} s; saved {out / WEIGHTS}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from factorch.data import fashion_mnist
    from factorch.resolve import load_model
    from factorch.train import evaluate

    model = load_model(args.model, pretrained=args.pretrained)
    t0 = time.perf_counter()
    result = evaluate(model, fashion_mnist("test", args.data_root), show_progress=not args.json)
    result["wall_time_s"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps(result))
    else:
        console.print(
            f"{args.model}: test accuracy [bold]{result['accuracy']:.2f} %[/], loss {result['loss']:.4f} "
            f"({result['samples']} images)"
        )
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from factorch.profiling import measure_latency, profile
    from factorch.resolve import load_model

    model = load_model(args.model, pretrained=args.pretrained)
    report = profile(model, input_shape=args.input_shape)
    latency = None
    if args.latency:
        latency = measure_latency(model, input_shape=args.input_shape, batch_sizes=(1, 64), threads=args.threads)
    if args.json:
        out = report.to_dict()
        if latency is not None:
            out["latency"] = latency.to_dict()
        print(json.dumps(out))
        return 0
    report.print(console)
    if latency is not None:
        console.print(latency.to_markdown())
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from factorch.benchmark import benchmark_runtimes
    from factorch.resolve import load_model

    model = load_model(args.model, pretrained=args.pretrained)
    dense, compressed = model, None
    if args.against:
        dense, compressed = load_model(args.against, pretrained=True), model
    elif (Path(args.model) / "plan.json").is_file():
        plan = json.loads((Path(args.model) / "plan.json").read_text())
        if not plan.get("base"):
            raise ValueError(f"{args.model} was made from a model outside the registry: pass --against DENSE")
        from factorch.models._resolve import build_from_spec

        dense, compressed = build_from_spec(plan["base"], args.model).eval(), model
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    runtimes = tuple(r.strip() for r in args.runtimes.split(","))
    result = benchmark_runtimes(dense, compressed, torch.zeros(*args.input_shape), runtimes=runtimes,
                                batch_sizes=sizes, repeats=args.repeats, threads=args.threads)  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        console.print(result.to_markdown(), markup=False, highlight=False)
    return 0


def _bits(text: str | None) -> tuple[int, int] | None:
    """``--bits``: ``4`` (weights and activations) or ``4,8``."""
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--bits takes W or W,A (integers), got {text!r}") from None
    if len(parts) not in (1, 2):
        raise ValueError(f"--bits takes W or W,A (integers), got {text!r}")
    return parts[0], parts[-1]


def _reference_accuracy(text: str, model: str, pretrained: bool) -> float | None:
    """``--reference-accuracy``: a number, ``none``, or ``card`` (a pretrained registry model's card)."""
    if text.lower() == "none":
        return None
    if text.lower() != "card":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--reference-accuracy must be a number, 'card' or 'none', got {text!r}") from None
    from factorch.models import is_model, model_card

    if pretrained and is_model(model):
        return float(model_card(model)["test_accuracy"])
    return None


def cmd_challenge(args: argparse.Namespace) -> int:
    from factorch.challenge import challenge
    from factorch.data import fashion_mnist
    from factorch.resolve import load_model

    model = load_model(args.model, pretrained=args.pretrained)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    reference = _reference_accuracy(args.reference_accuracy, args.model, args.pretrained)
    if reference is not None:
        console.print(f"reference accuracy {reference:g} % (the validation floor follows the dense model's gap to it)")
    result = challenge(
        model, fashion_mnist("train", args.data_root), example_inputs=torch.zeros(*args.input_shape),
        min_accuracy=args.min_accuracy, out_dir=args.out, rules=args.rules, methods=methods, epochs=args.epochs,
        epochs_per_try=args.epochs_per_try, test_data=fashion_mnist("test", args.data_root), val_size=args.val_size,
        val_data=fashion_mnist("train", args.data_root, augment=False), reference_accuracy=reference,
        calib_samples=args.calib, first=args.first, step=args.step, seed=args.seed, bits=_bits(args.bits),
        edge_bits=args.edge_bits, lr=args.lr, structure=args.structure, float_epochs=args.float_epochs,
    )  # fmt: skip
    console.print(result.to_markdown(), markup=False, highlight=False)
    console.print(f"saved to {args.out} (final/, report.md, report.json, accuracy_vs_score.png, challenge.json)")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import factorch
    from factorch.resolve import load_model

    model = load_model(args.model, pretrained=args.pretrained)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros(*args.input_shape, dtype=dtype)
    result = factorch.score(model, example_inputs=x, rules=args.rules, free_16bit=args.free_16bit)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        console.print(result.to_markdown(), markup=False, highlight=False)
    return 0


def _method_config(args: argparse.Namespace):
    from factorch.config import PruneConfig, config_for_method

    if args.method == "prune":
        return PruneConfig(sparsity=args.sparsity, scope=args.scope, fold_bn=bool(args.fold_bn))
    config = config_for_method(args.method, fold_bn=bool(args.fold_bn))
    if hasattr(config, "allow_larger"):
        config.allow_larger = args.allow_larger
    if args.method == "cp":
        config.form = args.form
    return config.with_option(_rank_arg(args.rank))


def _rank_arg(text: str):
    text = text.strip()
    if text.isdigit():
        return int(text)
    if "," in text:
        return tuple(int(t) for t in text.split(","))
    try:
        return float(text)
    except ValueError:
        return text


def cmd_compress(args: argparse.Namespace) -> int:
    import factorch
    from factorch.resolve import load_model

    model = load_model(args.model, pretrained=args.pretrained)
    x = torch.randn(*args.input_shape)
    if (args.method is None) == (args.target is None):
        raise ValueError("give exactly one of --method (with --rank) and --target (e.g. --target macs=0.33)")
    t0 = time.perf_counter()
    calibrate = factorch.CalibrationConfig(n_samples=args.calibrate) if args.calibrate else None
    if args.stages != 1 or args.finetune_epochs or args.resume or args.max_accuracy_drop is not None:
        return _compress_in_stages(args, model, x, calibrate, t0)
    if args.target is not None:
        config = _auto_config(args, args.target)
        config.calibrate = calibrate
        n = max(config.calib_samples, args.calibrate)
        compressed, report = factorch.compress(model, config, example_inputs=x, calib_data=_calibration(args, n))
    else:
        config = _method_config(args)
        config.calibrate = calibrate
        calib = _calibration(args, args.calibrate) if calibrate else None
        compressed, report = factorch.compress(model, config, example_inputs=x, calib_data=calib)
    report.totals["compress_time_s"] = round(time.perf_counter() - t0, 2)
    if not args.no_eval:
        from factorch.data import fashion_mnist
        from factorch.train import evaluate

        test = fashion_mnist("test", args.data_root)
        before = evaluate(model, test, description="evaluate dense")
        after = evaluate(compressed, test, description="evaluate compressed")
        report.totals.update(accuracy_before=round(before["accuracy"], 2), accuracy_after=round(after["accuracy"], 2))
    _write_compressed(args, compressed, report)
    return 0


def _compress_in_stages(args: argparse.Namespace, model, x, calibrate, t0: float) -> int:
    """``compress --stages K``: compress, fine-tune by distillation from the original, repeat."""
    import factorch
    from factorch.data import fashion_mnist
    from factorch.train import evaluate

    if args.stages < 1:
        raise ValueError(f"--stages must be >= 1, got {args.stages}")
    epochs = args.finetune_epochs if args.finetune_epochs is not None else (1 if args.stages > 1 else 0)
    if epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {epochs}")
    if args.max_accuracy_drop is not None and args.no_eval:
        raise ValueError("--max-accuracy-drop needs the test-accuracy evaluation: drop --no-eval")
    if args.target is not None:
        config = _auto_config(args, args.target)
        config.calibrate = calibrate
        calib = _calibration(args, max(config.calib_samples, args.calibrate))
    else:
        config = _method_config(args)
        config.calibrate = calibrate
        calib = _calibration(args, args.calibrate) if calibrate else None
    out = Path(args.out)
    train = fashion_mnist("train", args.data_root)
    test = None if args.no_eval else fashion_mnist("test", args.data_root)
    eval_fn = None if test is None else (lambda m: evaluate(m, test, show_progress=False)["accuracy"])

    def report_stage(stage: int, record: dict) -> None:
        score = record["score_finetuned"] if record["score_finetuned"] is not None else record["score_compressed"]
        console.print(
            f"stage {stage}/{args.stages} ({record['target']}): params x{record['params_ratio']:.3f}, MACs "
            f"x{record['macs_ratio']:.3f}"
            + (f", test accuracy {score:.2f} %" if score is not None else "")
            + f" - {record['status']}"
        )

    compressed, report = factorch.compress_in_stages(
        model,
        config,
        stages=args.stages,
        train_data=train,
        example_inputs=x,
        calib_data=calib,
        finetune_epochs=epochs,
        eval_fn=eval_fn,
        max_accuracy_drop=args.max_accuracy_drop,
        checkpoint_dir=out / "stages",
        resume=args.resume,
        lr=args.finetune_lr,
        seed=args.seed,
        on_stage_end=report_stage,
    )
    report.totals["compress_time_s"] = round(time.perf_counter() - t0, 2)
    if eval_fn is not None:
        report.totals.update(
            accuracy_before=round(report.totals["score_before"], 2),
            accuracy_after=round(report.totals["score_after"], 2),
        )
    _write_compressed(args, compressed, report)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    import factorch
    from factorch.data import fashion_mnist
    from factorch.resolve import load_model
    from factorch.train import evaluate

    model = load_model(args.model, pretrained=args.pretrained)
    x = torch.randn(*args.input_shape)
    if args.sparsity is not None and args.structured:
        raise ValueError("--structured prunes to a --target (macs=F or params=F), not to a --sparsity")
    if args.sparsity is not None:
        config = factorch.PruneConfig(sparsity=args.sparsity, scope=args.scope)
    else:
        config = factorch.ChannelPruneConfig(
            args.target,
            criterion=args.criterion,
            allocation=args.allocation,
            max_latency=args.max_latency,
            runtime=args.runtime,
            batch_size=args.batch_size,
        )
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    epochs = args.finetune_epochs if args.finetune_epochs is not None else (1 if args.steps > 1 else 0)
    if epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {epochs}")
    t0 = time.perf_counter()
    calib, calibrate = None, None
    structured = isinstance(config, factorch.ChannelPruneConfig)
    needs_calib = config.criterion == "activation" or config.allocation in ("auto", "levels") if structured else False
    if structured and (needs_calib or config.latency_bound is not None or args.calibrate):
        calib = _calibration(args, max(args.calib, args.calibrate))
    if structured and args.calibrate:
        calibrate = factorch.CalibrationConfig(n_samples=args.calibrate)
    test = None if args.no_eval else fashion_mnist("test", args.data_root)
    if args.steps == 1 and epochs == 0:
        pruned, report = factorch.compress(model, config, example_inputs=x, calib_data=calib, calibrate=calibrate)
    else:
        eval_fn = None if test is None else (lambda m: evaluate(m, test, show_progress=False)["accuracy"])
        pruned, report = factorch.compress_in_stages(
            model,
            config,
            stages=args.steps,
            train_data=fashion_mnist("train", args.data_root),
            example_inputs=x,
            calib_data=calib,
            finetune_epochs=epochs,
            eval_fn=eval_fn,
            checkpoint_dir=Path(args.out) / "stages",
            resume=args.resume,
            lr=args.finetune_lr,
            seed=args.seed,
            schedule=args.schedule,
            calibrate=calibrate,
        )
    report.totals["compress_time_s"] = round(time.perf_counter() - t0, 2)
    if (chosen := report.totals.get("allocation")) is not None:
        why = chosen.get("why") or ", ".join(f"{a} {d:.4g}" for a, d in chosen["damage"].items()) + " (output KL)"
        if chosen.get("latency"):
            why += "; latency x dense: " + ", ".join(f"{a} {v:.3f}" for a, v in chosen["latency"].items())
        console.print(f"channel allocation: {chosen['allocation']} ({why})")
        if chosen.get("levels"):
            found = chosen["levels"]
            shares = ", ".join(f"{lvl} {s:g}" for lvl, s in zip(found["levels"], found["shares"]))
            console.print(f"channels kept per feature-map size: {shares} ({found['seconds']:.0f} s search)")
    if test is not None:
        before = evaluate(model, test, description="evaluate dense")
        after = evaluate(pruned, test, description="evaluate pruned")
        report.totals.update(accuracy_before=round(before["accuracy"], 2), accuracy_after=round(after["accuracy"], 2))
    _write_compressed(args, pruned, report)
    return 0


def _write_compressed(args: argparse.Namespace, compressed, report) -> None:
    import factorch

    out = Path(args.out)
    factorch.save(compressed, out)
    (out / "report.md").write_text(report.to_markdown())
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    report.print(console)
    t = report.totals
    line = (
        f"params {t['params_before']:,} -> {t['params_after']:,} (x{t['params_ratio']:.3f}), "
        f"MACs {t['macs_before']:,} -> {t['macs_after']:,} (x{t['macs_ratio']:.3f})"
    )
    if t.get("nonzero_params_ratio") is not None and t["nonzero_params_ratio"] < t["params_ratio"] - 1e-9:
        line += f", non-zero params x{t['nonzero_params_ratio']:.3f}"
    if t.get("size_bytes") is not None:
        line += f", {t['size_bytes']:,} bytes stored (x{t['size_ratio']:.3f})"
    if t.get("latency_ratio") is not None:
        line += (
            f", measured time x{t['latency_ratio']:.3f} at batch {t['latency_batch_size']}"
            f" (x{t['latency_ratio_b1']:.3f} at batch 1)"
        )
    if "accuracy_after" in t:
        line += f", test accuracy {t['accuracy_before']:.2f} % -> {t['accuracy_after']:.2f} %"
    console.print(f"[bold]{line}[/]")
    for warning in t.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"saved to {out} (plan.json, weights.pt, report.md, report.json)")


def cmd_quantize(args: argparse.Namespace) -> int:
    import factorch
    from factorch.data import fashion_mnist
    from factorch.resolve import load_model
    from factorch.train import evaluate

    model = load_model(args.model, pretrained=args.pretrained)
    x = torch.randn(*args.input_shape)
    if args.binary:
        config = factorch.BinaryConfig(mode=args.binary)
    elif args.kmeans:
        config = factorch.KMeansConfig(bits=args.kmeans if args.kmeans == "elbow" else int(args.kmeans))
    else:
        config = factorch.QuantConfig(
            weight_bits=args.weight_bits, act_bits=args.act_bits, observer=args.observer,
            per_channel=not args.per_tensor, calib_samples=args.calib,
        )  # fmt: skip
    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    calib = _calibration(args, args.calib) if config.uses_calib_data else None
    t0 = time.perf_counter()
    quantized, report = factorch.compress(model, config, example_inputs=x, calib_data=calib)
    if args.finetune_epochs:
        quantized = factorch.finetune(
            quantized, fashion_mnist("train", args.data_root), teacher=model, epochs=args.finetune_epochs,
            lr=args.finetune_lr, seed=args.seed, out_dir=Path(args.out) / "finetune", resume=True, inplace=True,
        )  # fmt: skip
    report.totals["compress_time_s"] = round(time.perf_counter() - t0, 2)
    if not args.no_eval:
        test = fashion_mnist("test", args.data_root)
        before = evaluate(model, test, description="evaluate float")["accuracy"]
        after = evaluate(quantized, test, description="evaluate quantized")["accuracy"]
        report.totals.update(accuracy_before=round(before, 2), accuracy_after=round(after, 2))
    _write_compressed(args, quantized, report)
    if args.pack:
        factorch.save(quantized, Path(args.out), pack=True)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import factorch
    from factorch.resolve import load_model

    model = load_model(args.model, pretrained=args.pretrained)
    x = torch.randn(*args.input_shape)
    calib = _calibration(args, args.calib) if args.int8 else None
    path = factorch.export_onnx(model, args.out, x, int8=args.int8, calib_data=calib)
    console.print(f"wrote {path} ({path.stat().st_size:,} bytes, {'int8 QDQ' if args.int8 else 'float32'})")
    if args.time:
        report = factorch.measure_latency(str(path), x, runtime="onnxruntime", threads=args.threads)
        for size in (1, 64):
            console.print(f"ONNX Runtime, batch {size}: {report.median(size) * 1e3:.3f} ms (median)")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    import factorch
    from factorch.data import fashion_mnist
    from factorch.resolve import load_model
    from factorch.train import evaluate

    model = factorch.load(args.dir)
    teacher = None
    if args.distill or args.hints:
        if args.teacher is not None:
            teacher = load_model(args.teacher, pretrained=True)
        else:
            plan = json.loads((Path(args.dir) / "plan.json").read_text())
            base = (plan.get("base") or {}).get("architecture")
            if not base:
                raise ValueError(f"{args.dir} does not say which model it came from: pass --teacher")
            teacher = load_model(base, pretrained=True)
    hints = None
    if args.hints:
        pairs = [h.split("=") for h in args.hints.split(",") if h.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"--hints takes student=teacher pairs separated by commas, got {args.hints!r}")
        hints = {a.strip(): b.strip() for a, b in pairs}
    train = fashion_mnist("train", args.data_root)
    test = fashion_mnist("test", args.data_root)
    out = Path(args.out)
    if (out / "checkpoint.pt").is_file() and not args.resume:
        raise SystemExit(f"{out} already holds a fine-tuning run: pass --resume to continue it, or choose --out")
    before = evaluate(model, test, description="evaluate before")["accuracy"]

    def report(epoch: int, m: dict) -> None:
        console.print(
            f"epoch {epoch}: train loss {m['train_loss']:.4f}, test accuracy {m['test_accuracy']:.2f} % "
            f"(before: {before:.2f} %)"
        )

    history: list[dict] = []
    tuned = factorch.finetune(
        model,
        train,
        teacher=teacher,
        epochs=args.epochs,
        temperature=args.temperature,
        alpha=args.alpha,
        hints=hints,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        test_data=test,
        out_dir=out,
        resume=args.resume,
        inplace=True,
        history=history,
        on_epoch_end=report,
    )
    factorch.save(tuned, out)
    summary = {"accuracy_before": round(before, 2), "history": history, "distill": teacher is not None, "hints": hints}
    (out / "finetune.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"saved to {out} (plan.json, weights.pt, checkpoint.pt, finetune.json)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from factorch.auto.sweep import run_sweep
    from factorch.resolve import load_model

    model = load_model(args.model, pretrained=args.pretrained)
    try:
        fractions = [float(t) for t in args.targets.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--targets must be comma-separated numbers, got {args.targets!r}") from None
    configs = [_auto_config(args, f"{args.kind}={f:g}") for f in fractions]
    from factorch.data import fashion_mnist
    from factorch.train import evaluate

    test = fashion_mnist("test", args.data_root)
    result = run_sweep(
        model,
        configs,
        example_inputs=torch.randn(*args.input_shape),
        calib_data=_calibration(args, configs[0].calib_samples if configs else AutoConfig.calib_samples),
        eval_fn=lambda m: evaluate(m, test, show_progress=False)["accuracy"],
        baseline=None if args.baseline == "none" else args.baseline,
        out=Path(args.out),
        title=args.model,
    )
    console.print(result.to_markdown())
    console.print(f"written to {args.out} (sweep.json, sweep.md, sweep_macs.png, sweep_latency.png)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from factorch.models import list_models, weights_path

    for name in list_models(args.pattern):
        console.print(f"{name}{'  (pretrained)' if weights_path(name).is_file() else ''}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "profile": cmd_profile,
    "score": cmd_score,
    "challenge": cmd_challenge,
    "benchmark": cmd_benchmark,
    "compress": cmd_compress,
    "prune": cmd_prune,
    "quantize": cmd_quantize,
    "export": cmd_export,
    "sweep": cmd_sweep,
    "finetune": cmd_finetune,
    "models": cmd_models,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; re-run with --resume to continue from the last checkpoint")
        return 130
