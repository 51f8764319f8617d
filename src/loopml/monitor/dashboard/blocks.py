"""The dashboard JSON's building blocks: charts, tables, and numbers a strict JSON encoder accepts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Json = dict[str, Any]
Point = list[Any]  # [x, y]: x in epoch milliseconds (or a category name), y a number or None
TABLE_ROWS = 20  # rows of the events, versions and runs tables (the newest)


def chart(
    chart_id: str,
    kind: str,
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[Json],
    *,
    x_type: str = "time",
    lines: Sequence[Json] = (),
    empty: str = "no data yet",
    bar_width: float | None = None,
) -> Json:
    """A chart the page draws: ``series`` are ``{"name", "points": [[x, y], ...], "style"?}``.

    ``lines`` are horizontal references ``{"name", "y", "fit"?}``; with ``"fit": false`` a line does not
    stretch the y axis (the page then lists it in the legend as "above the chart" instead of drawing it).
    """
    out: Json = {
        "id": chart_id,
        "kind": kind,
        "title": title,
        "x_label": x_label,
        "y_label": y_label,
        "x_type": x_type,
        "series": list(series),
        "lines": list(lines),
        "empty": empty,
    }
    if bar_width is not None:
        out["bar_width"] = bar_width
    return out


def table(table_id: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> Json:
    return {"id": table_id, "title": title, "columns": list(columns), "rows": [list(r) for r in rows], "empty": empty}


def no_model(what: str) -> Json:
    """The body of a section that needs a loaded model while none is."""
    return {"note": f"no model is loaded, so there is no {what} to show"}


def number(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    out = float(value)
    return out if np.isfinite(out) else None


def plain(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN/infinity to None (a strict JSON encoder refuses them)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return number(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)
