"""docs/reference.md stays true: every command and option it lists exists, every endpoint it lists is served."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from loopml.cli import app
from loopml.project import Project
from loopml.server import build_app

PAGE = (Path(__file__).resolve().parents[1] / "docs" / "reference.md").read_text()


def _cells(prefix: str) -> list[str]:
    """The first cell of each table row whose first cell starts with ``prefix`` (inside backticks)."""
    return [m.group(1) for m in re.finditer(rf"^\| `({re.escape(prefix)}[^|]*?)`", PAGE, flags=re.MULTILINE)]


def test_every_listed_command_and_option_exists() -> None:
    runner = CliRunner()
    commands = [cell for cell in _cells("loopml ") if not cell.startswith("loopml --")]
    assert len(commands) >= 12
    for cell in commands:
        for usage in cell.split("` / `"):
            words = usage.split()[1:]
            path = [w for w in words[:2] if re.fullmatch(r"[a-z]+", w)]
            if len(path) == 2 and runner.invoke(app, [*path, "--help"]).exit_code != 0:
                path = path[:1]
            result = runner.invoke(app, [*path, "--help"], terminal_width=200)
            assert result.exit_code == 0, f"{usage}: {result.output}"
            for option in re.findall(r"--[a-z][a-z-]*", usage):
                assert option in result.output, f"{usage}: {option} is not an option of loopml {' '.join(path)}"


def test_every_listed_endpoint_is_served(trained_project: Path) -> None:
    paths = build_app(Project.load(trained_project), admin_token="token").openapi()["paths"]  # admin routes need a token
    routes = {(method.upper(), path) for path, operations in paths.items() for method in operations}
    endpoints = re.findall(r"`(GET|POST) (/[a-z0-9/_]+)`", PAGE)
    assert len(endpoints) >= 9
    for method, path in endpoints:
        assert (method, path) in routes, f"{method} {path} is listed in docs/reference.md but not served"
