"""Model registry: versions, aliases with history, lineage, the promotion gate."""

from loopml.registry.base import CHAMPION, AliasEvent, ModelVersion, Registry
from loopml.registry.gate import GateVerdict, evaluate_gate, higher_is_better
from loopml.registry.store import SqliteRegistry, open_registry

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
