"""Shared fixtures: a small simulated fraud project, trained once per session.

Tests that change a project work on a copy (``trained_copy``), so the
session's project stays as built.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopml.project import Project
from specs import write_fraud_project

# Real servers for backend tests, started on demand on free loopback ports (fixtures in these modules).
pytest_plugins = ("postgres_server", "servers")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a ``slow`` test run first (each file keeps its order).

    Under pytest-xdist (``make test``: two workers, one file at a time each, in this order) the
    minutes-long end-to-end tests then overlap with the many short ones instead of trailing alone.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def build_trained_project(folder: Path) -> Path:
    write_fraud_project(folder)
    project = Project.load(folder)
    project.ingest()
    project.build_features()
    project.train()
    project.materialize()
    return folder


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fraud project with a snapshot, features, a champion model and materialized online features.

    Under pytest-xdist the first worker to get here builds it in the run's folder (the workers'
    common parent) while the others wait on a lock; each worker then uses its own copy.
    """
    folder = tmp_path_factory.mktemp("fraud") / "project"
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        yield build_trained_project(folder)
        return
    run = tmp_path_factory.getbasetemp().parent
    with (run / "fraud-project.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run / "fraud-project.built").exists():
            build_trained_project(run / "fraud-project")
            (run / "fraud-project.built").touch()
    shutil.copytree(run / "fraud-project", folder)
    yield folder


@pytest.fixture
def trained_copy(trained_project: Path, tmp_path: Path) -> Path:
    target = tmp_path / "project"
    shutil.copytree(trained_project, target)
    return target
