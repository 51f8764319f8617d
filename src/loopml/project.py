"""Project: the façade every entry point (CLI, server, demo) uses.

It loads and validates ``loopml.yaml`` once, resolves the on-disk
:class:`~loopml.layout.Layout`, opens the configured backends, and runs the
stages in order by calling each stage's own function with exactly the
configuration it needs. Stages never import this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml.data.ingest import IngestResult, ingest
from loopml.data.snapshot import Snapshot, get_snapshot, latest_snapshot
from loopml.data.sources import check_file
from loopml.errors import LoopmlError
from loopml.features.catalog import feature_catalog
from loopml.features.definitions import feature_columns
from loopml.features.materialize import MaterializeResult, materialize
from loopml.features.offline import BuildResult, build_spine_training_set, build_training_set
from loopml.features.online.backends import open_fallback, open_online_store
from loopml.features.online.base import OnlineStore, OnlineStoreUnavailable
from loopml.features.online.fallback import Fallback
from loopml.features.vector import online_features
from loopml.layout import Layout
from loopml.loop.retrain import LoopRun, run_loop
from loopml.loop.train import TrainResult, train
from loopml.monitor.alerts import AlertStore, open_alert_store
from loopml.monitor.drift import DriftResult
from loopml.monitor.report import build_report, drift_results
from loopml.predlog.backends import open_prediction_log
from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.journal import Journal
from loopml.registry.backends import open_registry
from loopml.registry.base import Registry
from loopml.serve.batch import DEFAULT_CHUNK_ROWS, BatchResult, predict_file
from loopml.spec.load import load_spec, spec_hash
from loopml.spec.model import Spec
from loopml.train.tracking import RunStore

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from loopml.features.stream import ConsumeStats

Progress = Callable[[str, float], None]


def materialize_summary(result: MaterializeResult) -> dict[str, Any]:
    """JSON form of a materialization: entities, events and as-of time per view."""
    return {
        "rows": dict(result.rows),
        "events": dict(result.events),
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

    def online_store(self, check: bool = True) -> OnlineStore:
        """The configured online store (``storage.online``); ``check`` fails at once, naming the URL, if unreachable."""
        return open_online_store(self.spec, self.layout, check=check)

    def online_fallback(self) -> Fallback | None:
        """The local cache the request path answers from when Redis is down (``online_unavailable: fallback``)."""
        return open_fallback(self.spec, self.layout)

    def prediction_log(self) -> PredictionLogBackend:
        """The configured prediction log (``storage.prediction_log``: Parquet + DuckDB, or PostgreSQL).

        What a server that died left in its journal (``predlog.journal``) is replayed into it first, so
        that every reader sees every answered prediction; when that fails (the log is unreachable, the
        folder read-only), a warning says so and the journal waits for the next server or reader.
        """
        log = open_prediction_log(self.spec, self.layout)
        try:
            self.prediction_journal().recover(log)
        except (LoopmlError, OSError) as exc:
            _log.warning("the prediction log journal could not be replayed (it is kept): %s", exc)
        return log

    def prediction_journal(self) -> Journal:
        """The prediction log's write-ahead journal, local to this machine (``serving.log_fsync``)."""
        return Journal(self.layout.prediction_journal, self.spec.serving.log_fsync)

    def alerts(self) -> AlertStore:
        """The alert store (``<state>/alerts.sqlite``), posting new alerts to ``monitoring.webhook_url`` when set."""
        return open_alert_store(self.spec, self.layout)

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

    def build_features(
        self,
        progress: Progress | None = None,
        force: bool = False,
        spine: Path | None = None,
        spine_time: str | None = None,
        output: Path | None = None,
    ) -> BuildResult:
        """The training set of the latest snapshot: one row per label-source event, or per ``spine`` file row."""
        snapshot = self.snapshot()
        if spine is not None:
            check_file(spine, " (--spine)")
            digest = hashlib.sha256(spine.read_bytes() + (spine_time or "").encode()).hexdigest()[:16]
            out = output or self.layout.features / f"{snapshot.hash}-{self.features_hash()}-spine-{digest}.parquet"
            return build_spine_training_set(self.spec, snapshot.paths, spine, out, spine_time=spine_time, progress=progress)
        out = output or self.training_set_path(snapshot)
        out.parent.mkdir(parents=True, exist_ok=True)
        return build_training_set(self.spec, snapshot.paths, out, progress=progress)

    def feature_catalog(self) -> list[dict[str, Any]]:
        """Every feature with its definition, owner view and freshness (``loopml features list``)."""
        snapshot = latest_snapshot(self.layout)
        latest = {} if snapshot is None else {name: s.max_ts for name, s in snapshot.sources.items()}
        return feature_catalog(self.spec, latest, self.materialized_at())

    def materialized_at(self) -> dict[str, datetime | None]:
        """When each view was last materialized into the online store, where the store knows it."""
        if self.spec.storage.online == "sqlite" and not self.layout.online_store.exists():
            return {}  # never materialized; do not create the file just to say so
        store = self.online_store(check=False)
        try:
            return {view: store.materialized_as_of(view) for view in self.spec.features.views}
        except OnlineStoreUnavailable:
            return {}
        finally:
            store.close()

    def materialize(self, as_of: datetime | None = None, progress: Progress | None = None) -> MaterializeResult:
        store = self.online_store()
        try:
            return materialize(self.spec, self.snapshot().paths, store, as_of=as_of, progress=progress)
        finally:
            store.close()

    def online_features(self, entities: dict[str, str], as_of: datetime | None = None) -> dict[str, Any]:
        """``loopml features get``: online values of each view of the given entity keys."""
        store = self.online_store()
        try:
            return online_features(self.spec, store, entities, as_of)
        finally:
            store.close()

    def consume(self, stream: str, **options: Any) -> ConsumeStats:
        """``loopml features consume``: apply a Redis Stream of events to the online store (see ``consume_stream``)."""
        try:  # an optional extra: imported only when used
            from loopml.features.stream import consume_stream
        except ImportError:
            raise LoopmlError("features consume needs the redis extra (pip install 'loopml[redis]')") from None
        store = self.online_store()
        try:
            return consume_stream(self.spec, store, stream, **options)
        finally:
            store.close()

    def predict_file(
        self,
        input: Path,
        output: Path,
        version: int | None = None,
        chunk_rows: int | None = None,
        progress: Progress | None = None,
    ) -> BatchResult:
        """``loopml predict``: score a Parquet/CSV file into another, features as of each row's time (``serve.batch``)."""
        chunk = DEFAULT_CHUNK_ROWS if chunk_rows is None else chunk_rows
        return predict_file(self.spec, self.snapshot().paths, self.registry(), input, output, version, chunk, progress)

    def score_stream(self, input: str, output: str, **options: Any) -> ConsumeStats:
        """``loopml stream score``: score a Redis Stream of events into another (see ``serve.stream_score``)."""
        try:  # an optional extra: imported only when used
            from loopml.serve.stream_score import score_stream
        except ImportError:
            raise LoopmlError("stream score needs the redis extra (pip install 'loopml[redis]')") from None
        store = self.online_store()
        log = self.prediction_log()
        try:
            return score_stream(self.spec, store, self.registry(), input, output, log=log, **options)
        finally:
            log.close()
            store.close()

    def train(self, trials: int = 0, progress: Progress | None = None, promote_to: str | None = None) -> TrainResult:
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
            promote_to=promote_to,
        )

    def retrain(
        self,
        force: bool = False,
        service_url: str | None = None,
        admin_token: str | None = None,
        progress: Progress | None = None,
    ) -> LoopRun:
        """``loopml retrain``: the closed loop (see :mod:`loopml.loop.retrain`)."""
        return run_loop(self, force=force, service_url=service_url, admin_token=admin_token, progress=progress)

    def drift(self, version: int | None = None, since: datetime | None = None) -> tuple[int | None, list[DriftResult]]:
        """Drift of every column of ``version`` (default: the champion) over the log since ``since``."""
        return drift_results(self.spec, self.prediction_log(), self.registry(), version, since)

    def monitor_report(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        window: timedelta | None = None,
        version: int | None = None,
        fire_alerts: bool = True,
    ) -> dict[str, Any]:
        """``loopml monitor``: drift, quality, performance, system metrics and alerts (see :mod:`loopml.monitor.report`)."""
        return build_report(
            self.spec,
            self.prediction_log(),
            self.registry(),
            version=version,
            since=since,
            until=until,
            window=window,
            materialized=self.materialized_at(),
            alerts=self.alerts() if fire_alerts else None,
        )
