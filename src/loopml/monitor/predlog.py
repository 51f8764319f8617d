"""The prediction log: every served prediction, and the labels that arrive later, however late.

Two backends keep the same contract (:class:`PredictionLogBackend`, tested by
one suite in ``tests/test_predlog.py``): :class:`PredictionLog`, the default,
appends Parquet parts to a folder and queries them with DuckDB; the
PostgreSQL one (:mod:`loopml.monitor.predlog_postgres`) keeps two tables on a
shared server. :func:`open_prediction_log` picks the one ``storage.prediction_log``
names.

Readers use :meth:`~PredictionLogBackend.connect`: an in-memory DuckDB
connection with three views, the same for both backends:

* ``predictions`` — one row per prediction (request id, time, entities and
  features as JSON text, score, model version, variant, latency);
* ``feedback`` — every label received (request id, label, time received);
* ``labelled`` — ``predictions`` with the latest label of each request
  (``label``, ``label_ts``; NULL while none arrived).

Late labels: a label is stored whatever its request id, and joined only when
read, so a label that arrives before its prediction is logged (or for a
prediction still in another process's queue) waits "pending" and joins
automatically once the prediction is there; :meth:`unmatched_feedback`
reports the ones that never matched. The latest label of a request is the
one received last (ties: the one written last).

The Parquet backend: parts are written to a temporary name, fsync'ed and
renamed, so a crash never leaves a half-written part, several processes can
read while the server writes (a single DuckDB database file would lock readers
out), and writers never rewrite a part. Layout under
``<state>/predictions/``: ``log/`` (one row per prediction) and
``feedback/part-*.parquet`` (request id, label, time).

Compaction (:mod:`loopml.monitor.predlog_compact`, :meth:`PredictionLog.compact`,
run by the serving logger every few minutes) merges runs of old small parts of
a folder into one part that sorts where the run was, and records in the
folder's ``compacted.json`` which parts it replaces. The reader rule: a reader
lists a folder's parts first, then reads that record, drops replaced parts
whose merged part it listed, and hands DuckDB that explicit list (never a
pattern DuckDB would expand later): every row is read exactly once while
compactions run. Replaced parts are deleted ``grace`` seconds (10 minutes) later.

Feature values are stored as one JSON text column (what every reader of
``predictions`` sees, so that the view does not change when the feature list
does) and, in parts written since typed columns were added, once more as one
typed column per feature: ``n:<feature>`` (DOUBLE) when every value of the
feature in the part is a number, ``s:<feature>`` (VARCHAR) when every value is
a string, none when every value is missing; plus the marker column ``_typed``
(true). Such parts go to ``log/typed-<hash of the schema>/part-*.parquet``, one
folder per set of typed columns, so that each folder is read as one schema
(DuckDB then reads one footer per folder to plan a query, where a union by name
over the files would read every footer of thousands of parts at every query).
The folders are unioned by column name: rows of a part without a typed column
read NULL there, and the marker tells parts without any apart. A batch with a
feature of mixed or other types (booleans, lists...) or two column names that
differ only in case (DuckDB names are case-insensitive) is written without
typed columns to ``log/part-*.parquet``, where the parts written before typed
columns also are. :func:`loopml.monitor.drift.load_live` reads the typed
columns straight into Arrow instead of parsing 50 JSON values per row (about
8 s per million rows of 50 features) and parses the JSON only of rows without
them (those parts, the PostgreSQL log). The hidden view ``_predictions_wide``
is ``predictions`` with the extra columns.

Times are naive local timestamps (what ``datetime.now()`` gives, as the server
logs them); timezone-aware bounds are converted to local time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loopml.errors import LoopmlError
from loopml.monitor.predlog_compact import STALE_TMP_SECONDS, CompactStats, compact_log, live_parts

if TYPE_CHECKING:
    from loopml.layout import Layout
    from loopml.spec.model import Spec

LOG_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("ts", pa.timestamp("us")),
        ("entities", pa.string()),
        ("features", pa.string()),
        ("score", pa.float64()),
        ("model_version", pa.int64()),
        ("variant", pa.string()),
        ("latency_ms", pa.float64()),
    ]
)
FEEDBACK_SCHEMA = pa.schema([("request_id", pa.string()), ("label", pa.float64()), ("ts", pa.timestamp("us"))])
#: the columns of :meth:`PredictionLogBackend.read` and of the ``labelled`` view
LABELLED_SCHEMA = pa.schema([*LOG_SCHEMA, ("label", pa.float64()), ("label_ts", pa.timestamp("us"))])

#: a part's constant true column saying that its features are also stored as typed columns
TYPED_MARKER = "_typed"
#: the typed column of a feature whose values in a part are all numbers (DOUBLE) / all strings (VARCHAR)
NUMBER_PREFIX, STRING_PREFIX = "n:", "s:"
#: parts with typed columns live in ``log/typed-<schema hash>/``, one folder per set of typed columns
TYPED_FOLDER_PREFIX = "typed-"
#: ``predictions`` with every stored column (typed feature columns included, when there are any)
WIDE_PREDICTIONS = "_predictions_wide"


@dataclass(frozen=True)
class LoggedPrediction:
    request_id: str
    ts: datetime
    entities: dict[str, Any]
    features: dict[str, float]
    score: float
    model_version: int
    variant: str
    latency_ms: float


@dataclass(frozen=True)
class Feedback:
    request_id: str
    label: float
    ts: datetime


@runtime_checkable
class PredictionLogBackend(Protocol):
    """What every prediction-log backend offers (the contract of ``tests/test_predlog.py``)."""

    #: names the log in error messages (a folder, or a URL without its password)
    where: str

    def append(self, rows: Sequence[LoggedPrediction]) -> None:
        """Store predictions; all of the batch or (on error, which is raised) none of it."""
        ...

    def add_feedback(self, items: Sequence[Feedback]) -> None:
        """Store labels, whether or not their predictions are logged yet."""
        ...

    def connect(
        self, since: datetime | None = None, until: datetime | None = None, model_version: int | None = None
    ) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the views ``predictions``, ``feedback`` and ``labelled``.

        The bounds select predictions with ``since <= ts < until`` of one model version; ``feedback``
        then holds the labels of the selected predictions only.
        """
        ...

    def count(self) -> int:
        """The number of predictions logged."""
        ...

    def read(self, since: datetime | None = None, until: datetime | None = None, model_version: int | None = None) -> pa.Table:
        """The ``labelled`` rows (:data:`LABELLED_SCHEMA`) in the bounds, oldest first."""
        ...

    def unmatched_feedback(self, older_than: timedelta | None = None) -> list[Feedback]:
        """The latest label of each request id not in the log, received more than ``older_than`` ago."""
        ...

    def known_request_ids(self, request_ids: Sequence[str]) -> set[str]:
        """Which of these request ids have a logged prediction."""
        ...

    def close(self) -> None:
        """Release connections (the log stays usable: it reconnects on demand)."""
        ...


# -- shared by both backends --------------------------------------------------------------------------


def clean_float(value: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite feature values are logged as null (missing)."""
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def to_json(values: dict[str, Any], default: Callable[[Any], Any] | None = None) -> str:
    """JSON text of a row's entities or features; non-finite numbers become null.

    orjson first (about ten times faster than ``json``, and it writes NaN and
    Infinity as null already); ``json`` for what orjson refuses (integers past
    64 bits, lone surrogates), so every row is still logged.
    """
    try:
        return orjson.dumps(values, default=default, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:
        return json.dumps({k: clean_float(v) for k, v in values.items()}, default=default)


def log_table(rows: Sequence[LoggedPrediction]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "request_id": [r.request_id for r in rows],
            "ts": [r.ts for r in rows],
            "entities": [to_json(r.entities, default=str) for r in rows],
            "features": [to_json(r.features) for r in rows],
            "score": [r.score for r in rows],
            "model_version": [r.model_version for r in rows],
            "variant": [r.variant for r in rows],
            "latency_ms": [r.latency_ms for r in rows],
        },
        schema=LOG_SCHEMA,
    )


def typed_feature_columns(rows: Sequence[LoggedPrediction]) -> dict[str, pa.Array]:
    """The batch's features as typed columns (see the module doc), the marker first; empty when the batch cannot have them.

    A feature with only missing values gets no column (a reader sees NULL, as the JSON gives); a
    value of another type than number or string (a boolean, a list...), an integer past 64 bits, a
    feature holding numbers in some rows and strings in others, or two column names equal but for
    case leave the whole part untyped: its readers parse the JSON, which stays the reference. Each
    column is converted by Arrow in one call (its type inference decides the kind), not value by value.
    """
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row.features))
    columns: dict[str, pa.Array] = {}
    for key in sorted(keys):  # sorted: one schema per set of columns
        try:
            array = pa.array([row.features.get(key) for row in rows], from_pandas=True)  # NaN -> null
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            return {}
        kind = array.type
        if pa.types.is_null(kind):
            continue
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            numbers = array.cast(pa.float64(), safe=False)
            columns[NUMBER_PREFIX + key] = pc.if_else(pc.is_finite(numbers), numbers, None)  # +-Infinity -> null
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            columns[STRING_PREFIX + key] = array.cast(pa.string())
        else:
            return {}
    folded = {TYPED_MARKER, *(name.lower() for name in LOG_SCHEMA.names)}
    for name in columns:
        if name.lower() in folded:
            return {}
        folded.add(name.lower())
    return {TYPED_MARKER: pa.array([True] * len(rows), pa.bool_()), **columns}


def typed_folder(schema: pa.Schema) -> str:
    """The folder of the parts of this schema (names and types of every column)."""
    described = json.dumps([[f.name, str(f.type)] for f in schema])
    return TYPED_FOLDER_PREFIX + hashlib.sha256(described.encode()).hexdigest()[:16]


def feedback_table(items: Sequence[Feedback]) -> pa.Table:
    return pa.Table.from_pydict(
        {"request_id": [i.request_id for i in items], "label": [i.label for i in items], "ts": [i.ts for i in items]},
        schema=FEEDBACK_SCHEMA,
    )


def naive_local(value: datetime) -> datetime:
    """The log's time base: naive local time."""
    return value if value.tzinfo is None else value.astimezone().replace(tzinfo=None)


def _sql_timestamp(value: datetime) -> str:
    return f"TIMESTAMP '{naive_local(value).isoformat(sep=' ')}'"


def prediction_filter(since: datetime | None, until: datetime | None, model_version: int | None) -> str:
    """A SQL condition (DuckDB and PostgreSQL) on ``ts`` and ``model_version``; ``TRUE`` without bounds."""
    parts = []
    if since is not None:
        parts.append(f"ts >= {_sql_timestamp(since)}")
    if until is not None:
        parts.append(f"ts < {_sql_timestamp(until)}")
    if model_version is not None:
        parts.append(f"model_version = {int(model_version)}")
    return " AND ".join(parts) or "TRUE"


def install_views(con: duckdb.DuckDBPyConnection, predictions_sql: str, feedback_sql: str, filtered: bool) -> None:
    """Create the three views (and :data:`WIDE_PREDICTIONS`) from two relations.

    ``predictions_sql`` must have the columns of :data:`LOG_SCHEMA` and may have typed feature
    columns (kept in :data:`WIDE_PREDICTIONS` only). ``feedback_sql`` must have ``request_id, label, ts`` and
    an ordering column ``_seq`` (a later write sorts after an earlier one), used to break ties
    between labels received at the same time.
    """
    log_columns = ", ".join(LOG_SCHEMA.names)
    con.execute(f"CREATE VIEW {WIDE_PREDICTIONS} AS SELECT * FROM {predictions_sql}")
    con.execute(f"CREATE VIEW predictions AS SELECT {log_columns} FROM {WIDE_PREDICTIONS}")
    raw = f"(SELECT * FROM {feedback_sql})"
    if filtered:
        raw = f"(SELECT * FROM {feedback_sql} WHERE request_id IN (SELECT request_id FROM predictions))"
    con.execute(f"CREATE VIEW _feedback_raw AS SELECT * FROM {raw}")
    con.execute("CREATE VIEW feedback AS SELECT request_id, label, ts FROM _feedback_raw")
    con.execute(
        """CREATE VIEW labelled AS
           SELECT p.*, f.label, f.label_ts FROM predictions p
           LEFT JOIN (
               SELECT request_id, label, ts AS label_ts FROM _feedback_raw
               QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY ts DESC, _seq DESC) = 1
           ) f USING (request_id)"""
    )


def read_labelled(con: duckdb.DuckDBPyConnection) -> pa.Table:
    table = con.sql("SELECT * FROM labelled ORDER BY ts, request_id").to_arrow_table()
    return table.cast(LABELLED_SCHEMA)


def feedback_list(rows: list[tuple[Any, ...]]) -> list[Feedback]:
    return [Feedback(request_id=str(r[0]), label=float(r[1]), ts=r[2]) for r in rows]


# -- the default backend: Parquet parts + DuckDB -----------------------------------------------------------


class PredictionLog:
    """Append predictions and feedback as Parquet parts in a folder; query them with DuckDB."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder)
        self._swept = False

    @property
    def _log_dir(self) -> Path:
        return self.folder / "log"

    @property
    def _feedback_dir(self) -> Path:
        return self.folder / "feedback"

    def _write_part(self, folder: Path, table: pa.Table, subfolder: str | None = None) -> None:
        try:
            target = folder / subfolder if subfolder else folder
            target.mkdir(parents=True, exist_ok=True)
            if not self._swept:
                self._sweep()
            name = f"part-{datetime.now():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = target / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh)
                fh.flush()
                os.fsync(fh.fileno())  # the bytes are on disk before the name is: a power cut leaves no empty part
            os.replace(tmp, target / name)
        except OSError as exc:
            raise LoopmlError(f"prediction log {folder}: cannot write a part ({exc.strerror or exc})") from None

    def _sweep(self) -> None:
        """Delete temporary parts left by writers that died long ago (never one being written now)."""
        self._swept = True
        cutoff = time.time() - STALE_TMP_SECONDS
        for sub in (self._log_dir, *self._typed_dirs(), self._feedback_dir):
            for tmp in sub.glob(".part-*.tmp") if sub.is_dir() else ():
                try:
                    if tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
                except OSError:
                    pass

    def _typed_dirs(self) -> list[Path]:
        """The folders of the parts with typed columns, one per schema (see the module doc)."""
        if not self._log_dir.is_dir():
            return []
        return sorted(p for p in self._log_dir.glob(f"{TYPED_FOLDER_PREFIX}*") if p.is_dir())

    def append(self, rows: Sequence[LoggedPrediction]) -> None:
        if rows:
            table = log_table(rows)
            typed = typed_feature_columns(rows)
            for name, column in typed.items():
                table = table.append_column(name, column)
            self._write_part(self._log_dir, table, typed_folder(table.schema) if typed else None)

    def add_feedback(self, items: Sequence[Feedback]) -> None:
        if items:
            self._write_part(self._feedback_dir, feedback_table(items))

    def _log_relation(self) -> str:
        """Every logged prediction: the untyped parts and each folder of typed ones, unioned by column name.

        Each folder holds parts of one schema, so DuckDB reads one footer per folder to bind (a union by
        name over the files would read every footer at every query: seconds for thousands of parts).
        """
        listed = [live_parts(folder) for folder in (self._log_dir, *self._typed_dirs())]
        scans = [self._relation(parts, LOG_SCHEMA) for parts in listed if parts]
        if not scans:
            return self._relation([], LOG_SCHEMA)
        return "(" + " UNION ALL BY NAME ".join(f"SELECT * FROM {scan}" for scan in scans) + ")"

    @staticmethod
    def _relation(parts: list[Path], schema: pa.Schema, ordered: bool = False) -> str:
        """A scan of one folder's parts, as listed by :func:`~loopml.monitor.predlog_compact.live_parts`.

        An explicit list, never a pattern DuckDB would expand at query time: only a listing taken
        before the compaction record was read is consistent with it (see the module doc).
        """
        extra = ", NULL::VARCHAR AS _file, NULL::BIGINT AS _row" if ordered else ""
        if not parts:
            cols = ", ".join(f"NULL::{_duck_type(f.type)} AS {f.name}" for f in schema)
            return f"(SELECT {cols}{extra} WHERE false)"
        files = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts) + "]"
        if ordered:  # part names start with their write time: (file name, row) is the write order
            cols = ", ".join(f.name for f in schema)
            return (
                f"(SELECT {cols}, filename AS _file, file_row_number AS _row "
                f"FROM read_parquet({files}, filename = true, file_row_number = true))"
            )
        return f"read_parquet({files})"

    def connect(
        self, since: datetime | None = None, until: datetime | None = None, model_version: int | None = None
    ) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with views ``predictions``, ``feedback`` and ``labelled``.

        ``labelled`` joins each prediction with its latest feedback label (NULL while none arrived).
        """
        con = duckdb.connect()
        con.execute("SET parquet_metadata_cache = true")  # parts never change: read each footer once per connection
        where = prediction_filter(since, until, model_version)
        predictions = f"(SELECT * FROM {self._log_relation()} WHERE {where})"
        ordered = self._relation(live_parts(self._feedback_dir), FEEDBACK_SCHEMA, ordered=True)
        feedback = f"(SELECT request_id, label, ts, (_file, _row) AS _seq FROM {ordered})"
        install_views(con, predictions, feedback, filtered=where != "TRUE")
        return con

    def count(self) -> int:
        with self.connect() as con:
            row = con.execute("SELECT count(*) FROM predictions").fetchone()
        return int(row[0]) if row else 0

    def read(self, since: datetime | None = None, until: datetime | None = None, model_version: int | None = None) -> pa.Table:
        with self.connect(since, until, model_version) as con:
            return read_labelled(con)

    def unmatched_feedback(self, older_than: timedelta | None = None) -> list[Feedback]:
        cutoff = "" if older_than is None else f"AND ts < {_sql_timestamp(datetime.now() - older_than)}"
        with self.connect() as con:
            rows = con.execute(
                f"""SELECT request_id, label, ts FROM _feedback_raw
                    WHERE request_id NOT IN (SELECT request_id FROM predictions) {cutoff}
                    QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY ts DESC, _seq DESC) = 1
                    ORDER BY ts, request_id"""
            ).fetchall()
        return feedback_list(rows)

    def known_request_ids(self, request_ids: Sequence[str]) -> set[str]:
        if not request_ids:
            return set()
        wanted = pa.table({"request_id": pa.array(list(request_ids), pa.string())})
        with self.connect() as con:
            con.register("_wanted", wanted)
            rows = con.execute("SELECT DISTINCT request_id FROM predictions WHERE request_id IN (SELECT request_id FROM _wanted)")
            return {str(r[0]) for r in rows.fetchall()}

    def close(self) -> None:
        return None

    def compact(self, min_age: float = 60.0, target_rows: int = 1_000_000, grace: float = 600.0) -> CompactStats:
        """Merge runs of small parts older than ``min_age`` seconds (see :mod:`loopml.monitor.predlog_compact`).

        Safe while other processes write and read; while another process compacts, this call does
        nothing (``skipped``). Replaced parts are deleted once ``grace`` seconds have passed, by this
        call or a later one.
        """
        return compact_log(self.folder, [self._log_dir, *self._typed_dirs(), self._feedback_dir], min_age, target_rows, grace)


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_integer(t):
        return "BIGINT"
    return "DOUBLE"


# -- labels files (``loopml feedback --file``) ------------------------------------------------------------

_TRUE, _FALSE = {"true", "yes"}, {"false", "no"}


def _label_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return 1.0 if text in _TRUE else 0.0
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _read_labels_table(path: Path) -> pa.Table:
    import pyarrow.csv as pacsv

    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise LoopmlError(f"{path}: a labels file must be .csv or .parquet (columns request_id,label[,ts])")
    if not path.is_file():
        raise LoopmlError(f"{path}: no such labels file")
    try:
        if suffix == ".csv":
            with open(path, encoding="utf-8-sig", newline="") as fh:
                header = fh.readline()
            import csv

            names = next(csv.reader([header]), [])
            return pacsv.read_csv(
                path,
                # every column as text: each value is checked below, with its row number
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in names}, null_values=[""], strings_can_be_null=True
                ),
            )
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoopmlError(f"{path}: cannot read the labels file ({reason})") from None


def read_labels_file(path: Path, now: datetime | None = None) -> list[Feedback]:
    """The labels of a CSV/Parquet file with columns ``request_id`` and ``label`` (and optionally ``ts``).

    Labels are numbers or ``true``/``false``; ``ts`` (when the label became known) defaults to now.
    Other columns are ignored. A bad value is an error naming the file, the row (1-based, the header
    not counted) and the column; nothing is stored unless every row is valid.
    """
    table = _read_labels_table(path)
    missing = [c for c in ("request_id", "label") if c not in table.column_names]
    if missing:
        found = ", ".join(table.column_names) or "none"
        needs = "a labels file needs request_id,label"
        raise LoopmlError(f"{path}: missing column(s) {', '.join(missing)} (found: {found}); {needs}")
    received = naive_local(now or datetime.now())
    ids = table.column("request_id").to_pylist()
    labels = table.column("label").to_pylist()
    times: list[Any] = table.column("ts").to_pylist() if "ts" in table.column_names else [None] * len(ids)
    out = []
    for row, (request_id, label, ts) in enumerate(zip(ids, labels, times, strict=True), start=1):
        if request_id is None or str(request_id).strip() == "":
            raise LoopmlError(f"{path} row {row}: request_id is empty")
        value = _label_value(label)
        if value is None:
            raise LoopmlError(f"{path} row {row}: label {label!r} is not a finite number (or true/false)")
        if ts is None:
            when = received
        elif isinstance(ts, datetime):
            when = naive_local(ts)
        else:
            try:
                when = naive_local(datetime.fromisoformat(str(ts).strip()))
            except ValueError:
                raise LoopmlError(f"{path} row {row}: ts {ts!r} is not an ISO date or time") from None
        out.append(Feedback(request_id=str(request_id), label=value, ts=when))
    return out


def open_prediction_log(spec: Spec, layout: Layout) -> PredictionLogBackend:
    """The prediction-log backend named by ``storage.prediction_log``."""
    if spec.storage.prediction_log == "postgres":
        url = os.environ.get("LOOPML_PREDLOG_URL") or spec.storage.prediction_log_url
        if not url:
            raise LoopmlError("storage.prediction_log_url: the postgres prediction log needs a URL (or set LOOPML_PREDLOG_URL)")
        try:
            from loopml.monitor.predlog_postgres import PostgresPredictionLog
        except ImportError:
            raise LoopmlError("storage.prediction_log: postgres needs the extra (pip install 'loopml[postgres]')") from None
        return PostgresPredictionLog(url)
    return PredictionLog(layout.prediction_log)
