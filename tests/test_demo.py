"""``loopml demo`` as a user runs it: a real process, a summary table, a report, a trained and served model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end_and_reports(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-run"
    done = subprocess.run(
        [sys.executable, "-m", "loopml", "demo", "--workdir", str(workdir), "--requests", "400"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert "loopml demo" in done.stdout and "test average_precision" in done.stdout
    assert f"report: {workdir / 'report.html'}" in done.stdout.splitlines()
    result = json.loads((workdir / "summary.json").read_text())
    summary = result["summary"]
    assert summary["live requests"] == 400
    assert summary["test average_precision"] > 0.5 and summary["test roc_auc"] > 0.8
    assert result["train"]["promoted"] is True and result["train"]["model_version"] == 1
    assert result["ingest"]["rows_in"] == result["ingest"]["rows_valid"] + result["ingest"]["rows_quarantined"]
    assert result["monitor"]["predictions"] == 400 and result["monitor"]["labelled"] == 400
    assert any(d["feature"] == "score" for d in result["monitor"]["drift"])
    assert "Drift" in (workdir / "report.html").read_text()
