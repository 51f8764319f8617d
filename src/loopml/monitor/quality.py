"""Data quality of live traffic against the reference stored with the model.

Per column, over the whole period (and per window, for the dashboard):

* **null rate** against the reference's (flagged when it rose by more than
  ``monitoring.quality.null_rate_increase``, absolute);
* **out of range** (numeric): the share of values outside the reference range
  ``[min - t (max - min), max + t (max - min)]``, ``t`` =
  ``quality.range_tolerance`` (flagged above ``quality.out_of_range``);
* **unseen categories** (string columns): the share of values not among the
  reference's categories (flagged when it exceeds the reference's own "other"
  share by more than ``quality.unseen_categories``; the reference keeps the
  1000 most frequent categories, so beyond that "unseen" means "not among
  them"), with a few examples;
* **schema**: reference columns missing from the logged features and logged
  keys the reference does not know, read from the JSON keys of the latest
  ``SCHEMA_SAMPLE`` (1000) rows (a bounded read whatever the log size), plus
  values of the wrong type (a string where a number belongs; they count as
  NULL for drift): when the sample shows one, every row of the period is
  re-read as text and the bad values are counted exactly;
* **freshness**: the age of each feature view's last materialization into the
  online store (flagged only when ``quality.max_feature_age`` is set).

The counts come from the same per-column profiles as drift
(:mod:`loopml.monitor.drift`), so quality costs no extra pass over the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from loopml.monitor.drift import ColumnSummary
from loopml.monitor.live_rows import NUMBER_TYPES, LiveData, LoggedSchema
from loopml.monitor.stattests import CategoricalReference, ColumnReference, NumericReference
from loopml.spec.model import Quality

_EXAMPLES = 5


@dataclass(frozen=True)
class QualityIssue:
    """One flagged problem: ``check`` (null_rate, out_of_range, unseen_categories, schema, freshness) on ``subject``."""

    check: str
    subject: str
    message: str
    value: float | None
    threshold: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "subject": self.subject,
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
        }


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def column_quality(
    summaries: list[ColumnSummary], references: dict[str, ColumnReference], live: LiveData, settings: Quality
) -> tuple[list[dict[str, Any]], list[QualityIssue], list[list[dict[str, Any]]]]:
    """Per-column quality over the period, the flagged issues, and per-window rows (null rate, out of range, unseen)."""
    columns: list[dict[str, Any]] = []
    issues: list[QualityIssue] = []
    n_windows = len(summaries[0].rows) - 1 if summaries else 0
    per_window: list[list[dict[str, Any]]] = [[] for _ in range(n_windows)]
    for s in summaries:
        ref = references[s.name]
        rows, nulls = int(s.rows[-1]), int(s.nulls[-1])
        present = rows - nulls
        ref_null = ref.null_rate if isinstance(ref, NumericReference) else float(ref.fractions[-1])
        entry: dict[str, Any] = {
            "feature": s.name,
            "kind": s.kind,
            "rows": rows,
            "null_rate": _share(nulls, rows),
            "reference_null_rate": ref_null,
            "type_errors": live.type_errors.get(s.name, 0),
        }
        null_rate = _share(nulls, rows)
        if null_rate is not None and null_rate - ref_null > settings.null_rate_increase:
            issues.append(
                QualityIssue(
                    "null_rate",
                    s.name,
                    f"{s.name}: {null_rate:.1%} null in live traffic vs {ref_null:.1%} in training",
                    null_rate,
                    ref_null + settings.null_rate_increase,
                )
            )
        if s.out_of_range is not None and isinstance(ref, NumericReference):
            share = _share(int(s.out_of_range[-1]), present)
            entry |= {"out_of_range": share, "range": [ref.low, ref.high]}
            if share is not None and share > settings.out_of_range:
                issues.append(
                    QualityIssue(
                        "out_of_range",
                        s.name,
                        f"{s.name}: {share:.1%} of values outside the training range [{ref.low:.6g}, {ref.high:.6g}]",
                        share,
                        settings.out_of_range,
                    )
                )
        if s.other is not None and isinstance(ref, CategoricalReference):
            share = _share(int(s.other[-1]), present)
            ref_other = float(ref.fractions[-2])
            entry |= {"unseen": share, "unseen_examples": _unseen_examples(ref, live.categorical.get(s.name))}
            if share is not None and share - ref_other > settings.unseen_categories:
                examples = ", ".join(repr(v) for v in entry["unseen_examples"])
                issues.append(
                    QualityIssue(
                        "unseen_categories",
                        s.name,
                        f"{s.name}: {share:.1%} of values never seen in training (e.g. {examples})",
                        share,
                        ref_other + settings.unseen_categories,
                    )
                )
        if entry["type_errors"]:
            issues.append(
                QualityIssue(
                    "schema",
                    s.name,
                    f"{s.name}: {entry['type_errors']:,} value(s) of the wrong type (expected numbers)",
                    float(entry["type_errors"]),
                    0.0,
                )
            )
        columns.append(entry)
        for w in range(n_windows):
            r, nl = int(s.rows[w]), int(s.nulls[w])
            row: dict[str, Any] = {"feature": s.name, "rows": r, "null_rate": _share(nl, r)}
            if s.out_of_range is not None:
                row["out_of_range"] = _share(int(s.out_of_range[w]), r - nl)
            if s.other is not None:
                row["unseen"] = _share(int(s.other[w]), r - nl)
            per_window[w].append(row)
    return columns, issues, per_window


def _unseen_examples(ref: CategoricalReference, values: pa.ChunkedArray | None) -> list[str]:
    if values is None or not len(values):
        return []
    strings = pc.drop_null(pc.cast(values, pa.string()))
    unseen = pc.filter(strings, pc.invert(pc.is_in(strings, value_set=pa.array(ref.values, pa.string()))))
    counts = pc.value_counts(unseen).to_pylist()
    counts.sort(key=lambda item: (-item["counts"], str(item["values"])))
    return [str(item["values"]) for item in counts[:_EXAMPLES]]


def schema_issues(
    schema: LoggedSchema | None, references: dict[str, ColumnReference], score: str
) -> tuple[dict[str, Any], list[QualityIssue]]:
    """Reference columns missing from (some of) the latest logged rows, keys the reference does not know, wrong types."""
    if schema is None:
        return {"checked_rows": 0, "missing": [], "extra": [], "types": {}}, []
    expected = {name for name in references if name != score}
    missing = sorted(name for name in expected if schema.present.get(name, 0) < schema.rows)
    extra = sorted(set(schema.present) - expected)
    issues = []
    for name in missing:
        absent = schema.rows - schema.present.get(name, 0)
        message = f"{name}: a model input missing from {absent:,} of the latest {schema.rows:,} logged rows"
        issues.append(QualityIssue("schema", name, message, float(absent), 0.0))
    issues += [
        QualityIssue("schema", name, f"{name}: logged but unknown to the model version's reference", None, None) for name in extra
    ]
    for name, kind in sorted(schema.types.items()):
        if name in expected and isinstance(references[name], NumericReference) and kind not in NUMBER_TYPES:
            issues.append(
                QualityIssue("schema", name, f"{name}: logged as {kind} in the latest rows, expected numbers", None, None)
            )
    summary = {"checked_rows": schema.rows, "missing": missing, "extra": extra, "types": dict(schema.types)}
    return summary, issues


def freshness(
    materialized: dict[str, datetime | None], now: datetime, settings: Quality
) -> tuple[list[dict[str, Any]], list[QualityIssue]]:
    """Age of each feature view's last materialization; flagged beyond ``max_feature_age`` when set."""
    rows: list[dict[str, Any]] = []
    issues: list[QualityIssue] = []
    for view, at in sorted(materialized.items()):
        if at is None:
            rows.append({"view": view, "materialized_at": None, "age_s": None})
            continue
        local = at.astimezone().replace(tzinfo=None) if at.tzinfo is not None else at
        age = (now - local).total_seconds()
        rows.append({"view": view, "materialized_at": at.isoformat(), "age_s": age})
        limit = settings.max_feature_age
        if limit is not None and age > limit.total_seconds():
            issues.append(
                QualityIssue(
                    "freshness",
                    view,
                    f"feature view {view}: last materialized {age / 3600:.1f} h ago",
                    age,
                    limit.total_seconds(),
                )
            )
    return rows, issues
