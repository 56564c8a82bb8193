"""Maintainer script: train the shipped ``sal_resnet20`` / ``sal2_resnet20`` / ``shift_resnet20`` weights.

    python scripts/train_sal.py --keep 1 --epochs 8 --threads 1 --out runs/sal_resnet20
    python scripts/ship_pretrained.py runs/sal_resnet20 sal_resnet20
    python scripts/train_sal.py --position-groups 1 --epochs 8 --threads 1 --out runs/shift_resnet20

Starts from the shipped ``resnet20`` (every block conv becomes a Shift Attention Layer initialised from its
kernel), fine-tunes with distillation from ``resnet20`` while each layer's attention schedule moves it to
``keep`` weights per kernel slice, binarises, and writes ``weights.pt`` + ``card.json`` (the format of
``factorch train``). Resumable: run the same command with ``--resume``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from factorch.data import fashion_mnist
from factorch.models import create_model
from factorch.models._resolve import MODEL_JSON, WEIGHTS, architecture_spec
from factorch.models.resnet import _with_sal
from factorch.nn import ShiftAttentionConv2d
from factorch.train import evaluate, finetune


def main(argv: list[str]) -> None:
    p = parser(__doc__, epochs=8, lr=0.02)
    p.add_argument("--keep", type=int, default=1)
    p.add_argument("--ramp", type=float, default=0.75)
    p.add_argument("--position-groups", type=int, default=None, help="1: shift_resnet20 (with --keep 1)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.position_groups not in (None, 1) or (args.position_groups == 1 and args.keep != 1):
        p.error("the registry has sal_resnet20, sal2_resnet20 (--keep 2) and shift_resnet20 (--position-groups 1)")
    name = {None: "sal_resnet20" if args.keep == 1 else f"sal{args.keep}_resnet20", 1: "shift_resnet20"}[
        args.position_groups
    ]
    teacher = create_model("resnet20", pretrained=True).eval()
    # the registry model's layout, built from the trained convs (each SAL layer starts from its kernel)
    student = _with_sal(copy.deepcopy(teacher).train(), args.keep, args.ramp, args.position_groups)
    out, start, history = Path(args.out), time.perf_counter(), []
    tuned = distill(student, teacher, args, history)
    for m in tuned.modules():
        if isinstance(m, ShiftAttentionConv2d):
            m.binarize()
    write_run(out, name, tuned, "python scripts/train_sal.py", argv, vars(args), history, start,
              "resnet20 (shipped weights), distillation from resnet20")  # fmt: skip


def parser(doc: str, *, epochs: int, lr: float) -> argparse.ArgumentParser:
    """The arguments every fine-tuning script here takes."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    return p


def distill(student, teacher, args: argparse.Namespace, history: list):
    """``factorch.finetune`` with distillation from ``teacher``, resumable in ``args.out``, evaluated each epoch."""
    return finetune(
        student, fashion_mnist("train", seed=args.seed), teacher=teacher, epochs=args.epochs, lr=args.lr,
        seed=args.seed, test_data=fashion_mnist("test"), out_dir=Path(args.out), resume=args.resume,
        history=history, on_epoch_end=lambda e, m: print(f"epoch {e}: {json.dumps(m)}", flush=True),
    )  # fmt: skip


def write_run(out: Path, name: str, model, script: str, argv: list[str], args: dict, history: list, start: float,
              init: str) -> None:  # fmt: skip
    """``weights.pt``, ``model.json`` and ``card.json`` in ``out``, as ``factorch train`` writes them (what
    ``scripts/ship_pretrained.py`` reads), with the test accuracy of the final model."""
    final = evaluate(model, fashion_mnist("test"), show_progress=False)
    torch.save(model.state_dict(), out / WEIGHTS)
    (out / MODEL_JSON).write_text(json.dumps(architecture_spec(name), indent=2) + "\n")
    card = {
        "model": name,
        "command": f"{script} " + " ".join(shlex.quote(a) for a in argv),
        "init": init,
        **{k: v for k, v in args.items() if k not in ("out", "resume")},
        "wall_time_s": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "test_accuracy": round(final["accuracy"], 2),
        "test_loss": round(final["loss"], 4),
        "history": history,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"done: {name} test accuracy {final['accuracy']:.2f} %")


if __name__ == "__main__":
    main(sys.argv[1:])
