"""The text of a scaffolded ``loopml.yaml``: what :mod:`loopml.data.infer` decided, written block by block.

The YAML is written as text (not dumped from the model) so that every block can carry a short comment; the
result is checked with :func:`loopml.spec.parse_spec` before it is returned.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopml.data.profile import ColumnProfile
from loopml.spec import parse_spec
from loopml.spec.model import CsvOptions

__all__ = ["Plan", "render"]

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


@dataclass
class Plan:
    """Everything a scaffolded project says, decided from the data."""

    data: Path
    project_dir: Path
    format: str
    rows: int
    columns: dict[str, ColumnProfile]
    csv: CsvOptions | None
    task: str
    label: str
    positive: Any
    timestamp: str | None
    timestamp_note: str
    entities: list[str]
    unique: set[str]
    span_days: float
    request: dict[str, str] = field(default_factory=dict)  # name -> type
    encodings: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (input, op)
    views: dict[str, tuple[str | None, list[str]]] = field(default_factory=dict)  # entity -> (aggregated column, windows)
    transforms: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (op, input)
    exclude: list[str] = field(default_factory=list)
    group: str | None = None  # random split: the column whose values stay in one split


def yaml_scalar(value: Any) -> str:
    """A YAML scalar (key or value) that reads back as ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)


_y = yaml_scalar


def _flow(items: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in items.items()) + "}"


def name_like(text: str, fallback: str, pattern: str) -> str:
    """``text`` with runs of characters matching ``pattern`` replaced by ``_``; ``fallback`` unless it starts with a letter."""
    cleaned = re.sub(pattern, "_", text).strip("_")
    return cleaned if cleaned and cleaned[0].isalpha() else fallback


def _source_path(data: Path, project_dir: Path) -> str:
    data, project_dir = data.resolve(), project_dir.resolve()
    return data.relative_to(project_dir).as_posix() if data.is_relative_to(project_dir) else str(data)


def _column_line(plan: Plan, col: ColumnProfile) -> str:
    rule: dict[str, str] = {"type": col.type}
    if col.non_null == plan.rows:
        rule["nullable"] = "false"
    is_label = col.name == plan.label
    if col.name in plan.unique:
        rule["unique"] = "true"
    elif col.values is not None and ((is_label and plan.task == "binary") or (col.type == "string" and not is_label)):
        rule["allowed"] = "[" + ", ".join(_y(v) for v in col.values) + "]"
    if col.format is not None:
        rule["format"] = _y(col.format)
    if col.strays:
        rule["severity"] = "warn"
    return f"      {_y(col.name)}: {_flow(rule)}"


def _source(plan: Plan, source: str) -> list[str]:
    out = ["# Where the data comes from and what each ingest checks; failing rows go to quarantine.", "sources:"]
    out += [f"  {_y(source)}:", f"    path: {_y(_source_path(plan.data, plan.project_dir))}", f"    format: {plan.format}"]
    if plan.csv is not None:
        out.append(f"    csv: {_flow({k: _y(v) for k, v in plan.csv.model_dump(exclude_defaults=True).items()})}")
    if plan.timestamp is not None:
        out.append(f"    timestamp: {_y(plan.timestamp)}    # {plan.timestamp_note}")
    else:
        out.append(f"    # timestamp: none ({plan.timestamp_note})")
    out.append("    columns:")
    out += [_column_line(plan, c) for c in plan.columns.values()]
    return [*out, "    table:", "      min_rows: 1", ""]


def _features(plan: Plan, source: str) -> list[str]:
    out = ["# Model inputs: request features arrive with each prediction; views aggregate past events per entity.", "features:"]
    lines = [f"    {_y(name)}: {{type: {kind}}}" for name, kind in plan.request.items()]
    out += ["  request:", *lines] if lines else ["  request: {}"]
    if plan.encodings:
        out.append("  encodings:    # text categories as numbers, fitted on the training split")
        out += [f"    {_y(name)}: {{input: {_y(column)}, op: {op}}}" for name, (column, op) in plan.encodings.items()]
    if plan.views:
        out.append("  views:")
        for entity, (column, windows) in plan.views.items():
            functions = "[count, mean]" if column is not None else "[count]"
            agg = f"{{column: {_y(column or entity)}, functions: {functions}, windows: [{', '.join(windows)}]}}"
            out += [f"    {_y(entity)}:", f"      entity: {_y(entity)}", f"      source: {_y(source)}"]
            out += ["      aggregations:", f"        - {agg}"]
    if plan.transforms:
        out.append("  transforms:")
        out += [f"    {_y(name)}: {{op: {op}, inputs: [{_y(column)}]}}" for name, (op, column) in plan.transforms.items()]
    if plan.exclude:
        out.append(f"  exclude: [{', '.join(_y(e) for e in plan.exclude)}]    # the raw timestamp is not a model input")
    return out


def _split(plan: Plan) -> list[str]:
    out = ["", "# How rows are split into train, validation and test."]
    if plan.timestamp is not None:
        days = max(1, round(0.15 * plan.span_days))
        return [
            *out,
            "split:",
            "  method: time",
            f"  valid_days: {days}",
            f"  test_days: {days}    # about 15% of the time span each",
        ]
    out += ["split:", "  method: random", "  valid_fraction: 0.15", "  test_fraction: 0.15"]
    if plan.group is not None:
        out.append(f"  group: {_y(plan.group)}    # all rows of one {plan.group} in the same split")
    return out


def render(plan: Plan) -> str:
    """The text of ``loopml.yaml`` for ``plan``, accepted by :func:`loopml.spec.parse_spec`."""
    source = name_like(plan.data.stem, "events", r"[^A-Za-z0-9_]+")
    project = name_like(plan.project_dir.resolve().name, "project", r"[^A-Za-z0-9_.-]+")
    out = [
        f"# loopml project scaffolded by 'loopml init' from {plan.data.name} ({plan.rows} rows).",
        "# Everything below was inferred from the data: read it and edit what does not fit.",
        f"project: {_y(project)}",
        f"task: {plan.task}",
        "",
        "# The things predictions are about; views aggregate each entity's history.",
    ]
    if plan.entities:
        out += ["entities:", *[f"  {_y(e)}: {{key: {_y(e)}}}" for e in plan.entities]]
    else:
        out.append("entities: {}")
    out += ["", *_source(plan, source)]
    out += ["# What to predict.", "label:", f"  source: {_y(source)}", f"  column: {_y(plan.label)}"]
    if plan.task == "binary":
        out.append(f"  positive: {_y(plan.positive)}")
    out += ["  delay: 0s    # how long after an event its label is known: set this for your data", ""]
    out += _features(plan, source)
    out += _split(plan)
    text = "\n".join(out) + "\n"
    parse_spec(text)
    return text
