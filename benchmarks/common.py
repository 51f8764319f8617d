"""Helpers every benchmark script shares (imported as ``common``: scripts run as ``python benchmarks/X.py``)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: MLflow is not a loopml dependency: the benchmarks that compare with it install it here, once
MLFLOW_VENV = Path(tempfile.gettempdir()) / "loopml-bench-mlflow-venv"


def ratio(reference_s: float, loopml_s: float) -> str:
    """``2.5x faster`` or ``1.3x slower``: loopml against the reference run in the same process."""
    r = reference_s / loopml_s
    return f"{r:.1f}x faster" if r >= 1 else f"{1 / r:.1f}x slower"


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds."""
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def mlflow_python() -> Path | None:
    """The Python of the MLflow venv (created and installed on first use); None when MLflow cannot be installed."""
    python = MLFLOW_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing MLflow into {MLFLOW_VENV} (once)...", file=sys.stderr)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "mlflow>=2.10,<4"], check=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as exc:
            print(f"MLflow could not be installed ({exc}); skipping it", file=sys.stderr)
            return None
    return python
