"""Run tracking: one folder per training run, plus an SQLite index for fast listing.

``layout.runs/<run_id>/run.json`` holds everything about a run (params,
metrics, baseline metrics, lineage, library versions, seed, duration,
warnings, status, the owning process's pid); the run's artifacts (model file,
predictions sample) sit next to it. ``layout.runs/runs.sqlite`` indexes the
summary columns so that ``loopml runs list`` never opens every ``run.json``.
Run ids sort by time: ``20261123T193012-ab12cd`` (UTC start time and 6 random
hex digits).

``run.json`` is written to a temporary name and renamed, so a reader never
sees half a file; the index row is written after it, so an indexed run always
has its folder.

A run is ``running`` only while its process lives. Recording a ``running`` run
makes the store's process its owner: before the record says ``running`` the
store takes an exclusive lock on ``<run_id>/.owner.lock`` (see
:mod:`loopml.ownership`), which it lets go only after recording the final
status, and which the kernel lets go when the process dies, SIGKILL included.
Every read (:meth:`RunStore.list`, :meth:`RunStore.get`) checks the owner of
each ``running`` run it returns: if it can take the lock, the owner is gone,
and the run is rewritten as ``failed`` with the reason (``run.json``
atomically, then its index row) before it is returned. A reader that finds
``run.json`` finished but the index still ``running`` (the owner died between
the two writes) puts the index right.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from loopml.errors import LoopmlError
from loopml.ownership import Ownership, acquire, owner_gone

RUN_FILE = "run.json"
INDEX_FILE = "runs.sqlite"
OWNER_FILE = ".owner.lock"
RUNNING = "running"
_RUN_ID = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{6}$")
_LIBRARIES = ("loopml", "numpy", "pandas", "pyarrow", "duckdb", "scikit-learn", "lightgbm", "scipy")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    status TEXT NOT NULL,
    model_type TEXT,
    model_version INTEGER,
    promoted INTEGER,
    metric TEXT,
    value REAL,
    duration_s REAL
)
"""


def new_run_id(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape a model (and Python's)."""
    out = {"python": sys.version.split()[0]}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(folder: Path) -> str:
    """The commit checked out in ``folder`` (suffixed ``-dirty`` with local changes), or ``unknown``."""
    git = shutil.which("git")
    if git is None or not folder.is_dir():
        return "unknown"
    try:
        head = subprocess.run(
            [git, "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(
            [git, "-C", str(folder), "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],  # read-only
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = head.stdout.strip()
    return f"{commit}-dirty" if status.returncode == 0 and status.stdout.strip() else commit


@dataclass
class RunRecord:
    """Everything ``run.json`` holds about one training run."""

    run_id: str
    status: str
    started_at: str
    finished_at: str | None = None
    duration_s: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    baseline_metrics: dict[str, Any] | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    warnings: list[str] = field(default_factory=list)
    model_version: int | None = None
    promoted: bool | None = None
    gate: dict[str, Any] | None = None
    artifacts: list[str] = field(default_factory=list)
    error: str | None = None
    pid: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class RunSummary:
    """One row of the run index."""

    run_id: str
    started_at: str
    status: str
    model_type: str | None
    model_version: int | None
    promoted: bool | None
    metric: str | None
    value: float | None
    duration_s: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Row = tuple[str, str, str, str | None, int | None, int | None, str | None, float | None, float | None]


def _row(run: RunRecord, metric: str | None) -> Row:
    """The index row of ``run``; ``metric`` is the headline (test) metric."""
    test = run.metrics.get("test", {}) if isinstance(run.metrics.get("test"), dict) else {}
    value = test.get(metric) if metric else None
    promoted = None if run.promoted is None else int(run.promoted)
    model_type = run.params.get("model_type")
    return (run.run_id, run.started_at, run.status, model_type, run.model_version, promoted, metric, value, run.duration_s)


def _summary(r: Row) -> RunSummary:
    return RunSummary(r[0], r[1], r[2], r[3], r[4], None if r[5] is None else bool(r[5]), r[6], r[7], r[8])


def _dead_owner_reason(pid: int | None) -> str:
    process = f"the training process (pid {pid})" if pid is not None else "the training process"
    return f"{process} ended without finishing the run"


class RunStore:
    """Run folders under ``root`` (``layout.runs``) and their SQLite index.

    The store owns the ``running`` runs it recorded (until it records their final status); see the module docstring.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._owned: dict[str, Ownership] = {}

    def _connect(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.root / INDEX_FILE, timeout=30.0)
        con.execute(_SCHEMA)
        return con

    def run_dir(self, run_id: str) -> Path:
        """The run's folder (created); ``run_id`` must look like one of ours."""
        if not _RUN_ID.match(run_id):
            raise LoopmlError(f"run id {run_id!r} is not valid (expected e.g. 20261123T193012-ab12cd)")
        folder = self.root / run_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def record(self, run: RunRecord, metric: str | None = None) -> Path:
        """Write ``run.json`` atomically and upsert the index row; ``metric`` is the headline (test) metric.

        Recording a ``running`` run makes this process its owner (and sets ``run.pid``); recording any other
        status lets ownership go, after the record is written.
        """
        folder = self.run_dir(run.run_id)
        taken = run.status == RUNNING and run.run_id not in self._owned
        if taken:
            owner = acquire(folder / OWNER_FILE)
            if owner is None:
                raise LoopmlError(f"{folder}: run {run.run_id} is owned by another process")
            self._owned[run.run_id] = owner
            run.pid = os.getpid()
        try:
            path = self._write(run, metric)
        except BaseException:
            if taken:  # the run was never recorded as ours
                self._owned.pop(run.run_id).release()
            raise
        if run.status != RUNNING and run.run_id in self._owned:
            self._owned.pop(run.run_id).release()
        return path

    def _write(self, run: RunRecord, metric: str | None) -> Path:
        folder = self.run_dir(run.run_id)
        path = folder / RUN_FILE
        # a name of its own: readers rewriting a dead run may write at the same time as each other
        tmp = folder / f".{RUN_FILE}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            tmp.write_text(json.dumps(run.to_json(), indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except ValueError as exc:
            tmp.unlink(missing_ok=True)
            raise LoopmlError(f"{path}: run record is not plain JSON ({exc})") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._index(run, metric)
        return path

    def _index(self, run: RunRecord, metric: str | None) -> None:
        with closing(self._connect()) as con, con:
            con.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _row(run, metric))

    def list(self, limit: int = 50, offset: int = 0) -> builtins.list[RunSummary]:
        """Newest runs first (a ``running`` run whose process is gone comes back ``failed``)."""
        with closing(self._connect()) as con:
            query = "SELECT * FROM runs ORDER BY run_id DESC LIMIT ? OFFSET ?"
            rows: builtins.list[Row] = con.execute(query, (max(limit, 0), max(offset, 0))).fetchall()
        for i, row in enumerate(rows):
            if row[2] == RUNNING:
                settled = self._settle(row[0], row[6])
                if settled is not None:
                    rows[i] = _row(settled, row[6])
        return [_summary(r) for r in rows]

    def get(self, run_id: str) -> RunRecord:
        """Everything ``run.json`` holds (a ``running`` run whose process is gone comes back ``failed``)."""
        run = self._read(run_id)
        if run.status == RUNNING and run_id not in self._owned:
            try:
                with closing(self._connect()) as con:
                    found = con.execute("SELECT metric FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            except (OSError, sqlite3.Error):
                found = None  # a read-only store: settling can only report, not record
            return self._settle(run_id, found[0] if found else None) or run
        return run

    def _read(self, run_id: str) -> RunRecord:
        path = self.root / run_id / RUN_FILE
        if not _RUN_ID.match(run_id) or not path.is_file():
            raise LoopmlError(f"{self.root}: no run {run_id!r} (see 'loopml runs list')")
        try:
            return RunRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as exc:
            raise LoopmlError(f"{path}: run record is damaged ({exc})") from None

    def _settle(self, run_id: str, metric: str | None) -> RunRecord | None:
        """The run as it stands if its owner is gone (rewritten ``failed`` if it was ``running``), else ``None``."""
        if run_id in self._owned or not _RUN_ID.match(run_id):
            return None
        with owner_gone(self.root / run_id / OWNER_FILE) as gone:
            if not gone:
                return None
            try:
                run = self._read(run_id)  # again, under the lock: the owner records its final status before letting go
            except LoopmlError:
                return None
            try:
                if run.status == RUNNING:
                    run.status, run.error = "failed", _dead_owner_reason(run.pid)
                    self._write(run, metric)
                else:  # the owner finished run.json but died before its index row
                    self._index(run, metric)
            except (OSError, sqlite3.Error):
                pass  # a read-only store: report the truth without recording it
            return run
