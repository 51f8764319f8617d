"""Shared fixtures: a small simulated fraud project, trained once per session.

Tests that change a project work on a copy (``trained_copy``), so the
session's project stays as built.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopml.project import Project
from specs import write_fraud_project

# Real servers for backend tests, started on demand on free loopback ports (fixtures in these modules).
pytest_plugins = ("postgres_server", "servers")


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fraud project with a snapshot, features, a champion model and materialized online features."""
    folder = write_fraud_project(tmp_path_factory.mktemp("fraud") / "project")
    project = Project.load(folder)
    project.ingest()
    project.build_features()
    project.train()
    project.materialize()
    yield folder


@pytest.fixture
def trained_copy(trained_project: Path, tmp_path: Path) -> Path:
    target = tmp_path / "project"
    shutil.copytree(trained_project, target)
    return target
