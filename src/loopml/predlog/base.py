"""The contract every prediction-log backend keeps (one suite tests them all: ``tests/test_contract_predlog.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import duckdb
import pyarrow as pa

from loopml.predlog.compact import CompactStats
from loopml.predlog.records import Feedback, LoggedPrediction


@runtime_checkable
class PredictionLogBackend(Protocol):
    """What every prediction-log backend offers (the contract of ``tests/test_contract_predlog.py``)."""

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

    def unlogged(
        self, rows: Sequence[LoggedPrediction], items: Sequence[Feedback]
    ) -> tuple[list[LoggedPrediction], list[Feedback]]:
        """Those of these records the log does not hold yet, in their order (what a journal replay still has to write).

        A prediction is held when a row has its ``request_id``, ``ts`` and ``variant`` (a shadow
        variant's row shares the first two with the answer's); a label when one has its
        ``request_id``, ``label`` and ``ts``.
        """
        ...

    def compact(self) -> CompactStats:
        """Merge what the backend stores in many small pieces into few (a no-op where nothing needs it)."""
        ...

    def close(self) -> None:
        """Release connections (the log stays usable: it reconnects on demand)."""
        ...
