"""The closed loop (``loopml retrain``): triggers -> ingest -> features -> train -> gate -> canary -> promote or roll back.

Triggers (``retraining.triggers``; any one fires the loop):

* ``schedule``: the champion is older than ``retraining.schedule``;
* ``drift``: the monitor report finds at least ``retraining.drift_columns`` drifted columns (the score counts);
* ``performance``: the monitor report raised a performance alert (metric drop from the training baseline);

  both over the last ``retraining.lookback`` (default 1 day) plus ``label.delay`` of the prediction log
  (the labels of the newest predictions have not arrived yet), counted back from its newest prediction
  (so a replay or backfill is judged on its own timeline);
* ``volume``: the sources hold at least ``retraining.min_new_rows`` more rows than the champion's snapshot.

Every run is a JSON record ``<state>/loop/<id>.json``: the triggers, then each
step with its inputs, outputs, status and times, rewritten atomically after
every step. A step's inputs are hashed; a step that already ran to the end
on the same inputs (in this run or any earlier one, ``memo.json``) is not
re-run, its recorded outputs are reused (the ingest of unchanged files, the
features of an unchanged snapshot, the training of an unchanged training set
against the same champion). A run that stopped before its end reads
``failed`` with the reason (``error``, and the failed step's ``error``), and
is resumed by the next ``loopml retrain`` from its first unfinished step,
without re-evaluating the triggers.

One loop at a time: the loop holds an exclusive lock on ``<state>/loop/.lock``
for as long as it runs, which the kernel lets go when the process dies (see
:mod:`loopml.ownership`); the run records the pid that runs it. A run is
``running`` only while that lock is held: a reader of the records
(:meth:`LoopStore.runs`) that can take the lock knows no loop lives, and
rewrites a ``running`` run (and its ``running`` step) as ``failed``, naming
the process that ended; so does the next loop when it takes the lock, before
it resumes the run.

The canary goes through the live service's admin API (``retraining.service_url``,
bearer ``LOOPML_ADMIN_TOKEN``): the new version gets the challenger alias,
the service reloads and starts ``policy: canary`` with ``rollout.canary``'s
steps and guardrails; the loop waits for the service's decision (promotion
or automatic rollback) up to ``retraining.canary_timeout``, after which it
rolls the canary back itself. With ``retraining.canary: false``, or no
service answering at the URL, a version that passed the gate is promoted
directly and the record says why.

The loop calls the project façade it is given (a :class:`LoopHost`), so it
runs exactly the stages the CLI commands run.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import httpx

from loopml.data.snapshot import Snapshot
from loopml.data.sources import file_format, scan_sql
from loopml.errors import LoopmlError
from loopml.layout import Layout
from loopml.ownership import acquire, owner_gone
from loopml.predlog.base import PredictionLogBackend
from loopml.registry.base import Registry
from loopml.spec.model import Spec

Progress = Callable[[str, float], None]
STEPS = ("ingest", "features", "train", "canary")
RESUMABLE = ("running", "failed")
_LOCK_PATIENCE_S = 2.0  # a reader holds the lock's shared side for a moment while it settles a dead run


class LoopHost(Protocol):
    """What the loop needs of a project (``loopml.project.Project``)."""

    @property
    def spec(self) -> Spec: ...
    @property
    def spec_hash(self) -> str: ...
    @property
    def layout(self) -> Layout: ...

    def registry(self) -> Registry: ...
    def ingest(self, progress: Progress | None = None) -> Any: ...
    def snapshot(self, digest: str | None = None) -> Snapshot: ...
    def features_hash(self) -> str: ...
    def training_set_path(self, snapshot: Snapshot) -> Path: ...
    def build_features(self, progress: Progress | None = None) -> Any: ...
    def train(self, trials: int = 0, progress: Progress | None = None, promote_to: str | None = None) -> Any: ...
    def monitor_report(self, since: datetime | None = None) -> dict[str, Any]: ...
    def prediction_log(self) -> PredictionLogBackend: ...


@dataclass
class Step:
    name: str
    key: str
    inputs: dict[str, Any]
    status: str = "running"  # running | done | skipped | reused | failed
    outputs: dict[str, Any] = field(default_factory=dict)
    started: str = field(default_factory=lambda: datetime.now().isoformat(timespec="seconds"))
    finished: str | None = None
    error: str | None = None


@dataclass
class LoopRun:
    id: str
    started: str
    status: str  # running | finished | not triggered | failed (stopped before its end: the next loop resumes it)
    triggers: list[dict[str, Any]]
    steps: list[Step] = field(default_factory=list)
    outcome: str | None = None
    error: str | None = None
    pid: int | None = None  # the process that runs (or last ran) it

    def settle_dead_owner(self) -> None:
        """Mark the run, and its step that was running, ``failed``: the process running them is gone."""
        process = f"the loop process (pid {self.pid})" if self.pid is not None else "the loop process"
        now = datetime.now().isoformat(timespec="seconds")
        # older loopmls left a run that crashed "running", with its error and its step "failed": keep that error
        crashed = self.error is not None and any(step.status == "failed" for step in self.steps)
        for step in self.steps:
            if step.status == "running":
                step.status, step.finished, step.error = "failed", now, f"{process} ended while this step ran"
        self.status = "failed"
        if not crashed:
            self.error = f"{process} ended without finishing the run"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopRun:
        steps = [Step(**s) for s in data.pop("steps", [])]
        return cls(**data, steps=steps)


def _key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


class LoopStore:
    """Loop runs and the step memo under ``<state>/loop``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, run: LoopRun) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{run.id}.json.{os.getpid()}-{secrets.token_hex(4)}.tmp"  # readers may save at once
        tmp.write_text(json.dumps(run.to_json(), indent=1, default=str))
        tmp.replace(self.folder / f"{run.id}.json")

    def _load(self) -> list[LoopRun]:
        if not self.folder.exists():
            return []
        paths = sorted(p for p in self.folder.glob("*.json") if p.name != "memo.json")
        return [LoopRun.from_json(json.loads(p.read_text())) for p in paths]

    def _settle(self, runs: list[LoopRun]) -> None:
        """Rewrite the ``running`` runs as ``failed``: call only when no loop holds the lock."""
        for run in runs:
            if run.status == "running":
                run.settle_dead_owner()
                with suppress(OSError):  # a read-only folder: report the truth without recording it
                    self.save(run)

    def runs(self) -> list[LoopRun]:
        """All loop runs, oldest first; a ``running`` run with no loop process alive comes back ``failed``."""
        runs = self._load()
        if any(r.status == "running" for r in runs):
            with owner_gone(self.folder / ".lock") as gone:
                if gone:
                    self._settle(self._load())  # again, under the lock
                    runs = self._load()
        return runs

    def unfinished(self) -> LoopRun | None:
        """The newest run that stopped before its end (or still runs): the next loop resumes it."""
        runs = [r for r in self.runs() if r.status in RESUMABLE]
        return runs[-1] if runs else None

    def memo(self, name: str, key: str) -> dict[str, Any] | None:
        path = self.folder / "memo.json"
        memo = json.loads(path.read_text()) if path.exists() else {}
        found: dict[str, Any] | None = memo.get(name, {}).get(key)
        return found

    def remember(self, name: str, key: str, outputs: dict[str, Any]) -> None:
        path = self.folder / "memo.json"
        memo = json.loads(path.read_text()) if path.exists() else {}
        memo.setdefault(name, {})[key] = outputs
        tmp = self.folder / ".memo.json.tmp"
        tmp.write_text(json.dumps(memo, indent=1, default=str))
        tmp.replace(path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One loop at a time; taking the lock proves that a ``running`` run's process is gone, so it is settled."""
        owner = acquire(self.folder / ".lock", patience_s=_LOCK_PATIENCE_S)
        if owner is None:
            raise LoopmlError(f"{self.folder}: another 'loopml retrain' is running")
        try:
            self._settle(self._load())
            yield
        finally:
            owner.release()


# --- triggers -------------------------------------------------------------------------------


def source_rows(host: LoopHost) -> int:
    """Rows in the source files now (Parquet row counts come from the footer)."""
    total = 0
    with duckdb.connect() as con:
        for source in host.spec.sources.values():
            path = host.layout.source_path(source.path)
            if not path.exists():
                continue
            sql = scan_sql(path, file_format(source.format, path), text=True, csv=source.csv)
            row = con.execute(f"SELECT count(*) FROM {sql}").fetchone()
            total += int(row[0]) if row else 0
    return total


def evaluate_triggers(host: LoopHost, now: datetime | None = None) -> list[dict[str, Any]]:
    """Each configured trigger with whether it fired and why."""
    settings = host.spec.retraining
    champion = host.registry().alias(host.spec.rollout.alias)
    if champion is None:
        return [{"trigger": "no champion", "fired": True, "detail": "no model has the champion alias yet"}]
    out: list[dict[str, Any]] = []
    now = now or datetime.now()
    if "schedule" in settings.triggers and settings.schedule is not None:
        age = now - datetime.fromisoformat(champion.created_at).replace(tzinfo=None)
        fired = age >= settings.schedule
        out.append({"trigger": "schedule", "fired": fired, "detail": f"champion v{champion.version} is {age} old"})
    if "drift" in settings.triggers or "performance" in settings.triggers:
        with host.prediction_log().connect() as con:
            row = con.execute("SELECT max(ts) FROM predictions").fetchone()
        newest = row[0] if row else None
        # labels arrive label.delay after their predictions: look that much further back for the performance
        back = settings.lookback + host.spec.label.delay
        report = host.monitor_report(since=newest - back if newest is not None else None)
        drifted = sorted({d["feature"] for d in report.get("drift", []) if d.get("drifted")})
        if "drift" in settings.triggers:
            fired = len(drifted) >= settings.drift_columns
            detail = f"{len(drifted)} drifted column(s){': ' + ', '.join(drifted[:8]) if drifted else ''}"
            out.append({"trigger": "drift", "fired": fired, "detail": detail})
        if "performance" in settings.triggers:
            drops = [a for a in report.get("alerts", []) if str(a.get("rule", "")).startswith(("metric", "performance"))]
            detail = "; ".join(str(a.get("message") or a.get("rule")) for a in drops[:3]) or "no performance alert"
            out.append({"trigger": "performance", "fired": bool(drops), "detail": detail})
    if "volume" in settings.triggers:
        snapshot_hash = champion.lineage.get("snapshot")
        before = host.snapshot(snapshot_hash).rows_valid if snapshot_hash else 0
        new = source_rows(host) - before
        out.append({"trigger": "volume", "fired": new >= settings.min_new_rows, "detail": f"{new:,} new source rows"})
    return out


# --- the loop ----------------------------------------------------------------------------------


class _Runner:
    def __init__(
        self, host: LoopHost, store: LoopStore, run: LoopRun, say: Progress, service_url: str, token: str | None
    ) -> None:
        self.host, self.store, self.run, self.say = host, store, run, say
        self.service_url, self.token = service_url, token

    def step(self, name: str, inputs: dict[str, Any], action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        key = _key(inputs)
        done = next((s for s in self.run.steps if s.name == name and s.status in ("done", "reused", "skipped")), None)
        if done is not None and done.key == key:
            return done.outputs
        self.run.steps = [s for s in self.run.steps if s.name != name]
        step = Step(name=name, key=key, inputs=inputs)
        self.run.steps.append(step)
        memo = self.store.memo(name, key)
        if memo is not None:
            step.status, step.outputs = "reused", memo
        else:
            self.store.save(self.run)
            try:
                step.outputs = action()
            except BaseException as exc:
                step.status, step.finished = "failed", datetime.now().isoformat(timespec="seconds")
                step.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.store.save(self.run)
                raise LoopmlError(f"retrain step {name} failed: {exc}") from exc
            step.status = "skipped" if step.outputs.get("skipped") else "done"
            if name != "canary" and step.status == "done":
                self.store.remember(name, key, step.outputs)
        step.finished = datetime.now().isoformat(timespec="seconds")
        self.store.save(self.run)
        return step.outputs

    def go(self) -> None:
        host = self.host
        settings = host.spec.retraining
        files = {}
        for name, source in host.spec.sources.items():
            path = host.layout.source_path(source.path)
            stat = path.stat() if path.exists() else None
            files[name] = [str(path), stat.st_size if stat else None, stat.st_mtime_ns if stat else None]
        self.say("ingesting", 0.05)
        ingested = self.step("ingest", {"files": files, "spec": host.spec_hash}, lambda: _ingest(host))
        snapshot = host.snapshot(ingested["snapshot"])
        self.say("building features", 0.2)
        features_inputs = {"snapshot": snapshot.hash, "features": host.features_hash()}
        built = self.step("features", features_inputs, lambda: _features(host, snapshot))
        champion = host.registry().alias(host.spec.rollout.alias)
        self.say("training", 0.35)
        target = host.spec.rollout.challenger if settings.canary else None
        inputs: dict[str, Any] = {
            "training_set": built["training_set"],
            "spec": host.spec_hash,
            "champion": champion.version if champion else None,
            "trials": settings.trials,
            "promote_to": target,
        }
        trained = self.step("train", inputs, lambda: _train(host, settings.trials, target))
        if not trained["gate_passed"]:
            self.run.outcome = f"rejected by the gate: {trained['gate']}"
            return
        self.say("canary", 0.7)
        version = int(trained["model_version"])
        outcome = self.step("canary", {"model_version": version, "service": self.service_url}, lambda: self._canary(version))
        self.run.outcome = str(outcome["outcome"])

    def _canary(self, version: int) -> dict[str, Any]:
        host = self.host
        registry = host.registry()
        rollout = host.spec.rollout
        if not host.spec.retraining.canary:
            registry.set_alias(rollout.alias, version, "closed loop: gate passed (retraining.canary is off)")
            return {"outcome": f"promoted v{version} (no canary: retraining.canary is off)"}
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with httpx.Client(base_url=self.service_url, timeout=10, headers=headers) as client:
                client.get("/healthz").raise_for_status()
                return self._watch(client, version)
        except httpx.TransportError:
            registry.set_alias(rollout.alias, version, f"closed loop: gate passed; no live service at {self.service_url}")
            return {"outcome": f"promoted v{version} without a canary: no live service answered at {self.service_url}"}

    def _watch(self, client: httpx.Client, version: int) -> dict[str, Any]:
        def admin(method: str, path: str, **kw: Any) -> dict[str, Any]:
            response = client.request(method, path, **kw)
            if response.status_code == 401:
                raise LoopmlError(f"{self.service_url}{path}: 401; set LOOPML_ADMIN_TOKEN to the service's admin token")
            if response.status_code >= 400:
                raise LoopmlError(f"{self.service_url}{path}: {response.status_code} {response.text[:200]}")
            data: dict[str, Any] = response.json()
            return data

        state = admin("GET", "/v1/admin/rollout")
        if state["policy"] != "canary":
            admin("POST", "/v1/admin/reload")
            admin("POST", "/v1/admin/rollout", json={"policy": "canary"})
        deadline = time.monotonic() + self.host.spec.retraining.canary_timeout.total_seconds()
        while time.monotonic() < deadline:
            state = admin("GET", "/v1/admin/rollout")
            if state["policy"] != "canary":
                ends = [
                    e
                    for e in state.get("events", [])
                    if e.get("action") in ("promote", "rollback") and e.get("version") == version
                ]
                if ends:
                    end = ends[-1]
                    verb = "promoted" if end["action"] == "promote" else "rolled back"
                    return {
                        "outcome": f"canary {verb} v{version}: {end.get('reason')}",
                        "decision": end["action"],
                        "events": ends,
                    }
                return {"outcome": f"canary of v{version} stopped without a decision (policy now {state['policy']})"}
            step = state.get("step", 0)
            self.say(f"canary of v{version}: step {step + 1}/{len(state.get('steps', [])) or 1}", 0.75)
            time.sleep(1.0)
        admin("POST", "/v1/admin/rollback")
        return {"outcome": f"canary of v{version} timed out and was rolled back", "decision": "rollback"}


def _ingest(host: LoopHost) -> dict[str, Any]:
    result = host.ingest()
    return {"snapshot": result.snapshot, "rows_valid": result.rows_valid, "rows_quarantined": result.rows_quarantined}


def _features(host: LoopHost, snapshot: Snapshot) -> dict[str, Any]:
    path = host.training_set_path(snapshot)
    if not path.is_file():
        host.build_features()
    return {"training_set": str(path)}


def _train(host: LoopHost, trials: int, promote_to: str | None) -> dict[str, Any]:
    result = host.train(trials=trials, promote_to=promote_to)
    return {
        "run_id": result.run_id,
        "model_version": result.model_version,
        "gate_passed": result.promoted,
        "gate": "; ".join(result.gate.reasons),
        "metrics": result.metrics["test"],
    }


def run_loop(
    host: LoopHost,
    force: bool = False,
    service_url: str | None = None,
    admin_token: str | None = None,
    progress: Progress | None = None,
) -> LoopRun:
    """Resume an unfinished loop run, or evaluate the triggers and, if one fires (or ``force``), run the loop."""
    say: Progress = progress or (lambda _message, _fraction: None)
    spec = host.spec
    url = service_url or spec.retraining.service_url or f"http://{spec.serving.host}:{spec.serving.port}"
    store = LoopStore(host.layout.loop)
    with store.lock():
        run = store.unfinished()
        if run is None:
            say("evaluating triggers", 0.0)
            triggers = evaluate_triggers(host)
            if force:
                triggers.append({"trigger": "forced", "fired": True, "detail": "--force"})
            stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
            run = LoopRun(
                id=f"{stamp}-{uuid.uuid4().hex[:6]}",
                pid=os.getpid(),
                started=datetime.now().isoformat(timespec="seconds"),
                status="running",
                triggers=triggers,
            )
            if not any(t["fired"] for t in triggers):
                run.status = "not triggered"
                store.save(run)
                return run
        run.status, run.pid = "running", os.getpid()  # a new run, or one resumed (its error stays as history)
        store.save(run)
        try:
            _Runner(host, store, run, say, url, admin_token).go()
        except BaseException as exc:
            run.status, run.error = "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            store.save(run)  # the next 'loopml retrain' resumes it
            raise
        run.status = "finished"
        store.save(run)
        say("done", 1.0)
        return run
