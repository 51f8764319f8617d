"""``loopml.yaml``: the typed spec, its loader and its cross-reference checks."""

from loopml.spec.load import SPEC_FILE, load_spec, parse_spec, spec_hash
from loopml.spec.model import Spec, format_duration, parse_duration

__all__ = ["SPEC_FILE", "Spec", "format_duration", "load_spec", "parse_duration", "parse_spec", "spec_hash"]
