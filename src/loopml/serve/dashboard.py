"""``GET /ui``: a small server-rendered status page.

This first version shows the live model, the registry and prediction-log
counts as plain HTML (no JavaScript); charts of drift and performance over
time arrive with the monitoring work.
"""

from __future__ import annotations

import html
from typing import Any

from loopml.monitor.predlog import PredictionLogBackend

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>loopml</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}th{{background:#f3f3f3}}</style></head>
<body><h1>loopml</h1>
<p>Live model: <b id="live-version">{live}</b> &middot; predictions logged: <b id="logged">{logged}</b>
&middot; labelled: <b id="labelled">{labelled}</b></p>
<h2>Model versions</h2><table id="versions"><tr><th>version</th><th>aliases</th><th>created</th><th>metrics</th></tr>
{rows}</table></body></html>"""


def render_dashboard(models: dict[str, Any], log: PredictionLogBackend) -> str:
    with log.connect() as con:
        counts = con.execute("SELECT count(*), count(label) FROM labelled").fetchone()
    logged, labelled = (int(counts[0]), int(counts[1])) if counts else (0, 0)
    rows = []
    for v in models.get("versions", []):
        metrics = ", ".join(f"{k}={val:.4f}" for k, val in (v.get("metrics") or {}).items() if isinstance(val, float))
        rows.append(
            f"<tr><td>{v['version']}</td><td>{html.escape(', '.join(v.get('aliases', [])))}</td>"
            f"<td>{html.escape(str(v.get('created_at', '')))}</td><td>{html.escape(metrics)}</td></tr>"
        )
    live = models.get("live_version")
    return _PAGE.format(live="none" if live is None else live, logged=logged, labelled=labelled, rows="\n".join(rows))
