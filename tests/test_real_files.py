"""Real files, as users have them (issue 12, section 3): ``init --data`` -> ``ingest`` -> ``features build`` -> ``train``
-> ``predict`` through the command line, one test per way a real file broke the first run.

The files are written here, small, with the quirks that public data sets have (statsmodels, scikit-learn): no time
column, blank or ``nan`` labels, header names LightGBM refuses, an entity key without a timestamp.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pcsv
import pytest
from typer.testing import CliRunner

from loopml.cli import app
from loopml.errors import LoopmlError
from loopml.project import Project
from loopml.train.models import fit_model

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


def test_a_yes_no_label_takes_the_positive_class_as_written(tmp_path: Path) -> None:
    rows = [[*numbers(i), ("No", "Yes")[binary_label(i)]] for i in range(ROWS)]
    data = write_csv(tmp_path / "credit.csv", ["income", "children", "default"], rows)
    said = run(tmp_path / "project", data, "--label", "default", "--positive", "Yes")
    assert "label 'default' is No, Yes, positive class Yes" in said["init"]
    spec = Project.load(tmp_path / "project").spec
    assert spec.label.positive == "Yes" and spec.sources["credit"].columns["default"].allowed == ["No", "Yes"]
    code, _, err = cli("init", str(tmp_path / "other"), "--data", str(data), "--label", "default", "--positive", "yes please")
    assert code == 1 and "--positive 'yes please' is not a value of label column 'default' (values: No, Yes)" in err


def test_rows_without_a_label_are_set_aside_and_counted(tmp_path: Path) -> None:
    # as pandas writes a 0/1 label with gaps: 1.0, 0.0, nan, and a blank cell now and then
    labels = [None if i % 11 == 0 else "nan" if i % 7 == 0 else float(binary_label(i)) for i in range(ROWS)]
    rows = [[*numbers(i), label] for i, label in enumerate(labels)]
    data = write_csv(tmp_path / "survey.csv", ["income", "children", "affairs"], rows)
    missing = sum(v is None or v == "nan" for v in labels)
    said = run(tmp_path / "project", data, "--label", "affairs")
    assert f"label 'affairs': {missing} of {ROWS} rows have no value (blank or NaN)" in said["init"]
    assert Project.load(tmp_path / "project").spec.task == "binary"
    assert f"warning: {tmp_path}" in said["train"]
    assert f"{missing} of {ROWS} row(s) have no label 'affairs' (blank, NaN or not known yet); set aside" in said["train"]
    scored = pcsv.read_csv(tmp_path / "project" / "scored.csv")
    assert scored.num_rows == ROWS and scored.column("score").null_count == 0


def test_a_label_the_model_cannot_use_is_named_as_the_label() -> None:
    X = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.where(np.arange(20) % 5 == 0, np.nan, np.arange(20.0))
    with pytest.raises(LoopmlError, match=r"^label.column: 4 training row\(s\) have a label that is NaN or infinite"):
        fit_model("lightgbm", "regression", X, y, ["a", "b"])


def test_text_categories_and_an_entity_without_time_are_model_inputs(tmp_path: Path) -> None:
    channels = ("web", "app", "shop")
    rows = [[i % 30, channels[i % 3], *numbers(i), binary_label(i)] for i in range(ROWS)]
    data = write_csv(tmp_path / "visits.csv", ["user_id", "channel", "income", "children", "churned"], rows)
    said = run(tmp_path / "project", data, "--label", "churned", "--entity", "user_id")
    assert "entity 'user_id': no timestamp, so no history views; kept as a categorical feature" in said["init"]
    registry = Project.load(tmp_path / "project").registry()
    encoded = {column["name"]: column["encoding"] for column in registry.get(1).signature if "encoding" in column}
    onehot = {f"channel_onehot={c}": "channel_onehot" for c in [*channels, "__other__"]}
    assert encoded == {**onehot, "user_id_target": "user_id_target"}
    spec = Project.load(tmp_path / "project").spec
    assert spec.split.method == "random" and spec.split.group == "user_id"
    split = registry.get(1).lineage["split"]
    assert split["test"]["rows"] % 8 == 0  # whole users: each has 8 rows
    assert pcsv.read_csv(tmp_path / "project" / "scored.csv").num_rows == ROWS


def test_day_first_dates_go_through_ingest_training_and_predict(tmp_path: Path) -> None:
    start = date(2017, 1, 1)
    rows = [[(start + timedelta(days=i // 4)).strftime("%d.%m.%Y"), i % 8, *numbers(i), binary_label(i)] for i in range(ROWS)]
    data = write_csv(tmp_path / "shop.csv", ["day", "customer", "income", "children", "bought"], rows)
    said = run(tmp_path / "project", data, "--label", "bought", "--entity", "customer")
    assert "no day_hour feature: every day has the same hour" in said["init"]
    spec = Project.load(tmp_path / "project").spec
    assert spec.sources["shop"].timestamp == "day" and spec.sources["shop"].columns["day"].format == "%d.%m.%Y"
    assert set(spec.features.transforms) == {"day_day_of_week"}
    scored = pcsv.read_csv(
        tmp_path / "project" / "scored.csv", convert_options=pcsv.ConvertOptions(column_types={"day": "string"})
    )
    assert scored.num_rows == ROWS and scored.column("day").to_pylist()[:2] == ["01.01.2017", "01.01.2017"]
