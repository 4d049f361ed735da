"""The `memento` command line: one module per command group, each registering its commands on `app.app`.

Thin by rule: parse options, call the library, print. Importing this package registers every command, in the
order `memento --help` lists them (the path from traces to a served, evaluated model, then the toy science).
"""

# isort: off
from memento.cli import traces, view, data, train, rl, generate, serve, evaluate, bench, science  # noqa: F401
from memento.cli.app import app

# isort: on

__all__ = ["app"]
