"""Helpers every benchmark script shares (imported as ``common``: scripts run as ``python benchmarks/X.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def ratio(reference_s: float, loopml_s: float) -> str:
    """``2.5x faster`` or ``1.3x slower``: loopml against the reference run in the same process."""
    r = reference_s / loopml_s
    return f"{r:.1f}x faster" if r >= 1 else f"{1 / r:.1f}x slower"


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds."""
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started
