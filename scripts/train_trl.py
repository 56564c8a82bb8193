"""Maintainer script: train the shipped ``resnet20_trl`` weights.

    python scripts/train_trl.py --epochs 2 --threads 1 --out runs/resnet20_trl
    python scripts/ship_pretrained.py runs/resnet20_trl resnet20_trl

Starts from the shipped ``resnet20``: its convs as they are, its average pool + Linear head converted exactly
into the tensor regression layer (``TRL.from_pooled_linear``: the pooled head is a rank (10, 1, 1, 10) TRL,
inside the head's rank (16, 4, 4, 10)), then fine-tunes with distillation from ``resnet20`` so that the head
learns spatial structure. Writes ``weights.pt`` + ``card.json`` like ``factorch train``; ``--resume`` continues.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from train_sal import distill, parser, write_run

from factorch.models import create_model
from factorch.nn import TRL


def main(argv: list[str]) -> None:
    args = parser(__doc__, epochs=2, lr=0.01).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = create_model("resnet20", pretrained=True).eval()
    student = create_model("resnet20_trl")
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("fc.")}
    missing, unexpected = student.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("trl.") for k in missing), (missing, unexpected)
    student.trl = TRL.from_pooled_linear(teacher.fc, student.trl.input_shape, student.trl.rank)
    out, start, history = Path(args.out), time.perf_counter(), []
    tuned = distill(student, teacher, args, history)
    write_run(out, "resnet20_trl", tuned, "python scripts/train_trl.py", argv, vars(args), history, start,
              "resnet20 (shipped weights; head converted exactly), distillation from resnet20")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
