"""A rich progress bar that can be switched off (and is quiet when output is not a terminal)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.errors import LiveError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield an ``advance(n=1)`` callable that moves a progress bar of ``total`` steps."""
    if not enabled:
        yield lambda n=1: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    progress = Progress(*columns, transient=False)
    try:
        progress.start()
    except LiveError:  # a bar is already showing and this rich version cannot nest them: stay quiet
        yield lambda n=1: None
        return
    try:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
    finally:
        progress.stop()
