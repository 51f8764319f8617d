"""The fraud example's time split, scaled to the days simulated (``loopml init --example fraud --days N``).

``fraud.yaml`` splits 28 days of train, 7 of validation and 7 of test, each
pair separated by the 7-day label delay: 56 days of history. A shorter
history (``--days`` minus ``--live-days``) gets a split that fits it: the two
gaps stay (they keep labels from leaking across splits), validation and test
get a sixth each of the days left (at least one), train the rest. Below
:func:`example_min_days` (one day each and the two gaps: 17 days) no split
fits, and :func:`example_split` says so with ``None``.
"""

from __future__ import annotations

import re

from loopml.errors import LoopmlError
from loopml.spec.load import parse_spec

_DAY_S = 86_400
_KEYS = ("train_days", "valid_days", "test_days")


def example_gap_days(text: str) -> int:
    """The gap between the splits of the spec ``text``: its label delay, in whole days (rounded up)."""
    return -(-int(parse_spec(text, "fraud.yaml").label.delay.total_seconds()) // _DAY_S)


def example_min_days(text: str) -> int:
    """The fewest days of history a time split fits in: 1 day each of train, valid and test, and the two gaps."""
    return 3 + 2 * example_gap_days(text)


def example_split(text: str, history_days: int) -> tuple[int, int, int] | None:
    """(train, valid, test) days of the time split of ``text`` over ``history_days`` days; None when none fits."""
    split = parse_spec(text, "fraud.yaml").split
    default = (int(split.train_days or 0), int(split.valid_days), int(split.test_days))
    room = history_days - 2 * example_gap_days(text)
    if room >= sum(default):
        return default
    if history_days < example_min_days(text):
        return None
    valid = test = max(1, round(room / 6))
    return room - valid - test, valid, test


def with_split(text: str, days: tuple[int, int, int]) -> str:
    """``text`` with its ``split.train_days/valid_days/test_days`` set to ``days`` (comments kept)."""
    for key, value in zip(_KEYS, days, strict=True):
        text, n = re.subn(rf"(?m)^(  {key}: )[0-9.]+", rf"\g<1>{value}", text, count=1)
        if n != 1:
            raise LoopmlError(f"init: the example's loopml.yaml has no split.{key} to scale")
    return text
