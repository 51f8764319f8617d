"""Project: the façade every entry point (CLI, server, demo) uses.

It loads and validates ``loopml.yaml`` once, resolves the on-disk
:class:`~loopml.layout.Layout`, opens the configured backends, and runs the
stages in order by calling each stage's own function with exactly the
configuration it needs. Stages never import this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from loopml.data.ingest import IngestResult, ingest
from loopml.data.snapshot import Snapshot, get_snapshot, latest_snapshot
from loopml.errors import LoopmlError
from loopml.features.definitions import feature_columns
from loopml.features.materialize import MaterializeResult, materialize
from loopml.features.offline import BuildResult, build_training_set
from loopml.features.online import SqliteOnlineStore
from loopml.layout import Layout
from loopml.loop.train import TrainResult, train
from loopml.monitor.drift import DriftResult, current_values, psi_drift
from loopml.monitor.predlog import PredictionLog
from loopml.registry.base import Registry
from loopml.registry.store import open_registry
from loopml.spec.load import load_spec, spec_hash
from loopml.spec.model import Spec
from loopml.train.tracking import RunStore

Progress = Callable[[str, float], None]


def materialize_summary(result: MaterializeResult) -> dict[str, Any]:
    """JSON form of a materialization: rows and as-of time per view."""
    return {
        "rows": dict(result.rows),
        "as_of": {view: ts.isoformat() for view, ts in result.as_of.items()},
        "seconds": round(result.seconds, 3),
    }


@dataclass(frozen=True)
class Project:
    spec: Spec
    spec_hash: str
    layout: Layout

    @classmethod
    def load(cls, folder: Path) -> Project:
        spec, digest = load_spec(folder)
        return cls(spec=spec, spec_hash=digest, layout=Layout.for_project(folder, spec))

    # -- backends -----------------------------------------------------------
    def registry(self) -> Registry:
        return open_registry(self.spec, self.layout)

    def online_store(self) -> SqliteOnlineStore:
        return SqliteOnlineStore(self.layout.online_store)

    def prediction_log(self) -> PredictionLog:
        return PredictionLog(self.layout.prediction_log)

    def runs(self) -> RunStore:
        return RunStore(self.layout.runs)

    # -- stages -------------------------------------------------------------
    def ingest(self, progress: Progress | None = None) -> IngestResult:
        return ingest(self.spec, self.layout, progress=progress)

    def snapshot(self, digest: str | None = None) -> Snapshot:
        if digest is not None:
            return get_snapshot(self.layout, digest)
        snap = latest_snapshot(self.layout)
        if snap is None:
            raise LoopmlError(f"{self.layout.root}: no data snapshot yet; run 'loopml ingest' first")
        return snap

    def features_hash(self) -> str:
        payload = json.dumps(self.spec.features.model_dump(mode="json"), sort_keys=True)
        return spec_hash(payload + json.dumps(self.spec.entities and {k: v.key for k, v in self.spec.entities.items()}))

    def training_set_path(self, snapshot: Snapshot) -> Path:
        return self.layout.features / f"{snapshot.hash}-{self.features_hash()}.parquet"

    def build_features(self, progress: Progress | None = None, force: bool = False) -> BuildResult:
        snapshot = self.snapshot()
        out = self.training_set_path(snapshot)
        out.parent.mkdir(parents=True, exist_ok=True)
        return build_training_set(self.spec, snapshot.paths, out, progress=progress)

    def materialize(self, as_of: datetime | None = None) -> MaterializeResult:
        store = self.online_store()
        try:
            return materialize(self.spec, self.snapshot().paths, store, as_of=as_of)
        finally:
            store.close()

    def train(self, trials: int = 0, progress: Progress | None = None) -> TrainResult:
        snapshot = self.snapshot()
        path = self.training_set_path(snapshot)
        if not path.is_file():
            self.build_features(progress=progress)
        lineage = {"snapshot": snapshot.hash, "spec_hash": self.spec_hash, "features_hash": self.features_hash()}
        return train(
            self.spec,
            self.layout,
            path,
            feature_columns(self.spec),
            lineage,
            self.registry(),
            trials=trials,
            progress=progress,
        )

    def drift(self, version: int | None = None, since: datetime | None = None) -> tuple[int | None, list[DriftResult]]:
        registry = self.registry()
        if version is None:
            champion = registry.alias(self.spec.rollout.alias)
            if champion is None:
                return None, []
            version = champion.version
        features, scores = current_values(self.prediction_log(), version, since)
        return version, psi_drift(registry.reference_stats(version), features, scores, self.spec.monitoring)

    def monitor_report(self) -> dict[str, Any]:
        version, drift = self.drift()
        log = self.prediction_log()
        with log.connect() as con:
            row = con.execute(
                "SELECT count(*), count(label), quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.99) FROM labelled"
            ).fetchone()
        n, labelled, p50, p99 = row if row else (0, 0, None, None)
        alerts = [
            {"rule": "psi", "feature": d.feature, "value": d.statistic, "threshold": self.spec.monitoring.psi_threshold}
            for d in drift
            if d.drifted
        ]
        return {
            "model_version": version,
            "predictions": int(n),
            "labelled": int(labelled),
            "latency_ms": {"p50": p50, "p99": p99},
            "drift": [d.to_json() for d in drift],
            "alerts": alerts,
        }
