"""One matplotlib set-up for every report and benchmark: the file-only Agg backend, and one way to save a figure.

matplotlib is imported only when a plot is drawn, so commands that draw nothing never pay for it.
"""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (no display needed, safe in worker processes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: float | str = "figure") -> Path:
    """Lay out, write (creating the folder) and close `fig`; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
