"""The alert sink contract: every implementation of ``AlertSink`` passes these same tests, unchanged.

``AlertSink`` is what :func:`loopml.monitor.rules.apply` (the monitor's rules) and the serving
side's guardrails need: ``fire`` (deduplicated while the condition persists), ``resolve`` and
``active``, and of the alerts they return ``id``, ``rule``, ``subject``, ``first_seen`` and
``count``. The implementations are found by ``tests/contracts.py``: today the SQLite
``AlertStore``. A new one fails ``test_every_implementation_has_a_factory`` and every test here
until it gets a factory. What only ``AlertStore`` does (history, ids, the webhook, several
processes, the CLI) is in ``tests/test_alerts.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from contracts import Backend, Factory, check_factories, factory_for, ids, implementations
from loopml.errors import LoopmlError
from loopml.monitor.alerts import AlertStore
from loopml.monitor.rules import AlertSink, Breach, apply

SUITE = "tests/test_contract_alerts.py"


# -- the implementations ------------------------------------------------------------------------------------


def sqlite_backend(request: pytest.FixtureRequest, tmp: Path) -> Backend[AlertSink]:
    blocker = tmp / "blocker"
    blocker.write_text("a file where the alerts' folder should be")
    return Backend(
        open=partial(AlertStore, tmp / "state" / "alerts.sqlite"),
        unreachable=partial(AlertStore, blocker / "alerts.sqlite"),
        names=str(blocker),
    )


FACTORIES: dict[type, Factory[Backend[AlertSink]]] = {AlertStore: sqlite_backend}
IMPLEMENTATIONS = implementations(AlertSink)


def test_every_implementation_has_a_factory() -> None:
    check_factories(AlertSink, FACTORIES, SUITE)


@pytest.fixture(params=IMPLEMENTATIONS, ids=ids(IMPLEMENTATIONS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[AlertSink]:
    return factory_for(FACTORIES, request.param, SUITE)(request, tmp_path)


@pytest.fixture
def sink(backend: Backend[AlertSink]) -> AlertSink:
    return backend.open()


def open_pairs(sink: AlertSink) -> set[tuple[str, str]]:
    return {(alert.rule, alert.subject) for alert in sink.active()}


# -- the contract -------------------------------------------------------------------------------------------


def test_a_persisting_condition_is_one_alert_until_resolved(sink: AlertSink) -> None:
    assert sink.active() == []
    first, new = sink.fire("psi", "tx_amount", "PSI 0.31 > 0.2", value=0.31, threshold=0.2)
    assert new and first.count == 1 and (first.rule, first.subject) == ("psi", "tx_amount")
    assert isinstance(first.first_seen, datetime) and first.first_seen.tzinfo is not None
    again, new = sink.fire("psi", "tx_amount", "PSI 0.45 > 0.2", value=0.45, threshold=0.2, severity="critical")
    assert not new and again.id == first.id and again.count == 2 and again.first_seen == first.first_seen
    other, new = sink.fire("psi", "score", "PSI 0.25 > 0.2", value=0.25, threshold=0.2)
    assert new and other.id != first.id
    assert open_pairs(sink) == {("psi", "tx_amount"), ("psi", "score")}

    assert sink.resolve("psi", "tx_amount") is True
    assert sink.resolve("psi", "tx_amount") is False  # nothing open any more
    assert sink.resolve("ks", "nothing") is False
    assert open_pairs(sink) == {("psi", "score")}
    reopened, new = sink.fire("psi", "tx_amount", "PSI 0.22 > 0.2", value=0.22, threshold=0.2)
    assert new and reopened.id not in (first.id, other.id) and reopened.count == 1  # after a resolve: a new alert
    assert open_pairs(sink) == {("psi", "tx_amount"), ("psi", "score")}


def test_undefined_numbers_and_both_severities_are_accepted(sink: AlertSink) -> None:
    alert, new = sink.fire("metric_drop", "average_precision", "AP dropped 12 %", value=float("nan"), threshold=float("inf"))
    assert new and alert.count == 1
    critical, new = sink.fire("latency_p99", "p99", "p99 31 ms > 10 ms", value=31.0, threshold=10.0, severity="critical")
    assert new and critical.id != alert.id
    assert open_pairs(sink) == {("metric_drop", "average_precision"), ("latency_p99", "p99")}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"severity": "info"}, r"^alert psi/x: severity must be 'warning' or 'critical', got 'info'$"),
        ({"rule": ""}, r"^alert: rule and subject must not be empty"),
        ({"subject": ""}, r"^alert: rule and subject must not be empty"),
        ({"value": "high"}, r"^alert value: expected a number, got 'high'$"),
    ],
)
def test_bad_alerts_are_refused_with_one_line(sink: AlertSink, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"rule": "psi", "subject": "x", "message": "m", **kwargs}
    with pytest.raises(LoopmlError, match=message) as err:
        sink.fire(**args)
    assert "\n" not in str(err.value)
    assert sink.active() == []


def test_the_rules_fire_breaches_and_resolve_what_they_checked(sink: AlertSink) -> None:
    """:func:`apply`, the monitor's use of a sink: breaches fire, checked pairs no longer breached resolve."""
    drift = Breach("psi", "tx_amount", "PSI 0.31 > 0.2", 0.31, 0.2)
    slow = Breach("latency_p99", "p99", "p99 31 ms", 31.0, 10.0, "critical")
    stale = Breach("freshness", "customer", "3 days old")
    fired, resolved = apply(sink, [drift, slow, stale], {("psi", "tx_amount"), ("latency_p99", "p99"), ("ks", "tx_amount")})
    assert [(f["rule"], f["new"], f["count"]) for f in fired] == [
        ("psi", True, 1),
        ("latency_p99", True, 1),
        ("freshness", True, 1),
    ]
    assert resolved == []
    json.dumps(fired, allow_nan=False)
    # next run: the drift persists, latency is back under budget, freshness was not checked (not enough data)
    fired, resolved = apply(sink, [drift], {("psi", "tx_amount"), ("latency_p99", "p99")})
    assert [(f["rule"], f["new"], f["count"]) for f in fired] == [("psi", False, 2)]
    assert resolved == [{"rule": "latency_p99", "subject": "p99"}]
    assert open_pairs(sink) == {("psi", "tx_amount"), ("freshness", "customer")}
    fired, resolved = apply(sink, [], {("psi", "tx_amount"), ("freshness", "customer")})
    assert fired == [] and sorted(r["rule"] for r in resolved) == ["freshness", "psi"] and sink.active() == []


def test_handles_firing_at_once_share_one_alert(backend: Backend[AlertSink]) -> None:
    new_counts: list[int] = []

    def fire() -> None:
        handle = backend.open()  # one per thread, as separate processes would have
        new_counts.append(sum(handle.fire("psi", "tx_amount", "PSI high", value=0.3, threshold=0.2)[1] for _ in range(10)))

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(new_counts) == [0, 0, 0, 1]  # exactly one opened the alert
    alert, new = backend.open().fire("psi", "tx_amount", "PSI high")
    assert not new and alert.count == 41


def test_an_unreachable_sink_is_one_line_naming_it(backend: Backend[AlertSink]) -> None:
    sink = backend.unreachable()
    with pytest.raises(LoopmlError) as err:
        sink.fire("psi", "tx_amount", "PSI 0.31 > 0.2")
    assert backend.names in str(err.value) and "\n" not in str(err.value)
    reads: dict[str, Callable[[], int]] = {
        "active": lambda: len(sink.active()),
        "resolve": lambda: int(sink.resolve("psi", "tx_amount")),
    }
    for verb, call in reads.items():
        try:
            assert call() == 0, verb  # nothing can be open in a store that never opened
        except LoopmlError as failure:
            assert backend.names in str(failure) and "\n" not in str(failure), (verb, str(failure))
