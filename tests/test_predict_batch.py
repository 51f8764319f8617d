"""Batch scoring (``loopml predict``): the online service's scores, chunked or not, CSV or Parquet, and bad input.

The equality with the online service: the project's online store is
materialized at the end of its snapshot, and the input rows are the live
transactions that come after it (``data/live.parquet``), never pushed. The
online service computes each request's features from the store's events as
of the request's time; batch scoring computes them from the snapshot's events
as of the row's time; both see exactly the snapshot's events before that time,
so the scores must agree (to 1e-9 relative; they are in fact equal).
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from loopml.cli import app
from loopml.data import inputs
from loopml.features.chunks import ChunkFeatures
from loopml.project import Project
from loopml.server import BackgroundServer, build_app
from served_fraud import body

runner = CliRunner()


@pytest.fixture(scope="module")
def project(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the trained project for the module (the server logs predictions into it)."""
    target = tmp_path_factory.mktemp("batch") / "project"
    shutil.copytree(trained_project, target)
    return target


@pytest.fixture(scope="module")
def live(project: Path) -> pa.Table:
    """2,000 live transactions (after the snapshot) in shuffled time order, plus two of unknown customers."""
    table = pq.read_table(project / "data" / "live.parquet").slice(0, 2000)
    order = np.random.default_rng(7).permutation(table.num_rows)
    table = table.take(pa.array(order))
    strangers = table.slice(0, 2).to_pylist()
    for i, row in enumerate(strangers):
        row["customer_id"] = 10**9 + i
        row["transaction_id"] = 10**9 + i
    return pa.concat_tables([table, pa.Table.from_pylist(strangers, schema=table.schema)])


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def scored(project: Path, live: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """The live rows scored by ``loopml predict`` in one chunk (Parquet to Parquet)."""
    folder = tmp_path_factory.mktemp("scored")
    pq.write_table(live, folder / "in.parquet")
    result = Project.load(project).predict_file(folder / "in.parquet", folder / "out.parquet")
    assert result.rows == live.num_rows and result.chunks == 1
    return pq.read_table(folder / "out.parquet")


def test_batch_scores_equal_the_online_service(project: Path, live: pa.Table, scored: pa.Table) -> None:
    rows = live.to_pylist()
    with (
        BackgroundServer(build_app(Project.load(project), admin_token="t")) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        online: list[float] = []
        for start in range(0, len(rows), 500):
            reply = client.post("/v1/predict/batch", json={"instances": [body(r) for r in rows[start : start + 500]]})
            assert reply.status_code == 200, reply.text
            online += [p["score"] for p in reply.json()["predictions"]]
            versions = {p["model_version"] for p in reply.json()["predictions"]}
            assert versions == {1}
    got = scored.column("score").to_numpy()
    np.testing.assert_allclose(got, np.array(online), rtol=1e-9, atol=0)
    assert len(set(np.round(got, 6))) > 100  # the scores really vary: features are not all defaults
    assert scored.column("model_version").to_pylist() == [1] * len(rows)


def test_tiny_chunks_give_the_same_rows_in_the_same_order(
    project: Path, live: pa.Table, scored: pa.Table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pq.write_table(live, tmp_path / "in.parquet", row_group_size=300)
    sizes: list[int] = []
    assemble = ChunkFeatures.assemble

    def spy(self: ChunkFeatures, chunk: pa.RecordBatch, first_row: int) -> Any:
        sizes.append(chunk.num_rows)
        return assemble(self, chunk, first_row)

    monkeypatch.setattr(ChunkFeatures, "assemble", spy)
    code, stdout, stderr = cli(
        "predict", "-p", str(project), "-i", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out.parquet"),
        "--chunk-rows", "170", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["rows"] == live.num_rows and summary["chunks"] == -(-live.num_rows // 170) and summary["model_version"] == 1
    assert max(sizes) == 170 and sum(sizes) == live.num_rows  # never more than a chunk of rows at a time
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == [*live.column_names, "score", "model_version"]
    assert out.select(live.column_names).equals(live)  # the input's rows, in input order
    np.testing.assert_array_equal(out.column("score").to_numpy(), scored.column("score").to_numpy())


def test_csv_in_csv_out_with_offsets(project: Path, live: pa.Table, scored: pa.Table, tmp_path: Path) -> None:
    """Times as ISO-8601 text with a +02:00 offset are the same instants: the same scores as the Parquet run."""
    rows = live.to_pylist()
    lines = ["transaction_id,tx_datetime,customer_id,terminal_id,tx_amount,note"]
    for row in rows:
        local = (row["tx_datetime"] + timedelta(hours=2)).isoformat() + "+02:00"
        lines.append(f"{row['transaction_id']},{local},{row['customer_id']},{row['terminal_id']},{row['tx_amount']!r},x")
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    result = Project.load(project).predict_file(tmp_path / "in.csv", tmp_path / "out.csv", chunk_rows=500)
    assert result.rows == len(rows) and result.chunks == 5
    out = pcsv.read_csv(tmp_path / "out.csv", convert_options=pcsv.ConvertOptions(column_types={"tx_datetime": pa.string()}))
    assert out.column_names == [
        "transaction_id",
        "tx_datetime",
        "customer_id",
        "terminal_id",
        "tx_amount",
        "note",
        "score",
        "model_version",
    ]
    assert out.column("tx_datetime").to_pylist()[:3] == [line.split(",")[1] for line in lines[1:4]]  # kept as written
    assert out.column("transaction_id").to_pylist() == live.column("transaction_id").to_pylist()
    np.testing.assert_allclose(out.column("score").to_numpy(), scored.column("score").to_numpy(), rtol=1e-12, atol=0)


def write_csv(path: Path, table: pa.Table, row: int | None = None, column: str | None = None, value: str = "") -> Path:
    """``table`` as CSV, with data row ``row`` (1-based) of ``column`` replaced by ``value``."""
    pcsv.write_csv(table, path)
    if row is not None and column is not None:
        lines = path.read_text().splitlines()
        header = [c.strip('"') for c in lines[0].split(",")]
        cells = lines[row].split(",")
        cells[header.index(column)] = value
        lines[row] = ",".join(cells)
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no time column", "in.parquet: column 'tx_datetime' is missing (the time of each row"),
        ("no entity column", "in.parquet: column 'terminal_id' is missing (an entity key of the features"),
        ("no amount column", "in.parquet: column 'tx_amount' is missing (a required request feature"),
        ("score column", "in.parquet: column 'score' clashes with the column the output adds"),
        ("bad time", "in.csv: row 1700: column 'tx_datetime' value '2025-13-01 10:00:00' is not a timestamp"),
        ("empty time", "in.csv: row 1234: column 'tx_datetime' is empty (every row needs its time)"),
        ("bad key", "in.csv: row 1500: column 'customer_id' value '12abc' is not a BIGINT like the key in the snapshot"),
        ("bad amount", "in.csv: row 1999: column 'tx_amount' value 'lots' is not a number"),
        ("late key", "in.csv: row 1900: column 'terminal_id' value 'T-9' is not of type int64 like the column's first values"),
        ("no file", "nothere.csv: no such file (--input)"),
        ("json input", "in.json: cannot tell the format from the extension '.json'"),
        ("bad output", "out.xlsx: cannot tell the output format from the extension '.xlsx' (use .parquet or .csv)"),
        ("unknown version", "model version 9 does not exist"),
    ],
)
def test_bad_input_is_one_line_naming_file_row_and_column(
    project: Path, live: pa.Table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, expected: str
) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    table = live.slice(0, 2000)
    output = folder / "out.parquet"
    extra: list[str] = []
    if case.startswith("no ") and case != "no file":
        column = {"no time column": "tx_datetime", "no entity column": "terminal_id", "no amount column": "tx_amount"}[case]
        pq.write_table(table.drop([column]), folder / "in.parquet")
        source = folder / "in.parquet"
    elif case == "score column":
        pq.write_table(table.append_column("score", pa.array([0.5] * table.num_rows)), folder / "in.parquet")
        source = folder / "in.parquet"
    elif case == "no file":
        source = folder / "nothere.csv"
    elif case == "json input":
        source = folder / "in.json"
        source.write_text("{}\n")
    else:
        text = table.set_column(1, "tx_datetime", pa.array([t.isoformat(sep=" ") for t in table.column(1).to_pylist()]))
        changes: dict[str, tuple[int | None, str | None, str]] = {
            "bad time": (1700, "tx_datetime", "2025-13-01 10:00:00"),
            "empty time": (1234, "tx_datetime", ""),
            "bad key": (1500, "customer_id", "12abc"),
            "bad amount": (1999, "tx_amount", "lots"),
            "late key": (1900, "terminal_id", "T-9"),
        }
        row, cell, value = changes.get(case, (None, None, ""))
        source = write_csv(folder / "in.csv", text, row, cell, value)
        if case == "late key":  # the key's type is inferred from the first block; a later value does not fit it
            monkeypatch.setattr(inputs, "CSV_BLOCK_BYTES", 1 << 14)
        if case == "bad output":
            output = folder / "out.xlsx"
        if case == "unknown version":
            extra = ["--model", "9"]
    code, stdout, stderr = cli(
        "predict", "-p", str(project), "-i", str(source), "-o", str(output), "--chunk-rows", "250", *extra
    )  # fmt: skip
    assert code == 1
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected in lines[0], lines[0]
    assert not output.exists()
    leftovers = sorted(p.name for p in folder.iterdir() if p != source)
    assert leftovers == [], leftovers  # no temporary file, no scratch folder, no partial output


def test_an_empty_input_gives_an_empty_output(project: Path, live: pa.Table, tmp_path: Path) -> None:
    pq.write_table(live.slice(0, 0), tmp_path / "in.parquet")
    result = Project.load(project).predict_file(tmp_path / "in.parquet", tmp_path / "out.csv")
    assert result.rows == 0
    assert pcsv.read_csv(tmp_path / "out.csv").num_rows == 0
