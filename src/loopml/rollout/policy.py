"""Rollout policies: which model version answers each request, and the canary's guardrails.

One :class:`RolloutController` holds the policy (``rollout`` in
``loopml.yaml``, replaceable at run time through the admin API) and the
per-variant statistics the policies need. It is pure logic: the service asks
it where a request goes (:meth:`route`), reports each outcome
(:meth:`record`) and each label (:meth:`feedback`), and acts on the
:class:`Decision` it gets back (promote, roll back, alert).

Policies:

* ``single``: every request to the champion alias.
* ``ab``: a deterministic hash (BLAKE2b of the unit key's value, e.g. the
  ``customer_id``) into ``[0, 1)`` split by the variants' weights: the same
  unit always gets the same variant, in every worker process and after a restart.
* ``shadow``: the champion answers; the challenger scores the same request
  after the response is sent; both are logged under their own variant name.
* ``canary``: the challenger gets ``steps[i]`` of the units (the same hash, so
  a customer does not flip between models within a step); after
  ``min_requests`` challenger requests the guardrails are judged: error rate,
  p99 latency, PSI of the challenger's scores against the champion's over
  the same step (10 bins at the champion's score deciles, minus the PSI's
  expected value between two samples of one distribution, ``(B - 1)(1/n + 1/m)``,
  so a small step does not trip on sampling noise), and (once ``min_labels`` labels arrived for both) average
  precision relative to the champion. A breach rolls back at once (policy
  back to ``single``), records why and asks for an alert; a broken model is
  caught before the step ends, as soon as its errors alone exceed
  ``max_error_rate * min_requests``. Passing the last step promotes.
* ``bandit``: Thompson sampling over the variants on the binary reward of
  ``/v1/feedback`` (Beta(1 + rewards, 1 + misses) per arm), with an
  exploration floor: with probability ``K * min_share`` a uniformly random arm,
  so every arm keeps at least ``min_share`` of traffic.
* ``bluegreen``: all traffic to one side (``live``); :meth:`switch` flips it
  instantly and flips it back as fast.

State is per process: with ``--workers N`` each worker judges its own share
of the canary (each sees about 1/N of the traffic) and the first to decide
moves the registry alias, which the others pick up on their next reload.
The canary's counters are small bounded deques, so the request path pays a
hash and a few appends.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from loopml.spec.model import Rollout
from loopml.train.reference import DEFAULT_EPSILON, psi, reference_entry

CHAMPION = "champion"
CHALLENGER = "challenger"
_SAMPLES = 5_000  # scores / latencies kept per variant for the guardrails
_PENDING = 100_000  # request ids remembered for labels (bandit rewards, canary metric)
_PSI_BINS = 10


def unit_hash(value: object) -> float:
    """A stable number in ``[0, 1)`` for a unit key's value (same in every process and run)."""
    digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class Route:
    primary: str
    shadows: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """Something the service must act on: ``promote``, ``rollback`` or ``step`` (informational)."""

    action: str
    reason: str
    variant: str
    step: int
    at: datetime = field(default_factory=datetime.now)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "variant": self.variant,
            "step": self.step,
            "at": self.at.isoformat(),
        }


class _Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=_SAMPLES)
        self.scores: deque[float] = deque(maxlen=_SAMPLES)
        self.labelled: deque[tuple[float, float]] = deque(maxlen=_SAMPLES)
        self.rewards = 0
        self.misses = 0

    def to_json(self) -> dict[str, Any]:
        p99 = float(np.percentile(np.fromiter(self.latencies, float), 99)) if self.latencies else None
        return {
            "requests": self.requests,
            "errors": self.errors,
            "p99_ms": p99,
            "labelled": len(self.labelled),
            "rewards": self.rewards,
            "misses": self.misses,
        }


class RolloutController:
    def __init__(self, settings: Rollout, latency_budget_ms: float, seed: int | None = None) -> None:
        self.latency_budget_ms = latency_budget_ms
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self.history: list[Decision] = []
        self._apply(settings)

    # --- policy -----------------------------------------------------------
    def _apply(self, settings: Rollout) -> None:
        self.settings = settings
        self.step = 0
        self._stats: dict[str, _Stats] = {name: _Stats() for name in self.variants()}
        self._requests: OrderedDict[str, tuple[str, float]] = OrderedDict()  # request id -> (variant, score)

    def set_policy(self, settings: Rollout) -> None:
        with self._lock:
            self._apply(settings)

    @property
    def policy(self) -> str:
        return self.settings.policy

    def variants(self) -> dict[str, str]:
        """Variant name -> the registry alias it serves."""
        s = self.settings
        if s.policy in ("ab", "bandit"):
            return {name: v.alias for name, v in s.variants.items()}
        if s.policy == "single":
            return {CHAMPION: s.alias}
        return {CHAMPION: s.alias, CHALLENGER: s.challenger}

    def weights(self) -> dict[str, float]:
        """The live traffic split (the answer of ``GET /v1/models``)."""
        s = self.settings
        if s.policy == "ab":
            total = sum(v.weight for v in s.variants.values())
            return {name: v.weight / total for name, v in s.variants.items()}
        if s.policy == "bandit":
            return self._bandit_shares()
        if s.policy == "canary":
            share = s.canary.steps[self.step]
            return {CHAMPION: 1.0 - share, CHALLENGER: share}
        if s.policy == "bluegreen":
            return {CHAMPION: float(s.live == CHAMPION), CHALLENGER: float(s.live == CHALLENGER)}
        return {CHAMPION: 1.0}

    def _bandit_shares(self, draws: int = 2000) -> dict[str, float]:
        names = list(self.settings.variants)
        rng = np.random.default_rng(0)
        a = np.array([1 + self._stats[n].rewards for n in names], dtype=float)
        b = np.array([1 + self._stats[n].misses for n in names], dtype=float)
        wins = np.bincount(np.argmax(rng.beta(a, b, size=(draws, len(names))), axis=1), minlength=len(names)) / draws
        floor = self.settings.bandit.min_share
        shares = floor + (1 - floor * len(names)) * wins
        return {n: float(x) for n, x in zip(names, shares, strict=True)}

    # --- the request path -------------------------------------------------
    def route(self, unit: object) -> Route:
        s = self.settings
        if s.policy == "single":
            return Route(CHAMPION)
        if s.policy == "shadow":
            return Route(CHAMPION, (CHALLENGER,))
        if s.policy == "bluegreen":
            return Route(s.live)
        if s.policy == "canary":
            return Route(CHALLENGER if unit_hash(unit) < s.canary.steps[self.step] else CHAMPION)
        if s.policy == "ab":
            point = unit_hash(unit) * sum(v.weight for v in s.variants.values())
            for name, v in s.variants.items():
                point -= v.weight
                if point < 0:
                    return Route(name)
            return Route(next(reversed(s.variants)))
        return Route(self._thompson())

    def _thompson(self) -> str:
        names = list(self.settings.variants)
        with self._lock:
            if self._random.random() < self.settings.bandit.min_share * len(names):
                return self._random.choice(names)
            draws = [self._random.betavariate(1 + self._stats[n].rewards, 1 + self._stats[n].misses) for n in names]
        return names[int(np.argmax(draws))]

    def record(self, variant: str, request_id: str | None, latency_ms: float, score: float | None) -> Decision | None:
        """One scored (``score``) or failed (``None``) request of ``variant``; may return a canary decision."""
        with self._lock:
            stats = self._stats.get(variant)
            if stats is None:  # the policy changed while the request was in flight
                return None
            stats.requests += 1
            stats.latencies.append(latency_ms)
            if score is None:
                stats.errors += 1
            else:
                stats.scores.append(score)
                if request_id is not None:
                    self._requests[request_id] = (variant, score)
                    self._requests.move_to_end(request_id)
                    if len(self._requests) > _PENDING:
                        self._requests.popitem(last=False)
            if self.settings.policy == "canary" and variant == CHALLENGER:
                return self._judge_canary()
            return None

    def feedback(self, request_id: str, label: float) -> Decision | None:
        """A label arrived: a bandit reward, and a labelled score for the canary's online metric."""
        with self._lock:
            found = self._requests.pop(request_id, None)
            if found is None or found[0] not in self._stats:
                return None
            variant, score = found
            stats = self._stats[variant]
            if label > 0:
                stats.rewards += 1
            else:
                stats.misses += 1
            stats.labelled.append((score, float(label)))
            if self.settings.policy == "canary":
                return self._judge_canary()
            return None

    # --- the canary ------------------------------------------------------------
    def _breach(self) -> str | None:
        c = self.settings.canary
        new, old = self._stats[CHALLENGER], self._stats[CHAMPION]
        allowed_errors = c.max_error_rate * c.min_requests
        if new.errors > allowed_errors:
            return f"error rate: {new.errors} failed of {new.requests} challenger requests (limit {c.max_error_rate:.2%})"
        metric = self._metric_drop()  # labels arrive on their own schedule: judged whenever enough are in
        if metric is not None and metric > c.max_metric_drop:
            return f"average precision {metric:.1%} below the champion's on labelled requests (limit {c.max_metric_drop:.0%})"
        if new.requests - new.errors < c.min_requests:
            return None
        if new.errors / new.requests > c.max_error_rate:
            return f"error rate {new.errors / new.requests:.2%} over {new.requests} requests (limit {c.max_error_rate:.2%})"
        budget = c.max_p99_ms or self.latency_budget_ms
        p99 = float(np.percentile(np.fromiter(new.latencies, float), 99))
        if p99 > budget:
            return f"p99 latency {p99:.2f} ms over {budget:.2f} ms"
        if len(old.scores) >= c.min_requests:
            reference = reference_entry(np.fromiter(old.scores, float), _PSI_BINS)
            bins = len(reference["edges"]) + 1
            noise = (bins - 1) * (1 / len(new.scores) + 1 / len(old.scores))
            value = psi(reference, np.fromiter(new.scores, float), DEFAULT_EPSILON) - noise
            if value > c.max_score_psi:
                return f"score PSI {value:.3f} against the champion (limit {c.max_score_psi}, sampling noise removed)"
        return None

    def _metric_drop(self) -> float | None:
        c = self.settings.canary
        values = []
        for name in (CHALLENGER, CHAMPION):
            pairs = self._stats[name].labelled
            labels = np.array([y for _, y in pairs])
            if len(pairs) < c.min_labels or labels.min(initial=0) == labels.max(initial=0):
                return None
            values.append(float(average_precision_score(labels, [s for s, _ in pairs])))
        new, old = values
        return (old - new) / old if old > 0 else None

    def _judge_canary(self) -> Decision | None:
        breach = self._breach()
        if breach is not None:
            decision = Decision("rollback", breach, CHALLENGER, self.step)
            self.history.append(decision)
            self._apply(self.settings.model_copy(update={"policy": "single"}))
            return decision
        new = self._stats[CHALLENGER]
        if new.requests - new.errors < self.settings.canary.min_requests:
            return None
        share = self.settings.canary.steps[self.step]
        if self.step + 1 == len(self.settings.canary.steps):
            decision = Decision("promote", f"passed every step up to {share:.0%} of traffic", CHALLENGER, self.step)
            self.history.append(decision)
            self._apply(self.settings.model_copy(update={"policy": "single"}))
            return decision
        self.step += 1
        self._stats = {name: _Stats() for name in self._stats}  # each step is judged on its own traffic
        decision = Decision("step", f"{share:.0%} passed; now {self.settings.canary.steps[self.step]:.0%}", CHALLENGER, self.step)
        self.history.append(decision)
        return decision

    # --- blue-green and state ----------------------------------------------------
    def switch(self) -> str:
        """Blue-green: send all traffic to the other side; returns the side now live."""
        with self._lock:
            if self.settings.policy != "bluegreen":
                raise ValueError("switch needs rollout.policy bluegreen")
            other = CHALLENGER if self.settings.live == CHAMPION else CHAMPION
            self.settings = self.settings.model_copy(update={"live": other})
            return other

    def state(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "policy": self.settings.policy,
                "variants": self.variants(),
                "weights": self.weights(),
                "stats": {name: s.to_json() for name, s in self._stats.items()},
                "history": [d.to_json() for d in self.history[-20:]],
            }
        if self.settings.policy == "canary":
            out["step"] = self.step
            out["steps"] = list(self.settings.canary.steps)
        return out
