"""The prediction service: the request path, independent of HTTP.

validate entities -> read online features and compute request-time features
(the feature store's :class:`FeatureAssembler`, the same transform code as
offline) -> the model input in the model's signature order: the assembled
columns plus the categorical encodings of the request's string features
(:func:`~loopml.features.encodings.apply_encodings` with the state fitted when
that version was trained: the same code as training; an unseen category or a
null gets the documented value, never an error) -> score with the model the rollout policy picks for each request
(:mod:`loopml.rollout.policy`) -> hand the record, with the model input (and
the raw string request features) as logged features, to the async logger.
A prediction is logged at its event time (the request's timestamp feature,
e.g. ``tx_datetime``, read as UTC and converted to the log's clock, naive local
time) when the request carries one, else at the time it was served: live, the two agree; a replay or backfill is then
monitored on the timeline of its events.
Shadow variants score the same assembled features on a background thread
after the answer is computed; the response never waits for them.

The live models are immutable :class:`LiveModel` objects in a dict swapped by
a single reference assignment, so a hot swap (``reload``, run by the admin
endpoint and every ``serving.reload_seconds`` by the app) never exposes a
half-loaded model to a request in flight. The rollout's decisions (canary
step, promotion, rollback) are acted on here: the registry alias moves, the
event is appended to ``<state>/rollout/events.jsonl``, and rollbacks and
failing models raise alerts.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loopml.errors import LoopmlError
from loopml.features.online.base import OnlineStoreUnavailable
from loopml.features.vector import AssembledBatch, FeatureAssembler, RequestFeatureError
from loopml.monitor.rules import AlertSink
from loopml.predlog.records import LoggedPrediction
from loopml.predlog.writer import AsyncLogger
from loopml.registry.base import Registry
from loopml.rollout.policy import CHAMPION, Decision, RolloutController
from loopml.serve.errors import FeaturesUnavailable, ModelFailure, RequestError
from loopml.serve.model_input import ModelInput, load_version, prediction_record
from loopml.serve.schemas import Prediction, PredictRequest
from loopml.spec.model import Rollout, Spec
from loopml.train.artifact import Predictor


@dataclass(frozen=True)
class LiveModel:
    version: int
    predictor: Predictor
    variant: str
    inputs: ModelInput


_MAX_SHADOW_JOBS = 64  # shadow batches waiting to be scored; beyond that they are dropped and counted


class PredictionService:
    def __init__(
        self,
        spec: Spec,
        assembler: FeatureAssembler,
        registry: Registry,
        logger: AsyncLogger | None,
        alias: str | None = None,
        alerts: AlertSink | None = None,
        rollout_dir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.assembler = assembler
        self.registry = registry
        self.logger = logger
        self.alerts = alerts
        self.rollout_dir = rollout_dir
        settings = spec.rollout if alias is None else spec.rollout.model_copy(update={"alias": alias})
        self.rollout = RolloutController(self._saved_policy() or settings, spec.serving.latency_budget_ms)
        self.live_models: dict[str, LiveModel] = {}
        view_entities = {view.entity for view in spec.features.views.values()}
        self.entity_keys = {spec.entities[name].key: name for name in view_entities}
        #: entity key -> its column type in the views' sources, where they agree (``int``: "abc" is not a key)
        self.entity_types: dict[str, str] = {}
        for view in spec.features.views.values():
            key = spec.entities[view.entity].key
            column = spec.sources[view.source].columns.get(key) if view.source in spec.sources else None
            if column is not None:
                kind = self.entity_types.setdefault(key, column.type)
                if kind != column.type:
                    self.entity_types[key] = "mixed"
        self.unit_key = spec.rollout.unit or (sorted(self.entity_keys)[0] if self.entity_keys else None)
        self.shadow_dropped = 0
        self._shadow_jobs = 0
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopml-shadow")
        self._reload_lock = threading.Lock()

    @property
    def alias(self) -> str:
        return self.rollout.settings.alias

    # --- models ------------------------------------------------------------------
    def _load(self, name: str, version_number: int) -> LiveModel:
        for model in self.live_models.values():
            if model.version == version_number:
                return LiveModel(version=model.version, predictor=model.predictor, variant=name, inputs=model.inputs)
        predictor, inputs = load_version(self.spec, self.registry, version_number, self.assembler.columns)
        return LiveModel(version=version_number, predictor=predictor, variant=name, inputs=inputs)

    def reload(self) -> LiveModel | None:
        """Load the versions the rollout's aliases point at; keep serving the old ones until the new ones are ready."""
        with self._reload_lock:
            models: dict[str, LiveModel] = {}
            for name, alias in self.rollout.variants().items():
                version = self.registry.alias(alias)
                if version is None:
                    continue
                current = self.live_models.get(name)
                models[name] = (
                    current if current is not None and current.version == version.version else self._load(name, version.version)
                )
            self.live_models = models
        return self.live

    @property
    def live(self) -> LiveModel | None:
        """The champion (or, for A/B and bandit policies, the first variant with a model)."""
        models = self.live_models
        return models.get(CHAMPION) or next(iter(models.values()), None)

    @property
    def ready(self) -> bool:
        return self.live is not None

    # --- the request path --------------------------------------------------------
    def _check_entities(self, index: str, req: PredictRequest) -> list[tuple[str, str]]:
        problems = []
        for key in self.entity_keys:
            if key not in req.entities:
                problems.append((f"{index}entities.{key}", "missing entity key"))
        for key in req.entities:
            if key not in self.entity_keys:
                known = ", ".join(sorted(self.entity_keys)) or "none"
                problems.append((f"{index}entities.{key}", f"unknown entity key (expected: {known})"))
        return problems

    def _route(self, requests: Sequence[PredictRequest], models: dict[str, LiveModel]) -> tuple[list[str], set[str]]:
        """Each request's variant (a variant without a model falls back to the champion) and the shadow variants."""
        fallback = CHAMPION if CHAMPION in models else next(iter(models))
        variants: list[str] = []
        shadows: set[str] = set()
        for req in requests:
            route = self.rollout.route(req.entities.get(self.unit_key) if self.unit_key else req.request_id)
            variants.append(route.primary if route.primary in models else fallback)
            shadows.update(v for v in route.shadows if v in models)
        return variants, shadows

    def _score(
        self, model: LiveModel, assembled: AssembledBatch, rows: list[int]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(model input, scores) of some rows of an assembled batch; ModelFailure if the model raises or returns NaN."""
        matrix = model.inputs.matrix(assembled)
        if len(rows) != matrix.shape[0]:
            matrix = matrix[rows]
        try:
            scores = np.asarray(model.predictor.predict(matrix), dtype=float)
        except Exception as exc:
            raise ModelFailure(f"model version {model.version} failed: {type(exc).__name__}: {exc}") from None
        if scores.shape[0] != len(rows) or not np.all(np.isfinite(scores)):
            raise ModelFailure(f"model version {model.version} returned a non-finite score")
        return matrix, scores

    def predict(
        self, requests: Sequence[PredictRequest], explain: bool = False, batch: bool = False, retried: bool = False
    ) -> list[Prediction]:
        """Score the requests together. ``retried``: a failing model is not recorded (nor alerted) here, because the
        caller scores each request again alone (the micro-batcher), and those attempts record the failures."""
        models = self.live_models
        if not models:
            raise ModelFailure("no model is loaded yet (train and promote one, then POST /v1/admin/reload)")
        started = time.perf_counter()
        problems: list[tuple[str, str]] = []
        for i, req in enumerate(requests):
            problems += self._check_entities(f"instances.{i}." if batch else "", req)
        if problems:
            raise RequestError(problems)
        try:
            assembled = self.assembler.vectors([(dict(r.entities), dict(r.features)) for r in requests])
        except OnlineStoreUnavailable as exc:
            raise FeaturesUnavailable(str(exc)) from None
        except RequestFeatureError as exc:  # every bad field of every request, named as the client sent it
            where = [f"instances.{0 if i is None else i}." if batch else "" for i, _, _ in exc.problems]
            named = [(w + field, message) for w, (_, field, message) in zip(where, exc.problems, strict=True)]
            raise RequestError(named) from None
        except LoopmlError as exc:
            raise RequestError([("features", str(exc))]) from None
        request_ids = [req.request_id or uuid.uuid4().hex for req in requests]
        variants, shadows = self._route(requests, models)
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(variants):
            groups.setdefault(name, []).append(i)
        scores = np.empty(len(requests))
        matrices: dict[str, npt.NDArray[np.float64]] = {}
        for name, rows in groups.items():
            model = models[name]
            try:
                matrices[name], scores[rows] = self._score(model, assembled, rows)
            except ModelFailure as exc:
                if not retried:
                    latency = (time.perf_counter() - started) * 1000.0
                    self._failed(model, str(exc), latency, len(rows))
                raise
        latency_ms = (time.perf_counter() - started) * 1000.0 / max(len(requests), 1)
        contributions: dict[str, npt.NDArray[np.float64]] = {}
        if explain:
            for name, matrix in matrices.items():
                try:
                    contributions[name] = models[name].predictor.contributions(matrix)
                except LoopmlError as exc:  # e.g. a scikit-learn model by import path has no per-row contributions
                    raise RequestError(
                        [("query.explain", f"model version {models[name].version} cannot explain: {exc}")]
                    ) from None
        now = datetime.now()
        position = {name: {row: k for k, row in enumerate(rows)} for name, rows in groups.items()}
        out = []
        records: list[LoggedPrediction] = []
        for i, req in enumerate(requests):
            name = variants[i]
            model = models[name]
            k = position[name][i]
            explanation = None
            if name in contributions:
                names = model.predictor.feature_names
                row = contributions[name][k]
                explanation = {n: float(row[j]) for j, n in enumerate(names)}
                explanation["bias"] = float(row[-1])
            out.append(
                Prediction(
                    request_id=request_ids[i],
                    score=float(scores[i]),
                    model_version=model.version,
                    variant=name,
                    missing_entities=assembled.missing_entities[i],
                    fallback=True if assembled.fallback else None,
                    explanation=explanation,
                )
            )
            if self.logger is not None:
                row = matrices[name][k]
                records.append(self._record(req, request_ids[i], now, model, row, assembled, i, float(scores[i]), latency_ms))
            self._act(self.rollout.record(name, request_ids[i], latency_ms, float(scores[i])))
        if self.logger is not None:
            self.logger.submit_many(records)  # journaled before the answers are sent: a killed server loses none
        for name in shadows:
            self._submit_shadow(models[name], assembled, requests, request_ids, now)
        return out

    def _record(
        self,
        req: PredictRequest,
        request_id: str,
        now: datetime,
        model: LiveModel,
        inputs: npt.NDArray[np.float64],
        assembled: AssembledBatch,
        i: int,
        score: float,
        latency_ms: float,
    ) -> LoggedPrediction:
        return prediction_record(
            request_id,
            dict(req.entities),
            model.predictor.feature_names,
            inputs,
            assembled,
            i,
            now,
            score,
            model.version,
            model.variant,
            latency_ms,
        )

    def _submit_shadow(
        self, model: LiveModel, assembled: AssembledBatch, requests: Sequence[PredictRequest], ids: list[str], now: datetime
    ) -> None:
        if self._shadow_jobs >= _MAX_SHADOW_JOBS:
            self.shadow_dropped += len(requests)
            return
        self._shadow_jobs += 1

        def job() -> None:
            started = time.perf_counter()
            try:
                matrix, scores = self._score(model, assembled, list(range(len(requests))))
            except ModelFailure as exc:
                self._failed(model, str(exc), (time.perf_counter() - started) * 1000.0, len(requests))
                return
            finally:
                self._shadow_jobs -= 1
            latency_ms = (time.perf_counter() - started) * 1000.0 / max(len(requests), 1)
            records: list[LoggedPrediction] = []
            for i, req in enumerate(requests):
                records.append(self._record(req, ids[i], now, model, matrix[i], assembled, i, float(scores[i]), latency_ms))
                self.rollout.record(model.variant, None, latency_ms, float(scores[i]))
            if self.logger is not None:
                self.logger.submit_many(records)

        self._shadow_pool.submit(job)

    def _failed(self, model: LiveModel, reason: str, latency_ms: float, requests: int = 1) -> None:
        """``requests`` requests of the model's variant failed: alert, and count each as an error for the rollout."""
        if self.alerts is not None:
            self.alerts.fire("model_failure", f"version {model.version}", reason, severity="critical")
        for _ in range(requests):
            self._act(self.rollout.record(model.variant, None, latency_ms, None))

    def feedback(self, request_id: str, label: float) -> None:
        self._act(self.rollout.feedback(request_id, label))

    # --- rollout decisions and changes --------------------------------------------
    def _act(self, decision: Decision | None) -> None:
        if decision is None:
            return
        challenger = self.live_models.get(decision.variant)
        version = challenger.version if challenger else None
        record = {**decision.to_json(), "version": version}
        if decision.action == "promote" and version is not None:
            self.registry.set_alias(self.alias, version, f"canary: {decision.reason}")
        elif decision.action == "rollback" and self.alerts is not None:
            message = f"canary of version {version} rolled back: {decision.reason}"
            self.alerts.fire("canary_rollback", f"version {version}", message, severity="critical")
        if decision.action in ("promote", "rollback"):
            self._save_policy(self.rollout.settings)
            self.reload()
        self.record_event(record)

    def set_policy(self, settings: Rollout) -> None:
        """Change the rollout at run time (admin API): load the variants' models first, then switch."""
        previous = self.rollout.settings
        self.rollout.set_policy(settings)
        try:
            self.reload()
        except LoopmlError:
            self.rollout.set_policy(previous)
            raise
        missing = [f"{name} (alias {alias})" for name, alias in self.rollout.variants().items() if name not in self.live_models]
        self._save_policy(settings)
        self.record_event({"action": "policy", "policy": settings.policy, "missing": missing, "at": datetime.now().isoformat()})

    def promote(self, version: int, reason: str) -> int:
        """Point the champion alias at ``version`` now and serve it alone (policy ``single``)."""
        self.registry.set_alias(self.alias, version, reason)
        settings = self.rollout.settings.model_copy(update={"policy": "single"})
        self.rollout.set_policy(settings)
        self._save_policy(settings)
        self.reload()
        self.record_event({"action": "promote", "reason": reason, "version": version, "at": datetime.now().isoformat()})
        return version

    def rollback(self, previous: bool = False) -> int | None:
        """Stop any experiment (policy ``single``); with ``previous``, also move the champion alias back one version."""
        settings = self.rollout.settings.model_copy(update={"policy": "single"})
        self.rollout.set_policy(settings)
        self._save_policy(settings)
        if previous:
            self.registry.rollback(self.alias)
        live = self.reload()
        version = live.version if live else None
        self.record_event({"action": "rollback", "previous": previous, "version": version, "at": datetime.now().isoformat()})
        return version

    def record_event(self, event: dict[str, Any]) -> None:
        if self.rollout_dir is None:
            return
        folder = self.rollout_dir
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "events.jsonl").open("a") as fh:
            fh.write(json.dumps(event) + "\n")

    def _save_policy(self, settings: Rollout) -> None:
        if self.rollout_dir is None:
            return
        folder = self.rollout_dir
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".policy.json.tmp"
        tmp.write_text(
            json.dumps({"spec": self.spec.rollout.model_dump(mode="json"), "policy": settings.model_dump(mode="json")})
        )
        tmp.replace(folder / "policy.json")

    def _saved_policy(self) -> Rollout | None:
        """The policy last set at run time (admin API, a canary's end): it outlives a restart until loopml.yaml's changes."""
        path = self.rollout_dir / "policy.json" if self.rollout_dir else None
        if path is None or not path.exists():
            return None
        saved = json.loads(path.read_text())
        if saved.get("spec") != self.spec.rollout.model_dump(mode="json"):
            return None
        return Rollout.model_validate(saved["policy"])

    def events(self) -> list[dict[str, Any]]:
        path = self.rollout_dir / "events.jsonl" if self.rollout_dir else None
        if path is None or not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        self._shadow_pool.shutdown(wait=True)

    def models(self) -> dict[str, Any]:
        versions = [v.to_json() for v in self.registry.list()]
        live = self.live_models
        weights = self.rollout.weights()
        split = {name: {"version": m.version, "weight": weights.get(name, 0.0)} for name, m in live.items()}
        champion = self.live
        return {
            "versions": versions,
            "traffic": split,
            "policy": self.rollout.policy,
            "live_version": champion.version if champion else None,
        }


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
