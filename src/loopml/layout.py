"""Where every piece of project state lives on disk, derived from the spec.

One small value object so that no stage invents its own paths. All state sits
under ``<project>/<storage.root>`` (default ``.loopml``); deleting that folder
resets the project to its raw sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loopml.spec.model import Spec


@dataclass(frozen=True)
class Layout:
    root: Path
    state: Path

    @classmethod
    def for_project(cls, root: Path, spec: Spec) -> Layout:
        root = root.resolve()
        return cls(root=root, state=(root / spec.storage.root).resolve())

    def source_path(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    @property
    def snapshots(self) -> Path:
        return self.state / "snapshots"

    @property
    def quarantine(self) -> Path:
        return self.state / "quarantine"

    @property
    def catalog(self) -> Path:
        return self.state / "catalog.duckdb"

    @property
    def rollout(self) -> Path:
        """The run-time rollout policy (``policy.json``) and the decisions log (``events.jsonl``)."""
        return self.state / "rollout"

    @property
    def loop(self) -> Path:
        """The closed loop's run records, step memo and lock."""
        return self.state / "loop"

    @property
    def features(self) -> Path:
        return self.state / "features"

    @property
    def online_store(self) -> Path:
        return self.state / "online.sqlite"

    @property
    def online_cache(self) -> Path:
        """The local copy of a Redis online store that answers while Redis is down (``online_unavailable: fallback``)."""
        return self.state / "online-cache.sqlite"

    @property
    def registry(self) -> Path:
        return self.state / "registry.sqlite"

    @property
    def artifacts(self) -> Path:
        return self.state / "artifacts"

    @property
    def runs(self) -> Path:
        return self.state / "runs"

    @property
    def prediction_log(self) -> Path:
        return self.state / "predictions"

    @property
    def prediction_journal(self) -> Path:
        """The prediction log's write-ahead journal: always local, whatever the log's backend (``loopml.predlog.journal``)."""
        return self.state / "predictions-journal"

    @property
    def alerts(self) -> Path:
        return self.state / "alerts.sqlite"

    @property
    def reports(self) -> Path:
        return self.state / "reports"
