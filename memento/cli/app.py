"""The typer app every command registers on, its global options, the two consoles and the error wrapper.

Bad input ends with one `error: ...` line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

import memento
from memento.core.errors import MementoError

app = typer.Typer(
    help="Memento: reasoning models that manage their own context. Data, training, engines and KV accounting.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: wraps at 80 columns, shows flags as flags, prints "[default: ...]"
)
out = Console(highlight=False, soft_wrap=True, markup=False)  # never wrap or restyle paths
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _version(value: bool):
    if value:
        out.print(f"memento {memento.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars between our own progress bars


def user_errors(fn):
    """Turn library errors about bad input into one line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MementoError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(2) from None

    return wrapper


def progress(quiet: bool = False) -> bool:
    """Whether to draw progress bars: not with --quiet, in CI, or when stderr is not a terminal (a log file would
    fill with carriage returns)."""
    return not quiet and sys.stderr.isatty() and not os.environ.get("CI")
