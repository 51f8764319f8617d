"""What a data file holds, column by column: the reading and profiling behind ``loopml init --data``.

A CSV is read twice by DuckDB: once with its sniffer, for the dialect and a first guess of each column's type, and
once as text. The sniffer looks at a sample and allows one date format per file, so every guess is checked against
the text of every cell with the very SQL that ``loopml ingest`` will run (:func:`loopml.data.sources.typed_expr`),
and a column is typed by what all of its cells are:

- **dates and timestamps**: ISO 8601 as is, else the first ``strptime`` format of :data:`DATE_FORMATS` that reads
  every cell; it goes into the column's ``format``. Day-first formats come before month-first ones; when every cell
  reads both ways (no day above 12) the ambiguity is reported in a note.
- **numbers with a few stray cells** (``?``, ``n/a``, ``thirty``): at least :data:`NUMBER_SHARE` of the cells are
  numbers and at most :data:`MAX_STRAYS` distinct cells are not: a number column whose stray cells are missing
  values (``severity: warn``), with a note listing them.
- **decimal commas**: a ``;``-separated file is read again with ``decimal_separator=','``; if that makes numbers
  of text columns, the source gets ``csv: {decimal: ","}``.
- **long lines**: a line longer than DuckDB's limit is measured and the limit raised (``csv.max_line_bytes``).
- a **header naming a column twice** is an error (DuckDB would silently call the second ``age_1``).
- ``nan`` cells of number columns, like NaN values in Parquet, are missing values.

Parquet and JSON Lines columns keep the types their files declare. One aggregate query then gives each column's
null and distinct counts, its values when there are at most :data:`MAX_VALUES` and the mean length of text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from loopml.data.sources import (
    check_file,
    duplicate_header,
    file_format,
    ident,
    line_too_long,
    literal,
    one,
    read_error,
    scan_sql,
    text_cell,
    typed_expr,
)
from loopml.errors import DataError
from loopml.spec.model import ColumnType, CsvOptions

__all__ = ["DATE_FORMATS", "MAX_VALUES", "ColumnProfile", "FileProfile", "profile_file"]

MAX_VALUES = 20
NUMBER_SHARE = 0.9
MAX_STRAYS = 10
SAMPLE_CELLS = 2000  # cells a date format is first tried on, before the whole column
_DAYS_FIRST = ("%d.%m.%Y", "%d/%m/%Y", "%d-%m-%Y", "%d.%m.%y", "%d/%m/%y", "%d-%m-%y")
_MONTHS_FIRST = ("%m/%d/%Y", "%m-%d-%Y", "%m.%d.%Y", "%m/%d/%y", "%m-%d-%y", "%m.%d.%y")
_YEARS_FIRST = ("%Y/%m/%d", "%Y.%m.%d")
_MONTH_NAMES = ("%d-%b-%Y", "%d %b %Y", "%d %B %Y", "%b %d, %Y", "%B %d, %Y", "%d-%b-%y")
_TIMES = ("", " %H:%M", " %H:%M:%S")
DATE_FORMATS = tuple(d + t for d in (*_DAYS_FIRST, *_MONTHS_FIRST, *_YEARS_FIRST, *_MONTH_NAMES) for t in _TIMES)
_INTS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
_FLOATS = {"FLOAT", "DOUBLE"}
_MEGABYTE = 1 << 20


@dataclass(frozen=True)
class ColumnProfile:
    """One column as read: its type and rules-to-be, and what its values look like."""

    name: str
    type: ColumnType
    non_null: int
    distinct: int
    values: list[Any] | None  # sorted distinct values, when there are at most MAX_VALUES
    format: str | None = None  # strptime format of a date/timestamp column read from text
    strays: tuple[str, ...] = ()  # cells of a number column that are not numbers (read as missing)
    mean_length: float = 0.0  # text: mean number of characters


@dataclass
class FileProfile:
    """A data file loaded into table ``data`` of ``con``, typed as :attr:`columns` say."""

    path: Path
    format: str
    rows: int
    columns: dict[str, ColumnProfile]
    csv: CsvOptions | None  # the options a CSV source needs (None: the defaults, or not a CSV)
    con: duckdb.DuckDBPyConnection
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Typed:
    type: ColumnType
    format: str | None = None
    strays: tuple[str, ...] = ()


def _column_type(sql_type: str) -> ColumnType:
    if sql_type in _INTS:
        return "int"
    if sql_type in _FLOATS or sql_type.startswith("DECIMAL"):
        return "float"
    if sql_type == "BOOLEAN":
        return "bool"
    if sql_type.startswith("TIMESTAMP"):
        return "timestamp"
    if sql_type == "DATE":
        return "date"
    return "string"


def _describe(con: duckdb.DuckDBPyConnection, scan: str) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}


def _cells(name: str) -> str:
    """The non-blank text cells of column ``name`` of table ``raw``, trimmed."""
    return f"(SELECT nullif(trim({ident(name)}), '') AS v FROM raw) WHERE v IS NOT NULL"


def _parses(con: duckdb.DuckDBPyConnection, name: str, typed: _Typed, decimal: str) -> bool:
    expr, _ = typed_expr(text_cell("v", typed.type), "VARCHAR", typed.type, typed.format, decimal)
    row = one(con, f"SELECT count(*) FILTER (WHERE lower(v) <> 'nan'), count({expr}) FROM {_cells(name)}")
    return row is not None and row[0] == row[1]


def _date(con: duckdb.DuckDBPyConnection, name: str, sniffed: tuple[str, ...], notes: list[str]) -> _Typed | None:
    """A date or timestamp type for text column ``name`` if every cell is one: ISO 8601, a format of DATE_FORMATS, or
    one the sniffer found (``sniffed``)."""
    candidates = [*DATE_FORMATS, *(f for f in sniffed if f not in DATE_FORMATS)]
    iso_date = "CASE WHEN regexp_full_match(v, '[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}') THEN TRY_CAST(v AS DATE) END"
    tests = [iso_date, "TRY_CAST(TRY_CAST(v AS TIMESTAMPTZ) AS TIMESTAMP)"]
    tests += [f"TRY_STRPTIME(v, {literal(f)})" for f in candidates]
    counts = ", ".join(f"count({t})" for t in tests)
    sample = one(con, f"SELECT count(*), {counts} FROM (SELECT v FROM {_cells(name)} LIMIT {SAMPLE_CELLS})")
    if sample is None or not sample[0]:
        return None
    fits = [t for t, n in zip(tests, sample[1:], strict=True) if n == sample[0]]
    if not fits:
        return None
    full = one(con, f"SELECT count(*), {', '.join(f'count({t})' for t in fits)} FROM {_cells(name)}")
    assert full is not None
    fits = [t for t, n in zip(fits, full[1:], strict=True) if n == full[0]]
    if not fits:
        return None
    if fits[0] == tests[0]:
        return _Typed("date")
    if fits[0] == tests[1]:
        return _Typed("timestamp")
    formats = [candidates[tests.index(t) - 2] for t in fits]
    chosen = formats[0]
    swapped = chosen.replace("%d", "%D").replace("%m", "%d").replace("%D", "%m")
    if swapped in formats:
        example = one(con, f"SELECT v FROM {_cells(name)} LIMIT 1")
        shown = repr(example[0]) if example else "its values"
        notes.append(
            f"column {name!r}: dates like {shown} read day first ({chosen}); no day is above 12, so they could be month "
            f"first: if they are, set format: {swapped!r} for this column"
        )
    return _Typed("timestamp" if any(f in chosen for f in ("%H", "%I", "%M", "%S")) else "date", chosen)


def _number(con: duckdb.DuckDBPyConnection, name: str, decimal: str, notes: list[str]) -> _Typed | None:
    """A number type for text column ``name`` whose cells are numbers but for a few stray values."""
    value = "replace(v, ',', '.')" if decimal == "," else "v"
    row = one(
        con,
        f"SELECT count(*), count(n), count(DISTINCT v) FILTER (WHERE n IS NULL), "
        f"bool_and(regexp_full_match(v, '[-+]?[0-9]+')) FILTER (WHERE n IS NOT NULL) "
        f"FROM (SELECT v, TRY_CAST({value} AS DOUBLE) AS n FROM {_cells(name)} AND lower(v) <> 'nan')",
    )
    if row is None or not row[1] or row[1] < NUMBER_SHARE * row[0] or row[2] > MAX_STRAYS:
        return None
    column_type: ColumnType = "int" if row[3] else "float"
    strays = con.execute(f"SELECT DISTINCT v FROM {_cells(name)} AND TRY_CAST({value} AS DOUBLE) IS NULL ORDER BY v").fetchall()
    shown = ", ".join(repr(r[0]) for r in strays)
    notes.append(
        f"column {name!r}: {row[0] - row[1]} of {row[0]} cells are not numbers ({shown}); read as {column_type} with those "
        "cells missing (severity: warn keeps their rows at ingest)"
    )
    return _Typed(column_type, strays=tuple(str(r[0]) for r in strays))


@dataclass(frozen=True)
class _Sniffed:
    """What DuckDB's sniffer says of a CSV: column types, and the date and timestamp formats it found."""

    types: dict[str, str]
    formats: tuple[str, ...]


def _decide(
    con: duckdb.DuckDBPyConnection, name: str, sniffed: _Sniffed, decimal: str, keep_text: bool, notes: list[str]
) -> _Typed:
    """The type of CSV column ``name`` that every one of its cells has."""
    guess = _column_type(sniffed.types[name])
    if guess == "bool":
        words = con.execute(f"SELECT DISTINCT lower(v) FROM {_cells(name)}").fetchall()
        return _Typed("string") if keep_text and {r[0] for r in words} - {"true", "false"} else _Typed("bool")
    if guess in ("int", "float") and _parses(con, name, _Typed(guess), decimal):
        return _Typed(guess)
    return _date(con, name, sniffed.formats, notes) or _number(con, name, decimal, notes) or _Typed("string")


def _raw_table(con: duckdb.DuckDBPyConnection, path: Path, options: CsvOptions, notes: list[str]) -> tuple[CsvOptions, _Sniffed]:
    """Load the cells of ``path`` as text into table ``raw``; the options it needs and what the sniffer says."""
    problem = duplicate_header(con, path, options)
    if problem is not None:
        raise problem
    sniffed = _describe(con, scan_sql(path, "csv", False, csv=options))
    dialect = one(
        con, f"SELECT Delimiter, DateFormat, TimestampFormat FROM sniff_csv({literal(str(path))}{_sniff_options(options)})"
    )
    formats = tuple(f for f in (dialect or ())[1:] if isinstance(f, str) and "%" in f)
    if dialect is not None and dialect[0] == ";" and options.decimal == ".":
        comma = options.model_copy(update={"decimal": ","})
        with_comma = _describe(con, scan_sql(path, "csv", False, csv=comma))
        turned = [c for c, t in with_comma.items() if _column_type(t) in ("int", "float") and sniffed.get(c) == "VARCHAR"]
        if turned:
            options, sniffed = comma, with_comma
            notes.append(f'numbers are written with a decimal comma ({", ".join(turned)}): csv: {{decimal: ","}}')
    con.execute(f"CREATE OR REPLACE TEMP TABLE raw AS SELECT * FROM {scan_sql(path, 'csv', True, csv=options)}")
    return options, _Sniffed(sniffed, formats)


def _sniff_options(options: CsvOptions) -> str:
    return f", max_line_size={options.max_line_bytes}" if options.max_line_bytes else ""


def _read_csv(
    con: duckdb.DuckDBPyConnection, path: Path, keep_text: set[str], notes: list[str]
) -> tuple[CsvOptions, dict[str, _Typed]]:
    options = CsvOptions()
    for _ in range(3):
        try:
            options, sniffed = _raw_table(con, path, options, notes)
            break
        except duckdb.Error as exc:
            too_long = line_too_long(exc, path)
            if too_long is None or (options.max_line_bytes or 0) >= 2 * too_long[1]:
                raise read_error(path, "csv", exc) from None
            limit = (2 * too_long[1] // _MEGABYTE + 1) * _MEGABYTE
            line = f"line {too_long[0]}" if too_long[0] else "a line"
            notes.append(f"{line} is {too_long[1]:,} bytes, over DuckDB's {too_long[2]:,}: csv: {{max_line_bytes: {limit}}}")
            options = options.model_copy(update={"max_line_bytes": limit})
    else:  # pragma: no cover - each round at least doubles the limit past the longest line reported
        raise DataError(f"{path}: cannot find a line length limit that reads the file")
    decided = {name: _decide(con, name, sniffed, options.decimal, name in keep_text, notes) for name in sniffed.types}
    selects = []
    for name, typed in decided.items():
        expr, _ = typed_expr(text_cell(ident(name), typed.type), "VARCHAR", typed.type, typed.format, options.decimal)
        selects.append(f"{expr} AS {ident(name)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE data AS SELECT {', '.join(selects)} FROM raw")
    con.execute("DROP TABLE raw")
    return options, decided


def _read_typed(con: duckdb.DuckDBPyConnection, path: Path, fmt: str) -> dict[str, _Typed]:
    try:
        types = _describe(con, scan_sql(path, fmt, text=False))
        selects = [f"nullif({ident(c)}, 'NaN'::DOUBLE) AS {ident(c)}" if t in _FLOATS else ident(c) for c, t in types.items()]
        con.execute(f"CREATE OR REPLACE TEMP TABLE data AS SELECT {', '.join(selects)} FROM {scan_sql(path, fmt, text=False)}")
    except duckdb.Error as exc:
        raise read_error(path, fmt, exc) from None
    return {c: _Typed(_column_type(t)) for c, t in types.items()}


def _profile(con: duckdb.DuckDBPyConnection, path: Path, decided: dict[str, _Typed]) -> tuple[int, dict[str, ColumnProfile]]:
    parts = ["count(*)"]
    for i, (name, typed) in enumerate(decided.items()):
        col = ident(name)
        parts += [f"count({col}) AS n{i}", f"count(DISTINCT {col}) AS d{i}"]
        parts.append(f"coalesce(avg(length({col})), 0) AS x{i}" if typed.type == "string" else f"0 AS x{i}")
    row = one(con, f"SELECT {', '.join(parts)} FROM data")
    assert row is not None
    if not row[0]:
        raise DataError(f"{path}: has no rows; a project needs data to infer from")
    columns: dict[str, ColumnProfile] = {}
    for i, (name, typed) in enumerate(decided.items()):
        non_null, distinct, extra = int(row[1 + 3 * i]), int(row[2 + 3 * i]), row[3 + 3 * i]
        values = None
        if distinct <= MAX_VALUES:
            got = con.execute(f"SELECT DISTINCT {ident(name)} FROM data WHERE {ident(name)} IS NOT NULL ORDER BY 1").fetchall()
            values = [r[0] for r in got]
        columns[name] = ColumnProfile(name, typed.type, non_null, distinct, values, typed.format, typed.strays, float(extra))
    return int(row[0]), columns


def profile_file(con: duckdb.DuckDBPyConnection, path: Path, keep_text: set[str] | None = None) -> FileProfile:
    """Load ``path`` into table ``data`` of ``con`` and profile its columns (see the module docstring).

    Columns in ``keep_text`` that the sniffer reads as booleans stay text unless written ``true``/``false`` (a
    label ``Yes``/``No`` keeps the values the user sees).
    """
    check_file(path, " (--data)")
    fmt = file_format(None, path, "; convert it to CSV, Parquet or JSON Lines")
    con.execute("SET TimeZone = 'UTC'")
    notes: list[str] = []
    csv: CsvOptions | None = None
    if fmt == "csv":
        try:
            options, decided = _read_csv(con, path, keep_text or set(), notes)
        except duckdb.Error as exc:
            raise read_error(path, fmt, exc) from None
        csv = options if options.model_dump(exclude_defaults=True) else None
    else:
        decided = _read_typed(con, path, fmt)
    rows, columns = _profile(con, path, decided)
    return FileProfile(path, fmt, rows, columns, csv, con, notes)
