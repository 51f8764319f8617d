"""Real files, as users have them (issue 12, section 3): ``init --data`` -> ``ingest`` -> ``features build`` -> ``train``
-> ``predict`` through the command line, one test per way a real file broke the first run.

The files are written here, small, with the quirks that public data sets have (statsmodels, scikit-learn): no time
column, blank or ``nan`` labels, header names LightGBM refuses, an entity key without a timestamp.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pyarrow.csv as pcsv
from typer.testing import CliRunner

from loopml.cli import app
from loopml.project import Project

runner = CliRunner()
ROWS = 240


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    """A CSV as a spreadsheet writes it: ``None`` is a blank cell, everything else as ``str`` gives it."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


def numbers(i: int) -> tuple[float, int]:
    """Two inputs of row ``i`` that the label below depends on."""
    return round(10 + 5 * math.sin(i * 0.7) + (i % 7), 3), i % 5


def binary_label(i: int) -> int:
    x, k = numbers(i)
    return int(x + 2 * k > 17)


def run(project: Path, data: Path, *init_args: str) -> dict[str, str]:
    """Every command of a first run, each of which must succeed; their stderr by command."""
    code, _, err = cli("init", str(project), "--data", str(data), *init_args)
    assert code == 0, err
    said = {"init": err}
    for command in (["check"], ["ingest"], ["features", "build"], ["train"]):
        code, _, err = cli(*command, "--project", str(project))
        assert code == 0, f"{command}: {err}"
        said[command[0]] = err
    code, _, err = cli("predict", "--input", str(data), "--output", str(project / "scored.csv"), "--project", str(project))
    assert code == 0, err
    return said


def test_a_file_without_a_time_column_is_scored_by_predict(tmp_path: Path) -> None:
    rows = [[*numbers(i), binary_label(i)] for i in range(ROWS)]
    data = write_csv(tmp_path / "cards.csv", ["income", "children", "default"], rows)
    run(tmp_path / "project", data, "--label", "default")
    scored = pcsv.read_csv(tmp_path / "project" / "scored.csv")
    assert scored.column_names == ["income", "children", "default", "score", "model_version"]
    assert scored.num_rows == ROWS and all(0 <= s <= 1 for s in scored.column("score").to_pylist())


def test_header_names_lightgbm_refuses_are_trained_and_shown_as_written(tmp_path: Path) -> None:
    names = ['a"b', "unit price", "x:y", "[p]{q},r"]  # the first is the header cell "a""b"
    rows = [[*numbers(i), i % 3, i % 4, binary_label(i)] for i in range(ROWS)]
    data = write_csv(tmp_path / "odd.csv", [*names, "label"], rows)
    assert data.read_text().startswith('"a""b",unit price,x:y,"[p]{q},r",label\n')
    project = tmp_path / "project"
    run(project, data, "--label", "label")
    registry = Project.load(project).registry()
    assert registry.load_predictor(1).feature_names == names == registry.get(1).feature_names
    [report] = (project / ".loopml" / "runs").glob("*/report.json")
    importance = json.loads(report.read_text())["explanations"]["importance"]
    assert sorted(row["feature"] for row in importance) == sorted(names)
