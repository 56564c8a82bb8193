"""Maintainer script: turn a `factorch train` output folder into shipped package weights + model card.

    python scripts/ship_pretrained.py runs/resnet20 resnet20

Stores the state dict in float16 (half the size; the attention of binarised Shift Attention Layers first set to
its 0/1 choice, which float16 keeps exactly), re-evaluates the float16 weights on the test set, and
writes factorch/models/weights/NAME.{pt,json}; the card keeps the training command, seed, epochs and wall
time, and records the accuracy of exactly the weights that ship.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from factorch.data import fashion_mnist
from factorch.models import create_model, weights_path
from factorch.nn import ShiftAttentionConv2d
from factorch.train import evaluate


def main(run_dir: str, name: str) -> None:
    run = Path(run_dir)
    card = json.loads((run / "card.json").read_text())
    state = torch.load(run / "weights.pt", weights_only=True)
    trained = create_model(name)
    trained.load_state_dict(state)
    sal = [m for m in trained.modules() if isinstance(m, ShiftAttentionConv2d)]
    for m in sal:
        m.settle_attention()
    if sal:
        state = trained.state_dict()
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    dest = weights_path(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(half, dest)
    model = create_model(name, pretrained=True)
    result = evaluate(model, fashion_mnist("test"), show_progress=False)
    card.update(
        trained_test_accuracy=card["test_accuracy"],
        test_accuracy=round(result["accuracy"], 2),
        test_loss=round(result["loss"], 4),
        weights_dtype="float16",
        weights_bytes=dest.stat().st_size,
    )
    dest.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(
        f"{name}: shipped {dest} ({dest.stat().st_size / 1e6:.2f} MB), float16 test accuracy {result['accuracy']:.2f} %"
        f" (float32: {card['trained_test_accuracy']:.2f} %)"
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
