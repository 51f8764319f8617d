"""Reading one declared source file (CSV, Parquet, JSON Lines) into DuckDB, typed as declared.

:func:`read_source` loads the declared columns of a file into a temporary
DuckDB table with one row per file row: ``_row`` (1-based data row number in
file order, header excluded), ``t<i>`` (the value cast to the declared type)
and, for columns whose cast can fail, ``r<i>`` (the value as read). CSV and
JSON Lines cells are read as text and cast with ``TRY_CAST`` so that a bad
cell becomes a per-row failure instead of aborting the read; a Parquet column
whose physical type already holds the declared type is taken as is, any other
is cast the same way. A date or timestamp column with a ``format`` is read
with ``TRY_STRPTIME``; a CSV source with ``csv.decimal: ","`` reads ``1,5``
as 1.5; ``nan`` cells and NaN floats are missing values. Everything a user can
get wrong with a file (missing, empty, corrupt, not UTF-8, a declared column
absent, a column where no value parses, a header naming a column twice, a
line longer than ``csv.max_line_bytes``) is a one-line
:class:`~loopml.errors.DataError` naming the file (and the key that fixes it).

The UTF-8 scan that locates the first bad byte, and the scan for the first
over-long line, are hand-written because DuckDB's CSV errors do not say where
the byte or the line is (a long line is always "Line: 1"); they only run
after a read failed.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from loopml.errors import DataError
from loopml.spec.model import ColumnRule, ColumnType, CsvOptions, Source

__all__ = [
    "SQL_TYPES",
    "SourceColumn",
    "SourceTable",
    "check_file",
    "duplicate_header",
    "file_format",
    "ident",
    "line_too_long",
    "literal",
    "one",
    "read_error",
    "read_source",
    "scan_sql",
    "text_cell",
    "typed_expr",
]

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
SQL_TYPES: dict[ColumnType, str] = {
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
    "string": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "date": "DATE",
}
_SAFE_INT = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}
_FLOATS = {"FLOAT", "DOUBLE"}
_TIMESTAMPS = {"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE", "DATE"}
_NUMBERS = _SAFE_INT | _FLOATS | {"UBIGINT", "HUGEINT", "UHUGEINT"}
_LINE_SIZE = re.compile(r"Maximum line size of (\d+) bytes exceeded\. Actual Size: ?(\d+) bytes")
_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")


def ident(name: str) -> str:
    """A SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple[Any, ...] | None:
    """The first row of ``sql``, fetching the whole result so the connection is free afterwards."""
    rows = con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()
    return tuple(rows[0]) if rows else None


@dataclass(frozen=True)
class SourceColumn:
    """One declared column of a loaded source: where its typed and raw values live."""

    name: str
    rule: ColumnRule
    index: int
    file_type: str
    can_fail: bool

    @property
    def typed(self) -> str:
        """Column of the value cast to the declared type (NULL where the cast failed)."""
        return f"t{self.index}"

    @property
    def raw(self) -> str:
        """Column of the value as read (the typed column when the cast cannot fail)."""
        return f"r{self.index}" if self.can_fail else self.typed

    @property
    def sql_type(self) -> str:
        return SQL_TYPES[self.rule.type]


@dataclass(frozen=True)
class SourceTable:
    """A source loaded into ``con`` as table ``table`` (``_row``, ``t<i>``, ``r<i>``)."""

    name: str
    path: Path
    format: str
    table: str
    columns: list[SourceColumn]
    undeclared: list[str]
    rows: int
    timestamp: str | None
    con: duckdb.DuckDBPyConnection

    def column(self, name: str) -> SourceColumn:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def relation(self) -> duckdb.DuckDBPyRelation:
        """The typed declared columns under their declared names, plus ``_row``, in file order."""
        cols = ", ".join(f"{c.typed} AS {ident(c.name)}" for c in self.columns)
        return self.con.sql(f"SELECT _row, {cols} FROM {ident(self.table)} ORDER BY _row")


def file_format(declared: str | None, path: Path, hint: str = "") -> str:
    """``csv``/``parquet``/``jsonl``: ``declared`` (a source's ``format``) or from the file extension."""
    if declared is not None:
        return declared
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(FORMATS)
        raise DataError(f"{path}: cannot tell the file format from the extension {path.suffix!r} (known: {known}){hint}")
    return fmt


def check_file(path: Path, hint: str = "") -> None:
    """Missing, not a file, or 0 bytes: one-line errors (``hint`` says where the path came from)."""
    if not path.exists():
        raise DataError(f"{path}: no such file{hint}")
    if not path.is_file():
        raise DataError(f"{path}: is not a file{hint}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)")


def _csv_options(csv: CsvOptions | None, text: bool) -> str:
    if csv is None:
        return ""
    out = f", max_line_size={csv.max_line_bytes}" if csv.max_line_bytes else ""
    return out + (", decimal_separator=','" if csv.decimal == "," and not text else "")


def scan_sql(path: Path, fmt: str, text: bool, columns: list[str] | None = None, csv: CsvOptions | None = None) -> str:
    """The DuckDB table function reading ``path``; ``text`` reads CSV/JSONL cells as text; ``csv`` as a source says."""
    p = literal(str(path))
    if fmt == "parquet":
        return f"read_parquet({p}, file_row_number=true)" if text else f"read_parquet({p})"
    if fmt == "csv":
        options = _csv_options(csv, text)
        return f"read_csv({p}, header=true, all_varchar=true{options})" if text else f"read_csv({p}, header=true{options})"
    if text and columns is not None:
        spec = ", ".join(f"{literal(c)}: 'VARCHAR'" for c in columns)
        return f"read_json({p}, format='newline_delimited', columns={{{spec}}})"
    return f"read_json({p}, format='newline_delimited')"


def utf8_problem(path: Path) -> str | None:
    """``byte N, line L`` of the first byte that is not UTF-8, or None if the file is clean."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad = offset - pending + exc.start
                newlines = chunk[: max(exc.start - pending, 0)].count(b"\n")
                return f"byte {bad}, line {lines + newlines}"
            offset += len(chunk)
            lines += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return f"byte {offset - 1}, line {lines}"
    return None


def line_too_long(exc: duckdb.Error, path: Path) -> tuple[int, int, int] | None:
    """``(line, bytes, limit)`` when DuckDB refused a line of CSV file ``path`` for its length, else None.

    DuckDB's own line number is not the file's (it says 1 for a long line anywhere), so the file is scanned for the
    first line over the limit; this only runs after a read failed.
    """
    found = _LINE_SIZE.search(str(exc))
    if found is None:
        return None
    limit, size = int(found.group(1)), int(found.group(2))
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if len(line) > limit:
                return number, len(line), limit
    return 0, size, limit


def _cause(message: str) -> str:
    """The line of a DuckDB error that says what is wrong (a CSV error's first line only says where)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    first = lines[0].split("Error: ", 1)[-1] if lines else ""
    if _CSV_LINE.fullmatch(first) and len(lines) > 1:
        cause = next((line for line in lines[1:] if not line.startswith(("Original Line:", "Possible Solution"))), "")
        return f"{first}: {cause}" if cause else first
    return first


def read_error(path: Path, fmt: str, exc: duckdb.Error, fix: str = "") -> DataError:
    """Turn a DuckDB read failure into a one-line error naming the file; ``fix`` says how to raise a CSV line limit."""
    if fmt == "parquet":
        return DataError(f"{path}: not a readable Parquet file (truncated or corrupt): {_cause(str(exc)) or type(exc).__name__}")
    problem = utf8_problem(path)
    if problem is not None:
        return DataError(f"{path}: not UTF-8 text ({problem}); re-save the file as UTF-8")
    too_long = line_too_long(exc, path) if fmt == "csv" else None
    if too_long is not None:
        line, size, limit = too_long
        where = f"line {line}" if line else "a line"
        return DataError(f"{path}: {where} is {size:,} bytes, longer than the {limit:,} bytes a CSV line may have{fix}")
    kind = "CSV" if fmt == "csv" else "JSON Lines"
    return DataError(f"{path}: cannot be read as {kind}: {_cause(str(exc)) or type(exc).__name__}")


def duplicate_header(con: duckdb.DuckDBPyConnection, path: Path, csv: CsvOptions | None = None) -> DataError | None:
    """The error for a CSV header that names a column twice (a reader would silently rename the second ``age_1``)."""
    try:
        row = one(
            con, f"SELECT * FROM read_csv({literal(str(path))}, header=false, all_varchar=true{_csv_options(csv, True)}) LIMIT 1"
        )
    except duckdb.Error:
        return None  # the read that follows reports it
    first: dict[str, int] = {}
    for i, name in enumerate(row or (), start=1):
        if name is None:  # an empty header cell gets a column number, not a user's name
            continue
        if name in first:
            return DataError(
                f"{path}: the header names column {name!r} twice (columns {first[name]} and {i}); a reader would silently "
                f"call the second {name + '_1'!r} and a model would need it under that name: rename one of them in the file"
            )
        first[name] = i
    return None


def text_cell(raw: str, target: ColumnType) -> str:
    """SQL of a text cell as read for ``target``: ``nan`` in a number column is a missing cell, like a blank one."""
    if target in ("int", "float"):
        return f"CASE WHEN lower(trim({raw})) = 'nan' THEN NULL ELSE {raw} END"
    return raw


def typed_expr(raw: str, file_type: str, target: ColumnType, fmt: str | None = None, decimal: str = ".") -> tuple[str, bool]:
    """SQL casting ``raw`` (of DuckDB type ``file_type``) to ``target``; True if it can fail per row.

    ``fmt`` is a column's ``format`` (dates and timestamps read from text), ``decimal`` a CSV source's decimal
    separator (numbers read from text). A float NaN is NULL: a missing value, whatever wrote it.
    """
    sql_type = SQL_TYPES[target]
    if target == "float" and (file_type in _NUMBERS or file_type.startswith("DECIMAL") or file_type == "BOOLEAN"):
        return f"nullif(CAST({raw} AS DOUBLE), 'NaN'::DOUBLE)", False
    if file_type == sql_type:
        return raw, False
    if target == "string":
        return f"CAST({raw} AS VARCHAR)", False
    number = f"replace(trim({raw}), ',', '.')" if decimal == "," and file_type == "VARCHAR" else raw
    if target == "int":
        if file_type in _SAFE_INT or file_type == "BOOLEAN":
            return f"CAST({raw} AS BIGINT)", False
        # TRY_CAST rounds '1.5' to 2: only accept values that are whole numbers
        return (
            f"CASE WHEN TRY_CAST({number} AS DOUBLE) = TRY_CAST({number} AS BIGINT) THEN TRY_CAST({number} AS BIGINT) END",
            True,
        )
    if target == "float":
        return f"nullif(TRY_CAST({number} AS DOUBLE), 'NaN'::DOUBLE)", True
    if target == "bool":
        if file_type in _NUMBERS or file_type.startswith("DECIMAL"):
            return f"CASE WHEN {raw} = 1 THEN true WHEN {raw} = 0 THEN false END", True
        return f"TRY_CAST(trim(CAST({raw} AS VARCHAR)) AS BOOLEAN)", True
    if fmt is not None and file_type not in _TIMESTAMPS:
        return f"CAST(TRY_STRPTIME(trim(CAST({raw} AS VARCHAR)), {literal(fmt)}) AS {sql_type})", True
    if target == "timestamp":
        if file_type in _TIMESTAMPS:
            return f"CAST({raw} AS TIMESTAMP)", False
        # through TIMESTAMPTZ so that '...+02:00' is converted to UTC instead of having its offset dropped
        return f"TRY_CAST(TRY_CAST({raw} AS TIMESTAMPTZ) AS TIMESTAMP)", True
    if file_type in _TIMESTAMPS:
        return f"CAST({raw} AS DATE)", False
    return f"TRY_CAST({raw} AS DATE)", True


def _describe(con: duckdb.DuckDBPyConnection, scan: str, path: Path, fmt: str, fix: str) -> dict[str, str]:
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()
    except duckdb.Error as exc:
        raise read_error(path, fmt, exc, fix) from None
    return {str(r[0]): str(r[1]) for r in rows}


def _missing_error(path: Path, where: str, missing: list[str], found: list[str]) -> DataError:
    shown = ", ".join(found[:30]) + (f", ... ({len(found)} in all)" if len(found) > 30 else "")
    if len(missing) == 1:
        return DataError(f"{path}: column {missing[0]!r} declared in loopml.yaml {where}.columns is missing (found: {shown})")
    names = ", ".join(repr(m) for m in missing)
    return DataError(f"{path}: columns {names} declared in loopml.yaml {where}.columns are missing (found: {shown})")


def read_source(name: str, source: Source, path: Path, con: duckdb.DuckDBPyConnection | None = None) -> SourceTable:
    """Load the declared columns of ``path`` into ``con`` (a new in-memory DuckDB if None)."""
    where = f"sources.{name}"
    check_file(path, f" (loopml.yaml {where}.path)")
    fmt = file_format(source.format, path, f"; or set {where}.format in loopml.yaml")
    con = con if con is not None else duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    fix = f"; raise sources.{name}.csv.max_line_bytes in loopml.yaml above that (or take the long column out of the file)"
    if fmt == "csv":
        duplicated = duplicate_header(con, path, source.csv)
        if duplicated is not None:
            raise duplicated
    found = _describe(con, scan_sql(path, fmt, fmt != "jsonl", csv=source.csv), path, fmt, fix)
    if fmt == "parquet":
        found.pop("file_row_number", None)
    missing = [c for c in source.columns if c not in found]
    if missing:
        raise _missing_error(path, where, missing, list(found))
    undeclared = [c for c in found if c not in source.columns]
    declared = list(source.columns)
    if fmt == "jsonl":
        found = {c: "VARCHAR" for c in declared}
    columns: list[SourceColumn] = []
    selects = []
    for i, (col, rule) in enumerate(source.columns.items()):
        raw = text_cell(ident(col), rule.type) if found[col] == "VARCHAR" else ident(col)
        expr, can_fail = typed_expr(raw, found[col], rule.type, rule.format, source.csv.decimal)
        columns.append(SourceColumn(col, rule, i, found[col], can_fail))
        selects.append(f"{expr} AS t{i}")
        if can_fail:
            selects.append(f"{raw} AS r{i}")
    table = f"src_{name}"
    select = ", ".join(selects)
    try:
        if fmt == "parquet":
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {ident(table)} AS "
                f"SELECT file_row_number + 1 AS _row, {select} FROM {scan_sql(path, fmt, text=True)}"
            )
        else:
            raw_cols = ", ".join(ident(c) for c in declared)
            staging = ident(f"raw_{name}")
            scan = scan_sql(path, fmt, True, declared, source.csv)
            con.execute(f"CREATE OR REPLACE TEMP TABLE {staging} AS SELECT {raw_cols} FROM {scan}")
            # rowid of a table filled from one ordered scan is the file order
            con.execute(f"CREATE OR REPLACE TEMP TABLE {ident(table)} AS SELECT rowid + 1 AS _row, {select} FROM {staging}")
            con.execute(f"DROP TABLE {staging}")
    except duckdb.Error as exc:
        raise read_error(path, fmt, exc, fix) from None
    loaded = SourceTable(name, path, fmt, table, columns, undeclared, 0, source.timestamp, con)
    rows = _check_casts(loaded)
    return SourceTable(name, path, fmt, table, columns, undeclared, rows, source.timestamp, con)


def _check_casts(table: SourceTable) -> int:
    """Row count; raise if a column has values but none of them casts to the declared type."""
    fallible = [c for c in table.columns if c.can_fail]
    counts = ", ".join(f"count({c.raw}), count({c.typed})" for c in fallible)
    row = one(table.con, f"SELECT count(*){', ' + counts if counts else ''} FROM {ident(table.table)}")
    assert row is not None
    for k, col in enumerate(fallible):
        present, parsed = row[1 + 2 * k], row[2 + 2 * k]
        if present and not parsed:
            where = f"FROM {ident(table.table)} WHERE {col.raw} IS NOT NULL"
            first = one(table.con, f"SELECT _row, CAST({col.raw} AS VARCHAR) {where} ORDER BY _row LIMIT 1")
            assert first is not None
            raise DataError(
                f"{table.path}: column {col.name!r} declared {col.rule.type} but no value parses (row {first[0]}: {first[1]!r})"
            )
    return int(row[0])
