"""What every benchmark script shares (run as ``python benchmarks/NAME.py``: this folder is on ``sys.path``)."""

from __future__ import annotations

import subprocess


def commit() -> str:
    """The short commit the benchmark runs on, ``+dirty`` when ``factorch/`` has uncommitted changes."""
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "factorch"], capture_output=True, text=True).stdout
    return sha + ("+dirty" if dirty.strip() else "")
