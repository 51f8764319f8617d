"""``loopml init``: write a ready project folder.

Either the built-in card-fraud world (simulated transactions as Parquet plus
the example ``loopml.yaml`` shipped in :mod:`loopml.datasets`), or a
scaffold inferred from any CSV/Parquet/JSONL file by :mod:`loopml.data.infer`.

The example's time split is scaled to the simulated history
(:mod:`loopml.datasets.example_split`); when no split fits, the project is
still written (to look at, ingest, serve) and the caller is warned with the
``--days`` that would train.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loopml.data.infer import LABEL_FITS, infer_project
from loopml.datasets.example_split import example_gap_days, example_min_days, example_split, with_split
from loopml.datasets.fraud import FraudWorldConfig, write_world
from loopml.errors import LoopmlError
from loopml.spec.load import SPEC_FILE, parse_spec

Progress = Callable[[str, float], None]


def example_spec_text() -> str:
    return resources.files("loopml.datasets").joinpath("fraud.yaml").read_text(encoding="utf-8")


@contextmanager
def _undone_on_failure(folder: Path) -> Iterator[None]:
    """Remove the folders made for ``folder`` (itself and missing parents) if the body fails: a failed init leaves nothing."""
    made = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        yield
    except BaseException:
        if made:
            shutil.rmtree(made[-1], ignore_errors=True)
        raise


def _target(folder: Path, force: bool) -> Path:
    target = folder / SPEC_FILE
    if target.exists() and not force:
        raise LoopmlError(f"{target}: already exists (pass --force to overwrite)")
    return target


def _prepare(folder: Path, force: bool) -> Path:
    target = _target(folder, force)
    folder.mkdir(parents=True, exist_ok=True)
    return target


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def init_example(
    folder: Path,
    days: int = 183,
    seed: int = 0,
    drift_day: int | None = None,
    live_days: int = 0,
    customers: int = 5000,
    terminals: int = 10000,
    force: bool = False,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> int:
    """Simulate the fraud world into ``folder``; return the number of history rows.

    The last ``live_days`` days go to ``data/live.parquet`` instead of the
    history file: traffic to replay against the served model. The time split
    is scaled to the history (see the module doc); ``warn`` hears when none fits.
    """
    with _undone_on_failure(folder):
        target = _prepare(folder, force)
        if live_days < 0 or live_days >= days:
            raise LoopmlError(f"init: live days must be between 0 and {days - 1}, got {live_days}")
        try:
            config = FraudWorldConfig(
                n_customers=customers, n_terminals=terminals, days=days, seed=seed, drift_start_day=drift_day
            )
        except ValueError as exc:
            raise LoopmlError(f"init: {exc}") from None
        data = folder / "data"
        paths = write_world(config, data)
        table = pq.read_table(paths["transactions"])
        if live_days:
            start = datetime.fromisoformat(config.start_date)
            cutoff = pa.scalar(start + timedelta(days=days - live_days), type=pa.timestamp("us"))
            history = table.filter(pc.less(table["tx_datetime"], cutoff))
            live = table.filter(pc.greater_equal(table["tx_datetime"], cutoff))
            pq.write_table(history, paths["transactions"])
            pq.write_table(live, data / "live.parquet")
            table = history
        if progress is not None:
            progress("simulated", 1.0)
        text = example_spec_text()
        split = example_split(text, days - live_days)
        if split is not None:
            text = with_split(text, split)
            parse_spec(text, str(target))
        elif warn is not None:
            minimum = example_min_days(text)
            warn(
                f"init: {days - live_days} day(s) of history leave no room for the time split (split.train_days/valid_days/"
                f"test_days of at least 1 day each and two {example_gap_days(text)}-day label-delay gaps: {minimum} days); "
                f"training will refuse it: pass --days {minimum + live_days} or more"
            )
        _write_text(target, text)
        return int(table.num_rows)


def init_from_data(
    folder: Path,
    data: Path,
    label: str,
    positive: str | None,
    task: str | None,
    timestamp: str | None,
    entities: list[str],
    force: bool = False,
) -> tuple[Path, list[str]]:
    """Infer a ``loopml.yaml`` for ``data``; the result is checked before it is written. Returns it and the notes on
    what was decided (:func:`loopml.data.infer.infer_project`)."""
    if task is not None and task not in LABEL_FITS:
        raise LoopmlError(f"init: --task must be {' or '.join(LABEL_FITS)}, not {task!r}")
    target = _target(folder, force)
    inferred = infer_project(data.resolve(), label, positive, task, timestamp, entities, folder.resolve())
    parse_spec(inferred.text, str(target))
    with _undone_on_failure(folder):
        _write_text(_prepare(folder, force), inferred.text)
    return target, inferred.notes
