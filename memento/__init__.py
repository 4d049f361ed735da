"""memento: reasoning models that manage their own context (MEMENTO, arXiv 2604.09852), from data to serving."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("memento")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"
