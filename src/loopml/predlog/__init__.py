"""The prediction log: every served prediction, and the labels that arrive later, however late.

Its own package: serving writes it; monitoring, experiments and the loop read it.

Two backends keep the same contract (:class:`PredictionLogBackend`, tested by
one suite in ``tests/test_contract_predlog.py``): :class:`PredictionLog`, the default,
appends Parquet parts to a folder and queries them with DuckDB; the
PostgreSQL one (:mod:`loopml.predlog.postgres`) keeps two tables on a
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

Nothing answered is lost: the serving logger (:mod:`loopml.predlog.writer`)
appends each micro-batch's records to a local write-ahead journal
(:mod:`loopml.predlog.journal`, ``<state>/predictions-journal/``) with one
write before the answers are sent, and writes them to the backend in batches;
what a killed server left there is replayed (once: :meth:`~PredictionLogBackend.unlogged`)
by the next server start and by ``Project.prediction_log()``.

The Parquet backend: parts are written to a temporary name, fsync'ed and
renamed (the folder fsync'ed too), so a crash never leaves a half-written part, several processes can
read while the server writes (a single DuckDB database file would lock readers
out), and writers never rewrite a part. Layout under
``<state>/predictions/``: ``log/`` (one row per prediction) and
``feedback/part-*.parquet`` (request id, label, time).

Compaction (:mod:`loopml.predlog.compact`, :meth:`PredictionLog.compact`,
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

from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.records import FEEDBACK_SCHEMA, LABELLED_SCHEMA, LOG_SCHEMA, Feedback, LoggedPrediction

__all__ = ["FEEDBACK_SCHEMA", "LABELLED_SCHEMA", "LOG_SCHEMA", "Feedback", "LoggedPrediction", "PredictionLogBackend"]
