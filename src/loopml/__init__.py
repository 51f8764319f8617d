"""loopml: the whole production ML loop for tabular and event data.

The public API is what this module exports; everything else is private.
``Project`` (the façade over one project folder) is loaded on first use, so
that importing ``loopml`` (and ``loopml --help``) does not load every stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loopml.errors import DataError, LoopmlError, SpecError
from loopml.layout import Layout
from loopml.spec import Spec, load_spec, parse_spec

if TYPE_CHECKING:
    from loopml.project import Project

__version__ = "0.1.0"

__all__ = ["DataError", "Layout", "LoopmlError", "Project", "Spec", "SpecError", "__version__", "load_spec", "parse_spec"]


def __getattr__(name: str) -> Any:
    if name == "Project":
        from loopml.project import Project

        return Project
    raise AttributeError(f"module 'loopml' has no attribute {name!r}")
