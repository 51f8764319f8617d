"""The prediction service: the request path, independent of HTTP.

validate entities -> read online features and compute request-time features
(the feature store's :class:`FeatureAssembler`, the same transform code as
offline) -> score with the live model -> hand the record to the async logger.

The live model is one immutable :class:`LiveModel` object swapped by a single
reference assignment, so a hot swap (``reload``) never exposes a half-loaded
model to a request in flight.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from loopml.errors import LoopmlError
from loopml.features.vector import FeatureAssembler
from loopml.monitor.predlog import LoggedPrediction
from loopml.registry.base import Registry
from loopml.serve.logger import AsyncLogger
from loopml.serve.schemas import Prediction, PredictRequest
from loopml.spec.model import Spec
from loopml.train.artifact import Predictor


class RequestError(LoopmlError):
    """Bad input from a client: becomes a 4xx naming each field."""

    def __init__(self, details: list[tuple[str, str]]) -> None:
        self.details = details
        super().__init__("; ".join(f"{f}: {m}" for f, m in details))


class ModelFailure(LoopmlError):
    """The model raised or returned a non-finite score: becomes a 503."""


@dataclass(frozen=True)
class LiveModel:
    version: int
    predictor: Predictor
    variant: str


class PredictionService:
    def __init__(
        self,
        spec: Spec,
        assembler: FeatureAssembler,
        registry: Registry,
        logger: AsyncLogger | None,
        alias: str = "champion",
    ) -> None:
        self.spec = spec
        self.assembler = assembler
        self.registry = registry
        self.logger = logger
        self.alias = alias
        self.live: LiveModel | None = None
        view_entities = {view.entity for view in spec.features.views.values()}
        self.entity_keys = {spec.entities[name].key: name for name in view_entities}

    def reload(self) -> LiveModel | None:
        """Load the model the alias points at; keep serving the old one until the new one is ready."""
        version = self.registry.alias(self.alias)
        if version is None:
            return self.live
        if self.live is not None and self.live.version == version.version:
            return self.live
        predictor = self.registry.load_predictor(version.version)
        self.live = LiveModel(version=version.version, predictor=predictor, variant=self.alias)
        return self.live

    @property
    def ready(self) -> bool:
        return self.live is not None

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

    def predict(self, requests: Sequence[PredictRequest], explain: bool = False, batch: bool = False) -> list[Prediction]:
        live = self.live
        if live is None:
            raise ModelFailure("no model is loaded yet (train and promote one, then POST /v1/admin/reload)")
        started = time.perf_counter()
        problems: list[tuple[str, str]] = []
        for i, req in enumerate(requests):
            problems += self._check_entities(f"instances.{i}." if batch else "", req)
        if problems:
            raise RequestError(problems)
        try:
            assembled = self.assembler.vectors([(dict(r.entities), dict(r.features)) for r in requests])
        except LoopmlError as exc:
            field = getattr(exc, "field", "features")
            raise RequestError([(str(field), str(exc))]) from None
        matrix = assembled.matrix
        try:
            scores = np.asarray(live.predictor.predict(matrix), dtype=float)
        except Exception as exc:
            raise ModelFailure(f"model version {live.version} failed: {type(exc).__name__}: {exc}") from None
        if scores.shape[0] != len(requests) or not np.all(np.isfinite(scores)):
            raise ModelFailure(f"model version {live.version} returned a non-finite score")
        contributions = live.predictor.contributions(matrix) if explain else None
        latency_ms = (time.perf_counter() - started) * 1000.0 / max(len(requests), 1)
        now = datetime.now()
        names = live.predictor.feature_names
        out = []
        for i, req in enumerate(requests):
            request_id = req.request_id or uuid.uuid4().hex
            explanation = None
            if contributions is not None:
                explanation = {name: float(contributions[i, j]) for j, name in enumerate(names)}
                explanation["bias"] = float(contributions[i, -1])
            out.append(
                Prediction(
                    request_id=request_id,
                    score=float(scores[i]),
                    model_version=live.version,
                    variant=live.variant,
                    missing_entities=assembled.missing_entities[i],
                    explanation=explanation,
                )
            )
            if self.logger is not None:
                values = {n: float(v) for n, v in zip(names, matrix[i], strict=False)}
                self.logger.submit(
                    LoggedPrediction(
                        request_id=request_id,
                        ts=now,
                        entities=dict(req.entities),
                        features=values,
                        score=float(scores[i]),
                        model_version=live.version,
                        variant=live.variant,
                        latency_ms=latency_ms,
                    )
                )
        return out

    def models(self) -> dict[str, Any]:
        versions = [v.to_json() for v in self.registry.list()]
        live = self.live
        split = {live.variant: {"version": live.version, "weight": 1.0}} if live else {}
        return {"versions": versions, "traffic": split, "live_version": live.version if live else None}


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
