"""Tables a user reads never cut a number, on a wide or a narrow console, piped or not."""

import io
import re

import torch
from rich.console import Console

import factorch


def rendered(printable, width: int) -> str:
    buf = io.StringIO()
    printable.print(Console(file=buf, width=width))
    return buf.getvalue()


def numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+\.\d+ [kMG]", text))


def test_compression_and_profile_tables_keep_every_number_whole():
    model = factorch.models.create_model("resnet20")
    x = torch.randn(1, 1, 28, 28)
    _, report = factorch.compress(model, factorch.Tucker2Config(rank=0.5), example_inputs=x)
    prof = factorch.profile(model, x)
    for printable, reference in ((report, report.to_markdown()), (prof, prof.to_markdown())):
        wanted = numbers(reference)
        assert wanted
        for width in (60, 100, 240):
            text = rendered(printable, width)
            assert "…" not in text
            assert wanted <= numbers(text), width  # every number of the markdown table, whole
