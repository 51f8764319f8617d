"""Load ``loopml.yaml`` into a :class:`~loopml.spec.model.Spec`, with line numbers.

ruamel.yaml's round-trip loader keeps the line of every key, so every
validation error (pydantic's and the cross-reference checks of
:mod:`loopml.spec.checks`) is reported as ``file:line: key.path: message``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from loopml.errors import SpecError
from loopml.spec.checks import cross_reference_problems
from loopml.spec.environment import apply_environment
from loopml.spec.model import Spec

SPEC_FILE = "loopml.yaml"


def _line_of(doc: Any, loc: tuple[str | int, ...]) -> int | None:
    """1-based line of the deepest key in ``loc`` that exists in the YAML tree."""
    node, line = doc, None
    for part in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(node, dict) and part in node:
                if lc is not None:
                    line = lc.key(part)[0] + 1
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                if lc is not None:
                    line = lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        except (KeyError, IndexError, TypeError, AttributeError):
            break
    if line is None and getattr(doc, "lc", None) is not None:
        return 1
    return line


def _fmt(path: str, doc: Any, loc: tuple[str | int, ...], message: str) -> str:
    line = _line_of(doc, loc)
    key = ".".join(str(p) for p in loc) or "(top level)"
    where = f"{path}:{line}" if line else path
    return f"{where}: {key}: {message}"


def parse_spec(text: str, path: str = SPEC_FILE) -> Spec:
    """Validate YAML text; raise :class:`SpecError` listing every problem."""
    try:
        doc = YAML(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(path, [f"{path}{line}: not valid YAML: {problem}"]) from None
    if not isinstance(doc, dict):
        raise SpecError(path, [f"{path}:1: the file must be a mapping of keys (project, sources, ...)"])
    try:
        spec = Spec.model_validate(json.loads(json.dumps(doc, default=str)))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(_fmt(path, doc, loc, msg))
        raise SpecError(path, problems) from None
    problems = [_fmt(path, doc, loc, msg) for loc, msg in cross_reference_problems(spec)]
    if problems:
        raise SpecError(path, problems)
    return spec


def load_spec(folder: Path, environ: Mapping[str, str] | None = None) -> tuple[Spec, str]:
    """Read ``folder/loopml.yaml`` with the environment's overrides applied; return the spec and the file's content hash.

    ``environ`` defaults to the process environment (:mod:`loopml.spec.environment` lists what it may override).
    """
    path = folder / SPEC_FILE
    if not path.is_file():
        raise SpecError(str(path), [f"{path}: no loopml.yaml here (run 'loopml init' or pass --project DIR)"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), [f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    spec = apply_environment(parse_spec(text, str(path)), os.environ if environ is None else environ)
    return spec, spec_hash(text)


def spec_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
