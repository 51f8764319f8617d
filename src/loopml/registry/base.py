"""What a model registry is: the :class:`ModelVersion` record and the :class:`Registry` verbs.

Every backend (SQLite, PostgreSQL) implements the same small verb
set and passes the same contract tests (``tests/test_contract_registry.py``,
run over every implementation). Versions are numbered 1, 2, 3...; aliases
(``champion``, ...) point at versions and keep their history, so a rollback
moves an alias back to the holder it had before its current one.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loopml.registry.gate import GateVerdict
from loopml.train.artifact import Predictor

CHAMPION = "champion"
Signature = builtins.list[dict[str, str]]


@dataclass(frozen=True)
class ModelVersion:
    """One registered model: its artifact (by hash), metrics, lineage and current aliases."""

    version: int
    created_at: str
    kind: str
    artifact_path: Path
    sha256: str
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    signature: Signature
    aliases: builtins.list[str] = field(default_factory=builtins.list)
    gate: GateVerdict | None = None
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def feature_names(self) -> builtins.list[str]:
        return [column["name"] for column in self.signature]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "aliases": builtins.list(self.aliases),
            "metrics": self.metrics,
            "created_at": self.created_at,
            "kind": self.kind,
            "artifact_path": str(self.artifact_path),
            "sha256": self.sha256,
            "lineage": self.lineage,
            "signature": self.signature,
            "gate": self.gate.to_json() if self.gate is not None else None,
            "run_id": self.run_id,
            "tags": self.tags,
        }


@dataclass(frozen=True)
class AliasEvent:
    """One move of an alias: ``action`` is ``set`` or ``rollback``."""

    alias: str
    version: int
    previous: int | None
    action: str
    reason: str
    at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "version": self.version,
            "previous": self.previous,
            "action": self.action,
            "reason": self.reason,
            "at": self.at,
        }


class Registry(Protocol):
    """The verbs every registry backend offers. Failures raise ``LoopmlError`` and change nothing."""

    def register(
        self,
        artifact_file: Path,
        kind: str,
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        signature: Signature,
        reference_stats: dict[str, Any],
        tags: dict[str, str] | None = None,
        run_id: str | None = None,
    ) -> ModelVersion:
        """Copy the artifact into the registry (hashed) and record a new version."""
        ...

    def get(self, version: int) -> ModelVersion: ...

    def list(self) -> builtins.list[ModelVersion]: ...

    def alias(self, name: str) -> ModelVersion | None: ...

    def set_alias(self, name: str, version: int, reason: str) -> ModelVersion: ...

    def rollback(self, alias: str = CHAMPION) -> ModelVersion:
        """Move ``alias`` back to its previous holder."""
        ...

    def alias_history(self, name: str) -> builtins.list[AliasEvent]: ...

    def load_predictor(self, version: int) -> Predictor:
        """The version's predictor, refused unless the artifact's hash matches the record."""
        ...

    def record_gate(self, version: int, verdict: GateVerdict) -> None: ...

    def reference_stats(self, version: int) -> dict[str, Any]:
        """Reference statistics stored at training time (for monitoring)."""
        ...
