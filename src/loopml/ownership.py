"""Which live process owns a record: an exclusive ``flock`` that the kernel drops when its holder dies.

A long-running record (a training run, a closed-loop run) says ``running`` only
while the process that writes it lives. The owner opens a lock file next to the
record and holds an exclusive :func:`fcntl.flock` on it for as long as the record
is ``running``. The kernel releases the lock when the process ends, however it
ends (SIGKILL and the OOM killer included), so nothing relies on the process
cleaning up after itself, and a reused pid fools nobody (the pid is kept only to
name the process in messages).

A reader asks with :func:`owner_gone`: a shared, non-blocking lock on the same
file. Granted means no process holds the exclusive one; the reader keeps the
shared lock while it rewrites the record, so a new owner cannot take over in the
middle. Refused means the owner lives. A missing lock file means no process ever
took ownership (a record written before loopml tracked owners), which is as gone
as an owner can be. The owner writes its record's final status *before* it lets
go of the lock, so a reader that gets the lock and still reads ``running`` knows
the owner died.

Locks belong to open file descriptions: a second open in the same process is a
second party (an in-process reader sees the owner as alive), and a forked child
that inherits the descriptor keeps the owner alive until it exits too. The
descriptors are close-on-exec, so programs a run starts do not inherit them.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Ownership:
    """An exclusive lock held on ``path``; :meth:`release` (or the process's end) lets it go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for forked children that share the descriptor
        finally:
            os.close(fd)


def acquire(path: Path, patience_s: float = 0.0) -> Ownership | None:
    """Take the exclusive lock on ``path`` (created if missing), or ``None`` if another holder keeps it.

    ``patience_s`` is how long to keep trying: readers hold the shared lock for a moment while they check
    and rewrite a record, which must not read as a live owner to a process that wants to start.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.02)
        except BaseException:
            os.close(fd)
            raise
        else:
            return Ownership(path, fd)


@contextmanager
def owner_gone(path: Path) -> Iterator[bool]:
    """``True`` (holding a shared lock until the block ends) if no process holds ``path``'s exclusive lock.

    ``False`` if the owner lives, or if the lock file cannot be opened (then nobody can tell, and the
    record is left as it is).
    """
    fd: int | None = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        gone = True
    except FileNotFoundError:
        gone = True  # no process ever took ownership
    except OSError:  # BlockingIOError: the owner holds it; anything else: nobody can tell
        gone = False
    try:
        yield gone
    finally:
        if fd is not None:
            os.close(fd)  # closing drops the shared lock
