"""Stream scoring: a consumer group reading a Redis Stream of events, scoring each, writing the scores to another stream.

``loopml stream score --input transactions --output scores``. Input entries
have the format of ``loopml features consume`` (:mod:`loopml.features.stream`:
field = source column, value = text, empty = NULL). For each entry, in stream
order:

1. **Score it as the online service would have scored the request**: entity
   keys and request features from the entry, features through the online
   service's own :class:`~loopml.features.vector.FeatureAssembler` (online
   store events as of the entry's time) and
   :class:`~loopml.serve.service.ModelInput`, the model the champion alias
   (``rollout.alias``) points at, re-read when the alias moves (or a fixed
   ``version``). The event is scored *before* it is applied, so it never sees
   itself.
2. **Write** ``{request_id, score, model_version, variant}`` to the output
   stream with the input entry's id as the output entry's id
   (``XADD output <id>``). ``request_id`` is the source's id column
   (``transaction_id``) or, without one, the entry id; ``score`` is the float's
   shortest exact text (``repr``). ``missing_entities`` lists entities the
   store did not know, when any.
3. **Apply** the event to the online store
   (:func:`~loopml.features.push.push_events`, idempotent per event id).
4. **Log** the batch's predictions to the prediction log (``storage.prediction_log``),
   as the online service logs its own: model inputs by name, the entry's event
   time, variant, version; ``latency_ms`` is the time to score the entry's run.
   Every ``COMPACT_SECONDS`` the scorer compacts the log's small parts, as a
   server does (one part per batch would otherwise pile up).
5. **Acknowledge** (``XACK``) only after all of them.

Batches: entries are read ``batch`` at a time and processed in runs of
consecutive entries that share no entity key; a run is scored in one call,
written, then applied, which gives each entry exactly the features it would
get one entry at a time (an entry only reads its own entities' events).

**At least once, written once.** A scorer that dies anywhere leaves its
entries pending; restarted (under any consumer name), it first takes over
every entry pending in the group and redoes those, oldest first. An output
entry already written is refused by Redis (its id is not above the stream's
last one); the scorer checks that it is there and counts it as written, so the
output keeps the score written the first time. Re-applying an event changes
nothing (one copy per event id). Scores equal an uninterrupted run's: events
are applied only after their scores were written, in stream order, so an entry
whose score was not written yet is scored from the same store state as before
the crash. The prediction log gets each output entry once: a redone entry
whose prediction is already logged is not logged again, and one whose score was
written before the crash is logged with that score (read back from the output
stream); its logged features are recomputed, and include its own event when the
crash came after the event was applied. Because output ids follow input ids, one scorer writes an output
stream (a second scorer in the group stops with an error naming the entry
rather than lose it). Entries idle longer than ``claim_idle_ms`` in another
consumer are claimed (``XAUTOCLAIM``), as in ``features consume``.

**Bad entries** (an unparsable time, amount or key; a stream id too large for
an event id) get no score: they are copied to ``<output>:quarantine`` (with
the same id, field ``__reason``) and acknowledged. An entry scored but refused
by the store (e.g. no event id) is quarantined the same way after its score
was written. An unreachable online store or Redis is reported and retried;
nothing is acknowledged meanwhile. A model that fails or returns NaN stops the
scorer with an error; the entries stay pending.

Written on top of :class:`~loopml.features.stream.StreamConsumer` (group
creation, pending and claimed entries, the retry loop); redis-py is the
optional ``loopml[redis]`` extra.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from loopml.errors import LoopmlError
from loopml.features.definitions import feature_columns, view_key
from loopml.features.online.base import OnlineStore, key_text
from loopml.features.push import event_id_column, push_events
from loopml.features.stream import (
    ORIGIN_FIELD,
    REASON_FIELD,
    ConsumeStats,
    StreamConsumer,
    as_text,
    connect_streams,
    stream_event_id,
    stream_source,
)
from loopml.features.vector import AssembledBatch, FeatureAssembler, RequestFeatureError
from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.records import LoggedPrediction
from loopml.registry.base import Registry
from loopml.serve.batch import LoadedModel, load_model
from loopml.serve.model_input import prediction_record
from loopml.spec.model import Spec

__all__ = ["DEFAULT_GROUP", "ScoringConsumer", "default_scorer_name", "score_stream"]

#: The consumer group of scorers (``features consume`` uses ``loopml``: both can read one stream).
DEFAULT_GROUP = "loopml-score"
#: How often the champion alias is looked up again (hot swap).
RELOAD_SECONDS = 5.0
#: How often the prediction log is compacted (as ``loopml serve`` does, for a scorer running without a server).
COMPACT_SECONDS = 300.0
_log = logging.getLogger(__name__)
_TOO_SMALL = "equal or smaller than the target stream top item"


def default_scorer_name() -> str:
    """The host name: the same across restarts of a scorer on this machine."""
    return f"{socket.gethostname()}-scorer"


@dataclass
class _Entry:
    id: str
    fields: dict[str, str]
    row: dict[str, Any]
    event_id: int | None = None
    reason: str | None = None


@dataclass
class _Scored:
    """One run's scored entries (the assembler's refusals left out) and what the prediction log needs."""

    entries: list[_Entry]
    scores: list[float]
    assembled: AssembledBatch | None
    matrix: npt.NDArray[np.float64] | None
    latency_ms: float

    @property
    def missing(self) -> list[list[str]]:
        return self.assembled.missing_entities if self.assembled is not None else []


class ScoringConsumer(StreamConsumer):
    """One scorer: reads ``stream`` in ``group``, writes scores to ``output`` (see the module docstring)."""

    def __init__(
        self,
        spec: Spec,
        store: OnlineStore,
        client: redis.Redis,
        registry: Registry,
        stream: str,
        output: str,
        source: str,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        batch: int = 200,
        claim_idle_ms: int = 60_000,
        version: int | None = None,
        alias: str | None = None,
        reload_seconds: float = RELOAD_SECONDS,
        log: PredictionLogBackend | None = None,
        compact_seconds: float = COMPACT_SECONDS,
    ) -> None:
        if output == stream:
            raise LoopmlError(f"--output {output}: the output stream must not be the input stream")
        super().__init__(spec, store, client, stream, source, group, consumer or default_scorer_name(), batch, claim_idle_ms)
        self.output = output
        self.quarantine = f"{output}:quarantine"
        self.registry = registry
        self.version = version
        self.alias = alias or spec.rollout.alias
        self.variant = self.alias if version is None else f"v{version}"
        self.reload_seconds = reload_seconds
        self.log = log
        self.compact_seconds = compact_seconds
        self.compactions = 0
        self._compacted = time.monotonic()
        self.assembler = FeatureAssembler(spec, store)
        self.id_column = event_id_column(spec, source)
        self.keys = list(dict.fromkeys(view_key(spec, name) for name in spec.features.views))
        self._model: LoadedModel | None = None
        self._checked = 0.0

    def ensure_group(self) -> None:
        """Create the group if needed, then take over every entry pending in it (a scorer restarted under another name).

        Output ids follow input ids, so the oldest unacknowledged entries must be redone before any new one.
        """
        super().ensure_group()
        cursor = "0-0"
        while True:
            claimed: Any = self.client.xautoclaim(self.stream, self.group, self.consumer, 0, cursor, count=1000)
            cursor = claimed[0].decode() if isinstance(claimed[0], bytes) else str(claimed[0])
            if cursor == "0-0":
                return

    # -- the model ------------------------------------------------------------
    def model(self) -> LoadedModel:
        """The live model: reloaded when the alias moved (checked every ``reload_seconds``)."""
        now = time.monotonic()
        if self._model is not None and (self.version is not None or now - self._checked < self.reload_seconds):
            return self._model
        self._checked = now
        if self.version is None:
            record = self.registry.alias(self.alias)
            if record is None:
                raise LoopmlError(f"registry: alias {self.alias!r} points at no model version; train one or pass --model VERSION")
            if self._model is not None and self._model.version == record.version:
                return self._model
        self._model = load_model(self.spec, self.registry, feature_columns(self.spec), self.version, self.alias)
        return self._model

    # -- one batch ------------------------------------------------------------
    def _parse(self, entry_id: str, fields: dict[str, str]) -> _Entry:
        entry = _Entry(entry_id, fields, {k: (None if v == "" else v) for k, v in fields.items()})
        if self.id_column is None:
            try:
                entry.event_id = stream_event_id(entry_id)
            except ValueError as exc:
                entry.reason = str(exc)
        return entry

    def _request(self, entry: _Entry) -> tuple[dict[str, Any], dict[str, Any]]:
        entities = {key: entry.row[key] for key in self.keys if entry.row.get(key) is not None}
        features = {name: entry.row.get(name) for name in self.spec.features.request}
        return entities, features

    def _runs(self, entries: list[_Entry]) -> list[list[_Entry]]:
        """Consecutive entries split where an entity key repeats (scoring a run at once == one at a time)."""
        runs: list[list[_Entry]] = []
        seen: set[tuple[str, str]] = set()
        current: list[_Entry] = []
        for entry in entries:
            mine = set()
            for key in self.keys:
                value = entry.row.get(key)
                if value is not None:
                    try:
                        mine.add((key, key_text(value)))
                    except LoopmlError:
                        mine.add((key, str(value)))
            if mine & seen:
                runs.append(current)
                current, seen = [], set()
            current.append(entry)
            seen |= mine
        if current:
            runs.append(current)
        return runs

    def _score(self, run: list[_Entry], model: LoadedModel) -> _Scored:
        """Score the run's entries in one call; an entry the assembler refuses is marked bad and the rest retried."""
        started = time.perf_counter()
        pending = [e for e in run if e.reason is None]
        while pending:
            try:
                assembled = self.assembler.vectors([self._request(e) for e in pending])
            except RequestFeatureError as exc:
                for index, field, message in exc.problems:  # each bad entry's first problem
                    entry = pending[index if index is not None else 0]
                    entry.reason = entry.reason or f"{field}: {message}"
                pending = [e for e in pending if e.reason is None]
                continue
            matrix = model.matrix(assembled)
            scores = model.score_matrix(matrix, f" on {self.stream} entry {pending[0].id}")
            latency_ms = (time.perf_counter() - started) * 1000.0
            return _Scored(pending, scores.tolist(), assembled, matrix, latency_ms)
        return _Scored([], [], None, None, 0.0)

    def _request_id(self, entry: _Entry) -> str:
        value = entry.row.get(self.id_column) if self.id_column is not None else None
        return str(value) if value is not None else entry.id

    def _xadd_once(self, stream: str, records: Sequence[tuple[str, Mapping[str, str]]]) -> dict[str, dict[str, str]]:
        """``XADD stream <id>`` each record; an id Redis refuses must already be there. Returns those already there."""
        if not records:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for entry_id, fields in records:
            record: dict[Any, Any] = dict(fields)
            pipe.xadd(stream, record, id=entry_id)
        results = pipe.execute(raise_on_error=False)
        before: dict[str, dict[str, str]] = {}
        for (entry_id, _), result in zip(records, results, strict=True):
            if not isinstance(result, Exception):
                continue
            if not (isinstance(result, redis.exceptions.ResponseError) and _TOO_SMALL in str(result)):
                raise result
            there: Any = self.client.xrange(stream, min=entry_id, max=entry_id)
            if not there:
                raise LoopmlError(
                    f"stream {stream}: entry {entry_id} is not there but later entries are; the output follows the input's "
                    "ids, so only one scorer may write it (run a single consumer per output stream)"
                )
            before[entry_id] = {as_text(k): as_text(v) for k, v in there[0][1].items()}
        return before

    def _write(self, scored: _Scored, version: int) -> dict[str, dict[str, str]]:
        """Write the run's scores; returns the output entries that were already there (id -> fields)."""
        records = []
        for entry, score, missing in zip(scored.entries, scored.scores, scored.missing, strict=True):
            fields = {
                "request_id": self._request_id(entry),
                "score": repr(score),
                "model_version": str(version),
                "variant": self.variant,
            }
            if missing:
                fields["missing_entities"] = ",".join(missing)
            records.append((entry.id, fields))
        return self._xadd_once(self.output, records)

    def _records(self, scored: _Scored, model: LoadedModel, before: dict[str, dict[str, str]]) -> list[LoggedPrediction]:
        """The run's prediction-log records; an entry already written keeps the score it was written with."""
        if scored.assembled is None or scored.matrix is None:
            return []
        names, version = model.predictor.feature_names, model.version
        now = datetime.now()
        out = []
        for i, (entry, score) in enumerate(zip(scored.entries, scored.scores, strict=True)):
            written = before.get(entry.id)
            logged_version = version
            if written is not None:
                score, logged_version = float(written["score"]), int(written["model_version"])
            entities = {key: entry.row[key] for key in self.keys if entry.row.get(key) is not None}
            out.append(
                prediction_record(
                    self._request_id(entry),
                    entities,
                    names,
                    scored.matrix[i],
                    scored.assembled,
                    i,
                    now,
                    score,
                    logged_version,
                    self.variant,
                    scored.latency_ms,
                )
            )
        return out

    def _log(self, records: list[LoggedPrediction], redone: bool) -> None:
        """Append the batch's records; a redone batch skips the request ids already logged."""
        if self.log is None or not records:
            return
        if redone:
            known = self.log.known_request_ids([r.request_id for r in records])
            records = [r for r in records if r.request_id not in known]
        self.log.append(records)
        self._compact()

    def _compact(self) -> None:
        """Every ``compact_seconds``, merge the log's small parts (the Parquet log; one part per batch adds up)."""
        if self.log is None or self.compact_seconds <= 0 or time.monotonic() - self._compacted < self.compact_seconds:
            return
        self._compacted = time.monotonic()
        self.compactions += 1
        try:
            self.log.compact()
        except Exception as exc:  # the log stays readable uncompacted; scoring goes on
            _log.warning("prediction log compaction failed (scoring goes on): %s", exc)

    def _push(self, entries: list[_Entry]) -> None:
        """Apply the events to the online store; the ones it refuses are marked bad."""
        if not entries:
            return
        ids = None if self.id_column is not None else [int(e.event_id or 0) for e in entries]
        result = push_events(self.spec, self.store, self.source, [e.row for e in entries], ids)
        for index, reason in result.quarantined:
            entries[index].reason = f"not applied to the online store: {reason}"

    def step(self, block_ms: int = 1000, limit: int | None = None) -> ConsumeStats:
        """Process one batch (pending entries first, else new ones, waiting up to ``block_ms``); see the module docstring."""
        count = self.batch if limit is None else max(1, min(self.batch, limit))
        raw = self._pending(count)
        redone = bool(raw)
        raw = raw or self._new(count, block_ms)
        stats = ConsumeStats(messages=len(raw))
        if not raw:
            return stats
        model = self.model()
        entries = [self._parse(entry_id, fields) for entry_id, fields in raw if fields]
        records: list[LoggedPrediction] = []
        for run in self._runs(entries):
            scored = self._score(run, model)
            before = self._write(scored, model.version)
            stats.written += len(scored.entries) - len(before)
            if self.log is not None:
                records.extend(self._records(scored, model, before))
            self._push(scored.entries)
        self._log(records, redone)
        bad = [(e.id, {**e.fields, REASON_FIELD: e.reason or "", ORIGIN_FIELD: e.id}) for e in entries if e.reason is not None]
        self._xadd_once(self.quarantine, bad)
        stats.quarantined = len(bad)
        self.client.xack(self.stream, self.group, *[entry_id for entry_id, _ in raw])
        return stats


def score_stream(
    spec: Spec,
    store: OnlineStore,
    registry: Registry,
    stream: str,
    output: str,
    group: str = DEFAULT_GROUP,
    consumer: str | None = None,
    source: str | None = None,
    version: int | None = None,
    batch: int = 200,
    max_entries: int | None = None,
    until_idle: bool = False,
    report: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    log: PredictionLogBackend | None = None,
) -> ConsumeStats:
    """``loopml stream score``: score ``stream`` into ``output`` (both at ``storage.redis_url``) until told to stop.

    Returns the entries handled, the output entries newly written (``written``) and the entries quarantined.
    With ``log``, every prediction written is also logged there (the project's prediction log for the CLI).
    """
    if batch < 1:
        raise LoopmlError(f"--batch: must be at least 1, got {batch}")
    if output == stream:
        raise LoopmlError(f"--output {output}: the output stream must not be the input stream")
    name = stream_source(spec, source)
    client = connect_streams(spec.storage.redis_url)
    try:
        scorer = ScoringConsumer(
            spec,
            store,
            client,
            registry,
            stream,
            output,
            name,
            group=group,
            consumer=consumer,
            batch=batch,
            version=version,
            log=log,
        )
        scorer.model()  # fail now, not at the first entry, when there is no model
        progress = None
        if report is not None:
            say = report

            def progress(line: str) -> None:  # the base class counts "new events"; here they are scores written
                say(line.replace(" new events,", " scores written,"))

        return scorer.run(stop=stop, max_messages=max_entries, until_idle=until_idle, report=progress)
    finally:
        client.close()
