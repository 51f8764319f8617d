"""The README's tour, executed as written: each ``loopml`` line is run as a real process.

Two substitutions keep the test fast and parallel-safe, and nothing else is
changed: ``loopml init`` simulates a smaller world (``--customers 800
--terminals 1600``), and ``loopml serve`` binds a free port instead of 8000.
The ``curl`` line's body is sent with httpx to that port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loopml.server import free_port
from waiting import wait_until

README = Path(__file__).resolve().parents[1] / "README.md"


def tour() -> list[str]:
    """The commands of the first ``bash`` block of the README, comments stripped, continuation lines joined."""
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README has no bash block"
    commands: list[str] = []
    pending = ""
    for line in block.group(1).splitlines():
        if pending:
            pending += "\n" + line
            if pending.count("'") % 2 == 0:
                commands.append(pending)
                pending = ""
            continue
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line:
            continue
        if line.count("'") % 2:
            pending = line
        else:
            commands.append(line)
    return commands


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loopml", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    commands = tour()
    assert [c.split()[0] for c in commands][:3] == ["loopml", "cd", "loopml"]
    cwd = tmp_path
    server: subprocess.Popen[str] | None = None
    url = ""
    outputs: dict[str, str] = {}
    try:
        for command in commands:
            words = shlex.split(command)
            if words[0] == "cd":
                cwd = cwd / words[1]
            elif words[0] == "curl":
                body = json.loads(words[words.index("-d") + 1])
                response = httpx.post(f"{url}/v1/predict", json=body, timeout=30)
                assert response.status_code == 200, response.text
                answer = response.json()
                assert 0.0 <= answer["score"] <= 1.0 and answer["model_version"] == 1
                outputs["curl"] = response.text
            elif words[:2] == ["loopml", "serve"]:
                port = free_port()
                args = [w for w in words[1:] if w != "&"]
                args[args.index("--port") + 1] = str(port)
                env = {**os.environ, "LOOPML_ADMIN_TOKEN": "readme"}
                server = subprocess.Popen(
                    [sys.executable, "-m", "loopml", *args], cwd=cwd, env=env, text=True, stderr=subprocess.PIPE
                )
                url = f"http://127.0.0.1:{port}"

                def ready(process: subprocess.Popen[str] = server, url: str = url) -> bool:
                    assert process.poll() is None, process.stderr.read() if process.stderr else ""
                    try:
                        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
                    except httpx.HTTPError:
                        return False

                wait_until(ready, timeout=120, interval=0.2, message="loopml serve to become ready")
            else:
                assert words[0] == "loopml", command
                args = words[1:]
                if args[0] == "init":
                    args += ["--customers", "800", "--terminals", "1600"]
                if args[0] == "monitor" and server is not None:
                    httpx.post(f"{url}/v1/admin/flush", headers={"Authorization": "Bearer readme"}, timeout=30)
                done = run(args, cwd)
                assert done.returncode == 0, f"{command}: {done.stderr}"
                outputs[" ".join(args[:2])] = done.stdout + done.stderr
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
            if server.stderr is not None:
                server.stderr.close()
    assert "champion" in outputs["models list"]
    assert "score" in outputs["monitor"]
    ingest = json.loads(run(["ingest", "--json"], cwd).stdout)
    assert ingest["rows_in"] == ingest["rows_valid"] + ingest["rows_quarantined"] > 0
