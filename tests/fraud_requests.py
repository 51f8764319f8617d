"""Request bodies of the fraud example for tests that talk to the service: the live rows kept aside by the example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


def live_rows(project: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` live transactions of a fraud project (after its snapshot, in time order)."""
    return pq.read_table(project / "data" / "live.parquet").slice(0, n).to_pylist()


def body(row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The ``POST /v1/predict`` body of a live row (``extra``: e.g. ``request_id``)."""
    return {
        "entities": {"customer_id": row["customer_id"], "terminal_id": row["terminal_id"]},
        "features": {"tx_amount": row["tx_amount"], "tx_datetime": row["tx_datetime"].isoformat()},
        **extra,
    }
