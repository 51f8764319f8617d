"""Durable renames: what makes "write a temporary file, fsync it, rename it" survive a power cut.

A rename is a change to the folder, not to the file: it is on disk only once the
folder itself is fsync'ed. The registry (artifacts before the row naming them)
and the prediction-log compactor (the record before the merged part it names)
depend on renames reaching the disk in the order they were made.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make the renames made in ``folder`` so far durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
