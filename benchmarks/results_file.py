"""Where and how benchmarks record what they measured: `benchmarks/results/NAME.json` and `NAME.md`."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"


def header(title: str, script: str, *notes: str) -> list[str]:
    """The report's title and the command that reproduces it, stamped with date and machine."""
    stamp = f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, Python {platform.python_version()}"
    return [f"# {title}", "", f"Command: `.venv/bin/python benchmarks/{script}` ({stamp}).", *notes, ""]


def write(name: str, data: dict, lines: list[str]) -> None:
    """Write the raw numbers as JSON and the report as Markdown, and print the report."""
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {platform.python_version()}", "date": time.strftime("%Y-%m-%d")}
    (OUT / f"{name}.json").write_text(json.dumps({"meta": meta, **data}, indent=1) + "\n")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
