"""Errors users can act on.

Every error the library raises on bad input derives from `MementoError`, so the CLI can print one line and exit 2
instead of a traceback. Messages name the file, the field and the position at fault.
"""

from __future__ import annotations


class MementoError(Exception):
    """Base class: bad input or configuration, with a message that says what to fix."""


class TraceFormatError(MementoError):
    """A Memento trace does not follow the token format.

    `offset` is the character offset (for text) or the token index (for ids) where the problem starts.
    """

    def __init__(self, reason: str, offset: int, unit: str = "character"):
        self.reason = reason
        self.offset = offset
        self.unit = unit
        super().__init__(f"{reason} (at {unit} {offset})")


class MissingTokensError(MementoError):
    """A tokenizer lacks some Memento special tokens."""
