"""The command line as users and scripts see it: exit codes, one-line errors, JSON keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loopml.cli import app
from loopml.project import Project
from loopml.scaffold import example_spec_text

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_init_example_then_check(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    code, _, err = invoke("init", str(folder), "--example", "fraud", "--days", "20", "--customers", "200", "--terminals", "400")
    assert code == 0, err
    assert (folder / "loopml.yaml").is_file() and (folder / "data" / "transactions.parquet").is_file()
    code, _, err = invoke("check", "--project", str(folder))
    assert code == 0 and err.startswith("ok:")
    code, _, err = invoke("init", str(folder), "--example", "fraud")
    assert code == 1 and "already exists" in err and len(err.strip().splitlines()) == 1


def test_check_reports_each_error_with_its_line(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    invoke("init", str(folder), "--example", "fraud", "--days", "5", "--customers", "50", "--terminals", "100")
    text = (folder / "loopml.yaml").read_text().replace("psi_bins: 10", "psi_binz: 10").replace("port: 8000", "port: x")
    (folder / "loopml.yaml").write_text(text)
    code, out, err = invoke("check", "--project", str(folder))
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert any("monitoring.psi_binz: unknown key" in line for line in lines)
    assert all(line.startswith(f"error: {folder}/loopml.yaml:") for line in lines)


def test_ingest_json_keys(trained_copy: Path) -> None:
    code, out, _ = invoke("ingest", "--json", "--project", str(trained_copy))
    assert code == 0
    data = json.loads(out)
    assert {"snapshot", "rows_in", "rows_valid", "rows_quarantined", "checks"} <= set(data)
    assert data["rows_in"] == data["rows_valid"] + data["rows_quarantined"]


def test_train_json_keys_and_models_list(trained_copy: Path) -> None:
    code, out, err = invoke("train", "--json", "--project", str(trained_copy))
    assert code == 0, err
    data = json.loads(out)
    assert {"run_id", "model_version", "promoted", "metrics"} <= set(data)
    assert isinstance(data["promoted"], bool) and data["model_version"] == 2
    for split in ("test", "valid"):
        assert {"roc_auc", "average_precision", "log_loss", "brier", "precision", "recall", "f1"} <= set(data["metrics"][split])
    code, out, _ = invoke("models", "list", "--json", "--project", str(trained_copy))
    versions = json.loads(out)
    assert [v["version"] for v in versions] == [1, 2]
    assert all({"version", "aliases", "metrics", "created_at"} <= set(v) for v in versions)
    code, out, _ = invoke("runs", "list", "--json", "--project", str(trained_copy))
    assert code == 0 and len(json.loads(out)) == 2


def test_promote_and_rollback_errors_leave_registry_unchanged(trained_copy: Path) -> None:
    before = invoke("models", "list", "--json", "--project", str(trained_copy))[1]
    code, _out, err = invoke("models", "promote", "42", "--project", str(trained_copy))
    assert code == 1 and "model version 42 does not exist" in err and len(err.strip().splitlines()) == 1
    code, _out, err = invoke("models", "rollback", "--project", str(trained_copy))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert invoke("models", "list", "--json", "--project", str(trained_copy))[1] == before


def test_features_get_reads_online_store(trained_project: Path) -> None:
    code, out, err = invoke("features", "get", "--entity", "customer_id=1", "--json", "--project", str(trained_project))
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"customer"} and "customer_count_30d" in data["customer"]["values"]
    code, _, err = invoke("features", "get", "--entity", "shop_id=1", "--project", str(trained_project))
    assert code == 1 and "unknown entity key" in err


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (lambda d: (d / "data" / "transactions.parquet").unlink(), "transactions.parquet"),
        (lambda d: (d / "data" / "transactions.parquet").write_bytes(b""), "transactions.parquet"),
        (lambda d: (d / "loopml.yaml").write_text("project: x\n"), "loopml.yaml"),
    ],
)
def test_ingest_bad_input_is_one_line_and_nothing_is_left(tmp_path: Path, setup: object, words: str) -> None:
    folder = tmp_path / "p"
    invoke("init", str(folder), "--example", "fraud", "--days", "5", "--customers", "50", "--terminals", "100")
    setup(folder)  # type: ignore[operator]
    code, out, err = invoke("ingest", "--json", "--project", str(folder))
    assert code == 1 and out == ""
    assert words in err and "Traceback" not in err
    assert not (folder / ".loopml" / "snapshots").exists() or not any((folder / ".loopml" / "snapshots").iterdir())


def test_real_process_exit_code_and_stderr(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loopml", "check", "--project", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == f"error: {tmp_path}/loopml.yaml: no loopml.yaml here (run 'loopml init' or pass --project DIR)"


def test_init_example_fits_its_time_split_to_the_days_simulated(tmp_path: Path) -> None:
    """``--days 30`` gives a project that trains (the default 28 + 7 + 7 day split and two 7-day gaps need 56)."""
    folder = tmp_path / "p"
    code, _, err = invoke("init", str(folder), "--example", "fraud", "--days", "30", "--customers", "200", "--terminals", "400")
    assert code == 0, err
    split = Project.load(folder).spec.split
    assert split.train_days is not None and split.train_days + split.valid_days + split.test_days + 2 * 7 <= 30, split
    for command in (["ingest"], ["features", "build"], ["train", "--json"]):
        code, out, err = invoke(*command, "--project", str(folder))
        assert code == 0, (command, err)
    assert json.loads(out)["model_version"] == 1
    code, _, err = invoke("init", str(tmp_path / "tiny"), "--example", "fraud", "--days", "10", "--customers", "50")
    assert code == 0, err  # a tiny world is still a project to look at, but init says what training needs
    assert "--days 17" in err and "split" in err, err


#: Libraries that take seconds to import between them; quick commands must not load any.
HEAVY = ("lightgbm", "sklearn", "scipy", "duckdb", "pandas", "pyarrow", "matplotlib", "fastapi", "uvicorn", "optuna")
_RUN_AND_LIST_MODULES = """
import json, sys
out, args = sys.argv[1], sys.argv[2:]
sys.argv = ["loopml", *args]
from loopml.cli import app
try:
    app()
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
with open(out, "w") as fh:
    json.dump({"code": code, "heavy": sorted(m for m in __HEAVY__ if m in sys.modules)}, fh)
"""


@pytest.mark.parametrize("args", [["--help"], ["check"], ["models", "list"], ["runs", "list"], ["models", "list", "--json"]])
def test_quick_commands_do_not_import_heavy_libraries(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "loopml.yaml").write_text(example_spec_text())
    script = _RUN_AND_LIST_MODULES.replace("__HEAVY__", repr(HEAVY))
    out = tmp_path / "modules.json"
    project = [] if args == ["--help"] else ["--project", str(tmp_path)]
    proc = subprocess.run([sys.executable, "-c", script, str(out), *args, *project], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result == {"code": 0, "heavy": []}, (args, proc.stderr)


def test_a_failed_init_leaves_nothing_behind(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("a,label\n1,0\n2,1\n3,0\n")
    folder = tmp_path / "new" / "project"
    code, _, err = invoke("init", str(folder), "--data", str(data), "--label", "churned")
    assert code == 1 and "label column 'churned' is not a column of the file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    code, _, err = invoke("init", str(folder), "--example", "fraud", "--days", "5", "--live-days", "9")
    assert code == 1 and "live days must be between 0 and 4" in err
    assert not (tmp_path / "new").exists()
    code, _, err = invoke("init", str(folder), "--data", str(data), "--label", "label")
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["loopml.yaml"]
