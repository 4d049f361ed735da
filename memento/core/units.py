"""Byte sizes for people: one unit per output, the one that suits its largest value (decimal, as the paper's GB)."""

from __future__ import annotations

UNITS = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))


def unit(largest: float) -> tuple[str, float]:
    """The unit to show sizes up to `largest` bytes in, and its size in bytes: the largest unit it is 1 or more of."""
    return next(((name, size) for name, size in UNITS if largest >= size), ("bytes", 1.0))


def size(n: float, largest: float | None = None) -> str:
    """`n` bytes in the unit of `largest` (default: `n`'s own): `size(1.4e6)` -> `1.4 MB`."""
    name, bytes_ = unit(n if largest is None else largest)
    return f"{n / bytes_:.3g} {name}"
