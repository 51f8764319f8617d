"""The one exception family the command line turns into a one-line error.

Every stage raises :class:`LoopmlError` (or a subclass) with a message that
names the file, row, key or field and what is wrong; the CLI prints it on
stderr and exits non-zero. Anything else escaping is a bug.
"""

from __future__ import annotations


class LoopmlError(Exception):
    """A user-facing error: its message is one line naming what and where."""


class SpecError(LoopmlError):
    """``loopml.yaml`` is invalid; ``problems`` lists every error found."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        first = problems[0] if problems else "invalid"
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{path}: {first}{more}")


class DataError(LoopmlError):
    """A data file is missing, unreadable or does not match its declared schema."""
