"""`memento view`: a trace file -> one self-contained HTML page (the trace list; each trace's blocks, mementos, cut
scores, judge verdicts and KV cache)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated

import typer

from memento.cli.app import app, out, user_errors
from memento.core.errors import MementoError

INPUT = (
    "Traces: OpenMementos rows (.jsonl/.json/.parquet, default or full), a segments JSON file, `memento generate "
    "--json` output, `memento eval` results.jsonl, or `memento data build`'s journal.jsonl."
)


def default_out(path: Path) -> Path:
    """PATH with the suffix .html beside it; in the current folder when PATH's folder is not writable or is marked
    read-only (no write bit: root may write there, but should not)."""
    beside = path.with_suffix(".html")
    folder = path.parent
    writable = os.access(folder, os.W_OK) and folder.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    return beside if writable else Path.cwd() / beside.name


@app.command()
@user_errors
def view(
    path: Annotated[Path, typer.Argument(help=INPUT)],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="The HTML file. Default: PATH.html beside PATH (the current folder if read-only)."),
    ] = None,
    open_page: Annotated[bool, typer.Option("--open", help="Open the page in the web browser.")] = False,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="Count tokens with cl100k, qwen, smollm2, chars or a model folder. Default: the counts the file "
            "carries, else characters / 4."
        ),
    ] = None,
):
    """Look at Memento traces in a browser: one HTML file, nothing fetched when it is opened."""
    from memento.view import items, page

    count, counted_with = None, ""
    if tokenizer is not None:
        from memento.tokenizer import token_counter

        count, counted_with = token_counter(tokenizer)
    traces = items.read(path, count, counted_with)
    target = out_file or default_out(path)
    if target.resolve() == path.resolve():
        raise MementoError(f"--out {target} is the input file; give another --out")
    page.write(traces, target, path.name)
    units = ", ".join(sorted({t.body["unit"] for t in traces}))
    notes = sum(bool(t.body.get("notes")) for t in traces)
    out.print(f"wrote {target}: {len(traces)} trace(s), counts in {units}")
    if notes:
        out.print(f"{notes} trace(s) had malformed pieces, left out and listed in their view")
    if open_page:
        import webbrowser

        webbrowser.open(target.resolve().as_uri())
