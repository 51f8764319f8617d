"""``loopml demo`` as a user runs it: a real process, the whole story, a summary table and a report with plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-run"
    done = subprocess.run(
        [sys.executable, "-m", "loopml", "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert "loopml demo" in done.stdout and "AP after promotion" in done.stdout
    assert f"report: {workdir / 'report.html'}" in done.stdout.splitlines()
    result = json.loads((workdir / "summary.json").read_text())
    summary = result["summary"]
    assert result["train"]["promoted"] is True and result["train"]["model_version"] == 1
    assert result["ingest"]["rows_in"] == result["ingest"]["rows_valid"] + result["ingest"]["rows_quarantined"]
    # the new fraud pattern hurts the first model...
    assert summary["AP before the new pattern (v1)"] > 0.6
    assert summary["AP under the new pattern, v1"] < summary["AP before the new pattern (v1)"] - 0.1
    # ...monitoring notices, the loop retrains, canaries through the live service and promotes...
    assert summary["retraining runs"] >= 1 and summary["champion now"] > 1
    assert any("canary promoted" in e["event"] for e in result["events"])
    canaried = [d for d in result["days"] if len(d["versions"]) > 1]
    assert canaried, "no day was split between two versions (the canary)"
    # ...and the promoted model recovers what was lost
    assert summary["AP after promotion"] > summary["AP under the new pattern, v1"] + 0.1
    report = (workdir / "report.html").read_text()
    assert "data:image/png;base64," in report and "canary promoted" in report
    # every live payment was scored, logged and labelled (the last day's labels are still on their way)
    assert summary["live payments"] == sum(d["requests"] for d in result["days"])
