"""loopml: the whole production ML loop for tabular and event data.

The public API is what this module exports; everything else is private.
"""

from loopml.errors import DataError, LoopmlError, SpecError
from loopml.layout import Layout
from loopml.spec import Spec, load_spec, parse_spec

__version__ = "0.1.0"

__all__ = ["DataError", "Layout", "LoopmlError", "Spec", "SpecError", "__version__", "load_spec", "parse_spec"]
