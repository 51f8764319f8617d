"""The dashboard page: ``GET /ui``, a static page that draws ``GET /v1/dashboard``.

The page (``dashboard.html`` with ``dashboard.js`` inlined, package data next to
this module) fetches ``/v1/dashboard`` (its data, assembled by
:class:`loopml.monitor.dashboard.board.Dashboard`) and draws every chart itself
as SVG. The chart renderer is a small hand-written vanilla-JS line/bar renderer
rather than a charting library because the server and its users may have no
network: a CDN script would not load, and vendoring a library (hundreds of KB)
for a few line and bar charts is not worth it. Every chart has a title, axis
labels and an explicit "no data yet" state.
"""

from __future__ import annotations

from importlib import resources


def render_page() -> str:
    """``GET /ui``: the page shell with its script inlined (no other request but ``/v1/dashboard``)."""
    here = resources.files("loopml.serve")
    page = here.joinpath("dashboard.html").read_text(encoding="utf-8")
    script = here.joinpath("dashboard.js").read_text(encoding="utf-8")
    return page.replace("/*DASHBOARD_JS*/", script.replace("</script", "<\\/script"))
