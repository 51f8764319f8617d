"""For tests that serve the fraud example: request bodies of its live rows, and a second model version to roll out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from loopml.registry.base import Registry


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


def add_version(registry: Registry, alias: str) -> int:
    """Register the champion's artifact again as a new version and point ``alias`` at it."""
    champion = registry.alias("champion")
    assert champion is not None
    version = registry.register(
        champion.artifact_path,
        champion.kind,
        champion.metrics,
        champion.lineage,
        champion.signature,
        registry.reference_stats(champion.version),
    )
    registry.set_alias(alias, version.version, "test challenger")
    return version.version
