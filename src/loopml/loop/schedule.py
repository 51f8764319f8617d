"""The closed loop on a schedule: ``loopml serve`` runs ``loopml retrain`` every ``retraining.check_every``.

Each check is a separate ``loopml retrain --json`` process (training must not
share the server's cores' GIL with the request path, and a crash of the loop
must not take the server down), pointed at the server's own URL for the
canary and given the server's admin token through the environment. One
check at a time: a check that is still running when the next is due is
not doubled (the loop's own lock would refuse it anyway). The outcome of each
check is kept on :attr:`RetrainScheduler.last` and written to stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any


class RetrainScheduler:
    def __init__(self, project_root: Path, interval_s: float, service_url: str, admin_token: str | None) -> None:
        self.project_root = project_root
        self.interval_s = interval_s
        self.service_url = service_url
        self.admin_token = admin_token
        self.last: dict[str, Any] | None = None
        self.checks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopml-retrain-schedule", daemon=True)

    def start(self) -> RetrainScheduler:
        self._thread.start()
        return self

    def check(self) -> dict[str, Any]:
        """Run ``loopml retrain`` once, in a child process; return its JSON (or the error)."""
        env = dict(os.environ)
        if self.admin_token:
            env["LOOPML_ADMIN_TOKEN"] = self.admin_token
        command = [sys.executable, "-m", "loopml.cli", "retrain", "--project", str(self.project_root)]
        command += ["--service-url", self.service_url, "--json"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        self.checks += 1
        if done.returncode == 0:
            result: dict[str, Any] = json.loads(done.stdout)
        else:
            result = {"status": "failed", "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
        self.last = result
        print(
            f"loopml retrain (scheduled): {result.get('status')}: {result.get('outcome') or result.get('error') or ''}",
            file=sys.stderr,
        )
        return result

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()
