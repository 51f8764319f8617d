"""Drift of live traffic against the reference statistics stored with the model.

This first version computes the PSI (see :mod:`loopml.train.reference` for
the binning and epsilon) of every logged feature and of the score, over the
prediction-log rows served by one model version, optionally since a time.
Fewer than ``monitoring.min_rows`` rows is reported as "not enough data",
never as drift.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np

from loopml.monitor.predlog import PredictionLog
from loopml.spec.model import Monitoring
from loopml.train.reference import psi


@dataclass(frozen=True)
class DriftResult:
    feature: str
    test: str
    statistic: float | None
    drifted: bool
    rows: int
    status: str  # "ok" | "drift" | "not enough data" | "no reference"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def current_values(log: PredictionLog, version: int, since: datetime | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Logged feature columns and scores of one model version as float arrays (NaN for missing)."""
    where = "model_version = ?" + (" AND ts >= ?" if since else "")
    params: list[Any] = [version] + ([since] if since else [])
    with log.connect() as con:
        rows = con.execute(f"SELECT features, score FROM predictions WHERE {where} ORDER BY ts", params).fetchall()
    scores = np.array([r[1] for r in rows], dtype=np.float64)
    parsed = [json.loads(r[0]) for r in rows]
    names = list(parsed[0]) if parsed else []
    columns = {name: np.array([np.nan if p.get(name) is None else p[name] for p in parsed], dtype=np.float64) for name in names}
    return columns, scores


def psi_drift(
    reference: dict[str, Any], features: dict[str, np.ndarray], scores: np.ndarray, settings: Monitoring
) -> list[DriftResult]:
    """PSI per feature and for the score; ``reference`` is the model version's stored statistics."""
    epsilon = float(reference.get("epsilon", 1e-4))
    items = [(name, values, reference.get("features", {}).get(name)) for name, values in features.items()]
    items.append(("score", scores, reference.get("score")))
    out = []
    for name, values, ref in items:
        n = len(values)
        if ref is None:
            out.append(DriftResult(name, "psi", None, False, n, "no reference"))
        elif n < settings.min_rows:
            out.append(DriftResult(name, "psi", None, False, n, "not enough data"))
        else:
            value = psi(ref, values, epsilon)
            drifted = value > settings.psi_threshold
            out.append(DriftResult(name, "psi", value, drifted, n, "drift" if drifted else "ok"))
    return out
