"""Tasks: ``binary`` and ``regression``, one module each, behind the :class:`~loopml.tasks.base.Task` protocol.

Stages ask ``task_of(spec.task)`` for what differs by task; metric functions
shared by tasks are in :mod:`loopml.tasks.metrics`.
"""

from __future__ import annotations

from loopml.errors import LoopmlError
from loopml.tasks.base import Task
from loopml.tasks.binary import Binary
from loopml.tasks.regression import Regression

TASKS: dict[str, Task] = {task.name: task for task in (Binary(), Regression())}


def task_of(name: str) -> Task:
    """The task named ``name`` (the spec's ``task``); LoopmlError naming the choices otherwise."""
    task = TASKS.get(name)
    if task is None:
        raise LoopmlError(f"task: unknown task {name!r} (choices: {', '.join(TASKS)})")
    return task


__all__ = ["TASKS", "Task", "task_of"]
