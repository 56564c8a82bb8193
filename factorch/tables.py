"""Printing tables that never cut a number: a rich table where it fits the console, else plain Markdown lines
(which the terminal wraps, cutting nothing). This module imports nothing from factorch."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table


def natural_width(table: Table) -> int:
    """The width ``table`` takes when nothing constrains it."""
    probe = Console(file=io.StringIO(), width=100_000, color_system=None)
    probe.print(table)
    return max((len(line.rstrip()) for line in probe.file.getvalue().splitlines()), default=0)


def print_table(console: Console, table: Table, markdown: str) -> None:
    """``table`` on ``console`` when it fits whole, otherwise ``markdown`` as plain lines."""
    if natural_width(table) <= console.width:
        console.print(table)
    else:
        console.print(markdown, markup=False, highlight=False, soft_wrap=True)
