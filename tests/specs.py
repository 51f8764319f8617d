"""The one place tests build specs and projects: the simulated card-fraud world's ``loopml.yaml``, with overrides.

* :func:`fraud_spec_dict` / :func:`fraud_spec`: the example spec (what ``loopml init --example fraud``
  writes) as a plain dict / a validated :class:`Spec`, with ``sections`` merged in;
* :func:`minimal_spec_dict`: the smallest valid spec (one source, an int label), for tests of a
  backend choice that need no data;
* :func:`write_fraud_project`: a project folder with a small simulated world and the example spec;
* :func:`configure`: merge ``sections`` into a project's ``loopml.yaml`` (its comments kept).

Overrides merge key by key at any depth (a mapping into a mapping); any other value replaces the
old one, and :data:`REMOVE` deletes its key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from loopml.scaffold import example_spec_text, init_example
from loopml.spec.load import parse_spec
from loopml.spec.model import Spec

#: the simulated world of the session's trained project: small enough to train in seconds
SMALL_WORLD: dict[str, int] = {"days": 75, "customers": 800, "terminals": 1600, "seed": 3, "live_days": 10}

#: The serving latency budget of test projects: a minute, so latency never decides a test's training gate
#: or canary. The example's 10 ms is a production figure that a single-row p99 on a busy 2-core test
#: machine can miss, failing the gate (no champion) or rolling back a healthy canary at random. The
#: latency rules themselves are tested on given numbers (test_registry, test_rollout, test_monitor).
TEST_LATENCY_BUDGET_MS = 60_000.0


class _Remove:
    def __repr__(self) -> str:
        return "REMOVE"


#: an override value that deletes its key
REMOVE: Any = _Remove()


def merge(base: Any, overrides: dict[str, Any]) -> Any:
    """``base`` (changed in place, and returned) with ``overrides`` merged in, key by key at any depth."""
    for key, value in overrides.items():
        if value is REMOVE:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def fraud_spec_dict(**sections: Any) -> dict[str, Any]:
    """The example fraud spec as plain JSON-like data (every default filled in), with ``sections`` merged in."""
    data: dict[str, Any] = parse_spec(example_spec_text()).model_dump(mode="json")
    return merge(data, sections)  # type: ignore[no-any-return]


def fraud_spec(**sections: Any) -> Spec:
    return Spec.model_validate(fraud_spec_dict(**sections))


def minimal_spec_dict(**sections: Any) -> dict[str, Any]:
    """One source ``s`` (``s.parquet``) with one int column ``y``, the label; no entities, no features."""
    data: dict[str, Any] = {
        "project": "p",
        "entities": {},
        "sources": {"s": {"path": "s.parquet", "columns": {"y": {"type": "int"}}}},
        "label": {"source": "s", "column": "y"},
    }
    return merge(data, sections)  # type: ignore[no-any-return]


def configure(folder: Path, **sections: Any) -> None:
    """Merge ``sections`` into ``folder/loopml.yaml`` (round trip: the file's comments and key order are kept)."""
    yaml = YAML(typ="rt")
    path = folder / "loopml.yaml"
    doc = yaml.load(path.read_text(encoding="utf-8"))
    merge(doc, sections)
    with path.open("w", encoding="utf-8") as fh:
        yaml.dump(doc, fh)


def write_fraud_project(folder: Path, world: dict[str, int] | None = None, **sections: Any) -> Path:
    """A fraud project in ``folder``: :data:`SMALL_WORLD` (``world`` overrides it) simulated into ``data/``,
    the example ``loopml.yaml`` with :data:`TEST_LATENCY_BUDGET_MS` and ``sections`` merged in. Returns ``folder``."""
    init_example(folder, **{**SMALL_WORLD, **(world or {})})  # type: ignore[arg-type]
    configure(folder, **merge({"serving": {"latency_budget_ms": TEST_LATENCY_BUDGET_MS}}, sections))
    return folder
