"""Model registry: versions, aliases with history, lineage, the promotion gate."""

from loopml.registry.backends import open_registry
from loopml.registry.base import CHAMPION, AliasEvent, ModelVersion, Registry
from loopml.registry.gate import GateVerdict, evaluate_gate, higher_is_better
from loopml.registry.sqlite import SqliteRegistry

__all__ = [
    "CHAMPION",
    "AliasEvent",
    "GateVerdict",
    "ModelVersion",
    "Registry",
    "SqliteRegistry",
    "evaluate_gate",
    "higher_is_better",
    "open_registry",
]
