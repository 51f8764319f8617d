"""Validation of a loaded source against its declared rules, as set-based DuckDB SQL.

Every row rule becomes one boolean column of a DuckDB view over the loaded
table (no Python loop over rows); one aggregate query then counts failures
per rule, nulls per column and the timestamp range of the valid rows. Rules
of severity ``error`` send the row to quarantine (one quarantine row per file
row, every failed rule and reason joined with ``"; "``); ``warn`` keeps the
row and only counts it. Table rules (``min_rows``, ``max_rows``, ``max_age``,
``max_null_rate``) and the binary label check fail the whole ingest on
``error``; ``min_rows``/``max_rows`` count valid rows, ``max_null_rate``
counts cells missing in the file. The source's timestamp column is always
required and parsable (rule ``timestamp``, severity ``error`` whatever the
column says), so a broken timestamp never reaches a feature window. A cell
failing its ``type`` under ``warn`` is kept as NULL. ``min``/``max`` apply to
int and float columns (elsewhere they are ignored with a warning). Duplicates
(``unique``, ``table.duplicate_keys``) keep the first occurrence in file
order; keys with a NULL part are never duplicates (SQL ``UNIQUE`` semantics).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import duckdb

from loopml.data.sources import SourceColumn, SourceTable, ident, literal, one
from loopml.errors import DataError, LoopmlError
from loopml.spec.model import Severity, Spec, TableRules, format_duration

__all__ = ["Check", "RowRule", "Validation", "canonical_label", "validate"]

_NUMERIC_TYPES = {"int", "float"}
_SHOW_VALUES = 10


@dataclass(frozen=True)
class Check:
    """The outcome of one rule on one source (``column`` is None for table rules)."""

    source: str
    column: str | None
    rule: str
    severity: Severity
    failed_rows: int
    passed: bool
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "column": self.column,
            "rule": self.rule,
            "severity": self.severity,
            "failed_rows": self.failed_rows,
            "passed": self.passed,
            "message": self.message,
        }


@dataclass(frozen=True)
class RowRule:
    """A per-row rule: ``flag`` is a never-NULL SQL boolean, ``reason`` the SQL text for one failing row."""

    column: str | None
    rule: str
    severity: Severity
    flag: str
    reason: str
    describe: str

    @property
    def id(self) -> str:
        return f"{self.column}.{self.rule}" if self.column is not None else self.rule


@dataclass(frozen=True)
class Validation:
    """A validated source: counts, checks, and the SQL selecting its valid and quarantined rows."""

    table: SourceTable
    view: str
    rules: list[RowRule]
    checks: list[Check]
    rows_in: int
    rows_valid: int
    rows_quarantined: int
    min_ts: datetime | None
    max_ts: datetime | None

    def valid_sql(self, ordered: bool = True) -> str:
        """Valid rows, declared columns and types, sorted by the timestamp then file order."""
        cols = ", ".join(f"{c.typed} AS {ident(c.name)}" for c in self.table.columns)
        order = "_row"
        if self.table.timestamp is not None:
            order = f"{self.table.column(self.table.timestamp).typed}, _row"
        return f"SELECT {cols} FROM {ident(self.view)} WHERE NOT _err" + (f" ORDER BY {order}" if ordered else "")

    def quarantine_sql(self, ordered: bool = True) -> str:
        """Quarantined rows: original values as text, ``_row``, ``_rules`` and ``_reasons``, in file order."""
        cols = ", ".join(f"CAST({c.raw} AS VARCHAR) AS {ident(c.name)}" for c in self.table.columns)
        errors = [(j, r) for j, r in enumerate(self.rules) if r.severity == "error"]
        rules = ", ".join(f"CASE WHEN f{j} THEN {literal(r.id)} END" for j, r in errors) or "NULL"
        reasons = ", ".join(f"CASE WHEN f{j} THEN {r.reason} END" for j, r in errors) or "NULL"
        return (
            f"SELECT {cols}, _row, concat_ws('; ', {rules}) AS _rules, concat_ws('; ', {reasons}) AS _reasons "
            f"FROM {ident(self.view)} WHERE _err" + (" ORDER BY _row" if ordered else "")
        )


def _text(col: SourceColumn, raw: bool = False) -> str:
    return f"CAST({col.raw if raw else col.typed} AS VARCHAR)"


def _quoted(col: SourceColumn, suffix: str, raw: bool = False) -> str:
    """SQL for ``col: 'value' <suffix>``."""
    head, tail = literal(col.name + ": '"), literal("' " + suffix)
    return f"concat({head}, {_text(col, raw)}, {tail})"


def _value_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Duplicates:
    """Tables of repeated keys (with the first row of each), one per key set, joined into the view only when not empty."""

    def __init__(self, table: SourceTable) -> None:
        self.table = table
        self.joins: list[str] = []
        self.columns: list[str] = []
        self._made: dict[tuple[str, ...], str | None] = {}

    def first_row(self, cols: list[SourceColumn]) -> str | None:
        """Column holding the first row of a repeated key, or None when no key repeats."""
        key = tuple(c.typed for c in cols)
        if key not in self._made:
            self._made[key] = self._make(cols, len(self._made))
        return self._made[key]

    def _make(self, cols: list[SourceColumn], k: int) -> str | None:
        name = ident(f"dup_{self.table.name}_{k}")
        keys = ", ".join(f"{c.typed} AS d{k}_k{i}" for i, c in enumerate(cols))
        not_null = " AND ".join(f"{c.typed} IS NOT NULL" for c in cols)
        self.table.con.execute(
            f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {keys}, min(_row) AS d{k}_first "
            f"FROM {ident(self.table.table)} WHERE {not_null} GROUP BY ALL HAVING count(*) > 1"
        )
        if one(self.table.con, f"SELECT count(*) FROM {name}") == (0,):
            return None
        on = " AND ".join(f"s.{c.typed} = {name}.d{k}_k{i}" for i, c in enumerate(cols))
        self.joins.append(f"LEFT JOIN {name} ON {on}")
        self.columns.append(f"d{k}_first")
        return f"d{k}_first"


def _repeat_rule(first: str | None, reason: str) -> tuple[str, str]:
    """(flag, reason) of a duplicate rule; ``first`` None means no key repeats."""
    if first is None:
        return "false", "NULL"
    return f"coalesce(_row > {first}, false)", f"concat({reason}, CAST({first} AS VARCHAR))"


def _pattern_rule(table: SourceTable, col: SourceColumn, pattern: str) -> tuple[str, str]:
    """(flag, text) of a ``pattern`` rule; an invalid regular expression is a spec error."""
    try:
        table.con.execute("SELECT regexp_full_match('', ?)", [pattern])
    except duckdb.Error as exc:
        where = f"sources.{table.name}.columns.{col.name}.pattern"
        problem = str(exc).splitlines()[0]
        raise LoopmlError(f"loopml.yaml: {where}: invalid regular expression {pattern!r}: {problem}") from None
    return f"coalesce(NOT regexp_full_match({_text(col)}, {literal(pattern)}), false)", f"does not match pattern {pattern}"


def _column_rules(table: SourceTable, col: SourceColumn, dups: _Duplicates, notes: list[Check]) -> list[RowRule]:
    rule, name = col.rule, col.name
    rules: list[RowRule] = []

    def add(kind: str, flag: str, reason: str, describe: str, severity: Severity = rule.severity) -> None:
        rules.append(RowRule(name, kind, severity, flag, reason, f"{name} {describe}"))

    if col.name == table.timestamp:
        missing, bad = literal(f"{name}: missing timestamp"), _quoted(col, f"is not a valid {rule.type}", raw=True)
        reason = f"CASE WHEN {col.raw} IS NULL THEN {missing} ELSE {bad} END"
        add("timestamp", f"{col.typed} IS NULL", reason, "is missing or not a valid timestamp", "error")
    else:
        if col.can_fail:
            flag = f"({col.raw} IS NOT NULL AND {col.typed} IS NULL)"
            add("type", flag, _quoted(col, f"is not a valid {rule.type}", raw=True), f"is not a valid {rule.type}")
        if not rule.nullable:
            add("nullable", f"{col.raw} IS NULL", literal(f"{name}: missing (nullable: false)"), "is missing")
    for bound, op, word in (("min", "<", "below"), ("max", ">", "above")):
        limit = getattr(rule, bound)
        if limit is None:
            continue
        if rule.type not in _NUMERIC_TYPES:
            text = f"{bound} applies to int and float columns; ignored for {rule.type} column {name!r}"
            notes.append(Check(table.name, name, bound, "warn", 0, False, text))
            continue
        text = f"is {word} {bound} {limit:g}"
        reason = f"concat({literal(name + ': ')}, {_text(col)}, {literal(' ' + text)})"
        add(bound, f"coalesce({col.typed} {op} CAST({literal(repr(limit))} AS DOUBLE), false)", reason, text)
    if rule.allowed is not None:
        values = [_value_text(v) for v in rule.allowed]
        options = ", ".join(f"TRY_CAST({literal(v)} AS {col.sql_type})" for v in values)
        text = "is not one of [" + ", ".join(values[:_SHOW_VALUES]) + (", ...]" if len(values) > _SHOW_VALUES else "]")
        add("allowed", f"coalesce(NOT list_contains([{options}], {col.typed}), false)", _quoted(col, text), text)
    if rule.pattern is not None:
        flag, text = _pattern_rule(table, col, rule.pattern)
        add("pattern", flag, _quoted(col, text), text)
    if rule.unique:
        flag, reason = _repeat_rule(dups.first_row([col]), _quoted(col, "repeats row "))
        add("unique", flag, reason, "repeats an earlier row")
    return rules


def _row_rules(spec: Spec, table: SourceTable, notes: list[Check]) -> tuple[list[RowRule], _Duplicates]:
    rules: list[RowRule] = []
    dups = _Duplicates(table)
    for col in table.columns:
        rules.extend(_column_rules(table, col, dups, notes))
    table_rules = spec.sources[table.name].table
    if table_rules.duplicate_keys:
        first = dups.first_row([table.column(k) for k in table_rules.duplicate_keys])
        label = ", ".join(table_rules.duplicate_keys)
        flag, reason = _repeat_rule(first, literal(f"duplicate key ({label}) of row "))
        rules.append(RowRule(None, "duplicate_keys", table_rules.severity, flag, reason, f"key ({label}) repeats an earlier row"))
    return rules, dups


def _summary(table: SourceTable, view: str, rules: list[RowRule]) -> dict[str, Any]:
    items = ["count(*) AS n", "count(*) FILTER (WHERE _err) AS q"]  # count_if is NULL over no rows
    for j in range(len(rules)):
        items += [f"count(*) FILTER (WHERE f{j}) AS c{j}", f"min(_row) FILTER (WHERE f{j}) AS m{j}"]
    items += [f"count(*) FILTER (WHERE {c.raw} IS NULL) AS null{c.index}" for c in table.columns]
    if table.timestamp is not None:
        ts = table.column(table.timestamp).typed
        items += [f"CAST(min({ts}) FILTER (WHERE NOT _err) AS TIMESTAMP) AS min_ts"]
        items += [f"CAST(max({ts}) FILTER (WHERE NOT _err) AS TIMESTAMP) AS max_ts"]
    cursor = table.con.execute(f"SELECT {', '.join(items)} FROM {ident(view)}")
    rows = cursor.fetchall()
    assert len(rows) == 1 and cursor.description is not None
    return {d[0]: v for d, v in zip(cursor.description, rows[0], strict=True)}


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "0%"


def canonical_label(value: object) -> str:
    """Text form under which label values compare: ``1``, ``"1"``, ``1.0`` and ``true`` are equal."""
    text = _value_text(value).strip().lower() if isinstance(value, (str, int, float, bool)) else str(value)
    text = {"true": "1", "false": "0"}.get(text, text)
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def _label_check(spec: Spec, table: SourceTable, view: str) -> Check | None:
    if spec.task != "binary" or spec.label.source != table.name:
        return None
    col = table.column(spec.label.column)
    rows = table.con.execute(
        f"SELECT count(*) OVER (), CAST(v AS VARCHAR) FROM (SELECT DISTINCT {col.typed} AS v FROM {ident(view)} "
        f"WHERE NOT _err AND {col.typed} IS NOT NULL) ORDER BY v LIMIT {_SHOW_VALUES}"
    ).fetchall()
    count = int(rows[0][0]) if rows else 0
    values = [str(r[1]) for r in rows]
    shown = ", ".join(values) + (", ..." if count > len(values) else "")
    name = spec.label.column

    def check(passed: bool, text: str) -> Check:
        return Check(table.name, name, "label_classes", "warn" if not passed else "error", 0, passed, text)

    if count > 2:
        text = f"label column {name!r} has {count} distinct values ({shown}); a binary task needs exactly 2"
        raise DataError(f"{table.path}: {text}")
    if count < 2:
        what = f"one class only ({shown})" if count else "no labelled rows"
        return check(False, f"label column {name!r} has {what}; training needs both")
    positive = spec.label.positive
    if positive is not None and canonical_label(positive) not in {canonical_label(v) for v in values}:
        raise DataError(f"{table.path}: label column {name!r} has values ({shown}) but label.positive is {positive!r}")
    return check(True, f"label column {name!r} has 2 classes ({shown})")


def _age_check(table: SourceTable, rules: TableRules, newest: datetime | None, now: datetime) -> Check:
    assert rules.max_age is not None
    limit = format_duration(rules.max_age)
    if table.timestamp is None:
        text = f"table.max_age needs sources.{table.name}.timestamp; ignored"
        return Check(table.name, None, "max_age", "warn", 0, False, text)
    if newest is None:
        text = f"no valid timestamp to judge freshness by; table.max_age is {limit}"
        return Check(table.name, None, "max_age", rules.severity, 0, False, text)
    age = now - newest
    hours = age.total_seconds() / 3600
    text = f"newest {table.timestamp} is {newest.isoformat(sep=' ')}, {hours:.1f}h old; table.max_age is {limit}"
    return Check(table.name, None, "max_age", rules.severity, 0, age <= rules.max_age, text)


def _table_checks(spec: Spec, table: SourceTable, summary: dict[str, Any], valid: int, now: datetime) -> list[Check]:
    rules = spec.sources[table.name].table
    n, out = int(summary["n"]), []
    for col in table.columns:
        limit = col.rule.max_null_rate
        if limit is None:
            continue
        nulls = int(summary[f"null{col.index}"])
        ok = n == 0 or nulls / n <= limit
        text = f"column {col.name!r} is null in {_rate(nulls, n)} of rows ({nulls} of {n}); max_null_rate is {limit:.2%}"
        out.append(Check(table.name, col.name, "max_null_rate", col.rule.severity, 0 if ok else nulls, ok, text))
    for kind, limit_rows, ok in (
        ("min_rows", rules.min_rows, rules.min_rows is None or valid >= rules.min_rows),
        ("max_rows", rules.max_rows, rules.max_rows is None or valid <= rules.max_rows),
    ):
        if limit_rows is not None:
            text = f"{valid} valid rows (of {n} read); table.{kind} is {limit_rows}"
            out.append(Check(table.name, None, kind, rules.severity, 0, ok, text))
    if rules.max_age is not None:
        out.append(_age_check(table, rules, summary.get("max_ts"), now))
    return out


def validate(spec: Spec, table: SourceTable, now: datetime | None = None) -> Validation:
    """Check ``table`` against ``spec.sources[table.name]``; raise :class:`DataError` on table-level errors."""
    now = now if now is not None else datetime.now(UTC).replace(tzinfo=None)
    notes: list[Check] = []
    if table.undeclared:
        left_out = ", ".join(table.undeclared)
        text = f"columns not declared in loopml.yaml sources.{table.name}.columns are left out: {left_out}"
        notes.append(Check(table.name, None, "undeclared_columns", "warn", 0, False, text))
    rules, dups = _row_rules(spec, table, notes)
    flags = ", ".join(f"{r.flag} AS f{j}" for j, r in enumerate(rules))
    err = " OR ".join(f"f{j}" for j, r in enumerate(rules) if r.severity == "error") or "false"
    view = f"chk_{table.name}"
    extra = dups.columns + ([flags] if flags else [])
    base = f"SELECT {', '.join(['s.*', *extra])} FROM {ident(table.table)} s {' '.join(dups.joins)}"
    table.con.execute(f"CREATE OR REPLACE TEMP VIEW {ident(view)} AS SELECT *, ({err}) AS _err FROM ({base})")
    summary = _summary(table, view, rules)
    n, quarantined = int(summary["n"]), int(summary["q"])
    valid = n - quarantined
    if n != table.rows or valid + quarantined != n:
        raise AssertionError(f"{table.path}: rows_in {table.rows} != rows_valid {valid} + rows_quarantined {quarantined}")
    checks = list(notes)
    for j, rule in enumerate(rules):
        failed = int(summary[f"c{j}"])
        if failed:
            action = "quarantined" if rule.severity == "error" else "kept with a warning"
            text = f"{failed} of {n} rows {action}: {rule.describe} (first: row {summary[f'm{j}']})"
        else:
            text = f"no row where {rule.describe}"
        checks.append(Check(table.name, rule.column, rule.rule, rule.severity, failed, failed == 0, text))
    table_checks = _table_checks(spec, table, summary, valid, now)
    for check in table_checks:
        if check.severity == "error" and not check.passed:
            raise DataError(f"{table.path}: {check.message}")
    checks += table_checks
    label = _label_check(spec, table, view)
    if label is not None:
        checks.append(label)
    min_ts, max_ts = summary.get("min_ts"), summary.get("max_ts")
    return Validation(table, view, rules, checks, n, valid, quarantined, _as_datetime(min_ts), _as_datetime(max_ts))


def _as_datetime(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return None
