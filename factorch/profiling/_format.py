"""Human-friendly numbers for the report tables (``to_dict`` keeps exact values)."""

from __future__ import annotations

from collections.abc import Sequence


def format_count(n: int | float) -> str:
    """``40551040 -> '40.55 M'``; below one thousand the number is written out."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:,}" if isinstance(n, int) else f"{n:.2f}"


def format_bytes(n: int) -> str:
    """Binary units: ``1089896 -> '1.04 MiB'``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def format_seconds(s: float) -> str:
    """``0.00123 -> '1.230 ms'``."""
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} µs"


def format_shape(shape: Sequence[int] | None) -> str:
    """``(1, 16, 32, 32) -> '(1, 16, 32, 32)'``; ``None`` (no tensor output) -> ``'-'``."""
    return "-" if shape is None else str(tuple(shape))


def format_shapes(shapes: Sequence[Sequence[int] | None]) -> str:
    """Several input shapes: ``'(1, 3, 28, 28)'`` for one, ``'(2, 5), (2, 7)'`` for two."""
    return ", ".join("None" if s is None else str(tuple(s)) for s in shapes)
