"""Sources, validation, content-hashed snapshots and project scaffolding from a data file."""

from loopml.data.infer import infer_spec
from loopml.data.ingest import IngestResult, Progress, ingest
from loopml.data.snapshot import Snapshot, SourceSnapshot, get_snapshot, latest_snapshot
from loopml.data.sources import SourceTable, read_source
from loopml.data.validate import Check, Validation, validate

__all__ = [
    "Check",
    "IngestResult",
    "Progress",
    "Snapshot",
    "SourceSnapshot",
    "SourceTable",
    "Validation",
    "get_snapshot",
    "infer_spec",
    "ingest",
    "latest_snapshot",
    "read_source",
    "validate",
]
