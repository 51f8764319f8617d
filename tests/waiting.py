"""The one way a test waits: poll a condition until it holds, with a deadline generous enough for a busy machine.

A test never sleeps "long enough" for something to happen and never asserts how
long something took (speed belongs to ``benchmarks/``): it waits for the
condition itself, and the deadline only turns a hang into a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.02, message: str | Callable[[], str] = ""
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy; return that.

    Fails the test (``AssertionError`` naming what was awaited: ``message``, or what it returns when
    it is a function, called then) when ``timeout`` seconds pass first. The predicate is always called
    once more at the deadline, so one slow call cannot fail it. An assertion inside the predicate
    (say, "the server process is still alive") fails the test at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        last_chance = time.monotonic() >= deadline
        value = predicate()
        if value:
            return value
        if last_chance:
            what = (message() if callable(message) else message) or getattr(predicate, "__name__", "a condition")
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
