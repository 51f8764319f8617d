"""The prediction service: the request path, independent of HTTP.

validate entities -> read online features and compute request-time features
(the feature store's :class:`FeatureAssembler`, the same transform code as
offline) -> the model input in the model's signature order: the assembled
columns plus the categorical encodings of the request's string features
(:func:`~loopml.features.encodings.apply_encodings` with the state fitted when
that version was trained: the same code as training; an unseen category or a
null gets the documented value, never an error) -> score with the live model
-> hand the record, with the model input as logged features, to the async logger.

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
import numpy.typing as npt

from loopml.errors import LoopmlError
from loopml.features.encodings import EncodingState, apply_encodings
from loopml.features.online import OnlineStoreUnavailable
from loopml.features.vector import AssembledBatch, FeatureAssembler
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


class FeaturesUnavailable(ModelFailure):
    """The online store cannot be reached (``storage.online_unavailable: fail``): a 503 naming it."""


class ModelInput:
    """Builds one model version's input matrix from an assembled batch, in the model's column order."""

    def __init__(self, names: list[str], assembled_columns: list[str], state: EncodingState, version: int) -> None:
        self.names = list(names)
        self.state = state
        self._positions = {name: j for j, name in enumerate(assembled_columns)}
        encoded = set(state.columns)
        missing = [n for n in self.names if n not in encoded and n not in self._positions]
        if missing:
            raise LoopmlError(
                f"model version {version} needs feature(s) {', '.join(missing[:5])} that features in loopml.yaml do not produce"
            )
        self._identity = not state.encodings and self.names == list(assembled_columns)

    def matrix(self, assembled: AssembledBatch) -> npt.NDArray[np.float64]:
        if self._identity:
            return assembled.matrix
        encoded = apply_encodings(self.state, assembled.strings) if self.state.encodings else {}
        out = np.empty((assembled.matrix.shape[0], len(self.names)), dtype=np.float64)
        for j, name in enumerate(self.names):
            out[:, j] = encoded[name] if name in encoded else assembled.matrix[:, self._positions[name]]
        return out


@dataclass(frozen=True)
class LiveModel:
    version: int
    predictor: Predictor
    variant: str
    inputs: ModelInput


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
        state = EncodingState()
        if any("encoding" in column for column in version.signature):
            where = f"model version {version.version}"
            state = EncodingState.from_reference(self.registry.reference_stats(version.version), where)
            strings = {name for name, rf in self.spec.features.request.items() if rf.type == "string"}
            lacking = [name for name in state.inputs if name not in strings]
            if lacking:
                raise LoopmlError(f"{where} encodes request feature(s) {', '.join(lacking)}; declare them under features.request")
        inputs = ModelInput(predictor.feature_names, self.assembler.columns, state, version.version)
        self.live = LiveModel(version=version.version, predictor=predictor, variant=self.alias, inputs=inputs)
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
        except OnlineStoreUnavailable as exc:
            raise FeaturesUnavailable(str(exc)) from None
        except LoopmlError as exc:
            field = getattr(exc, "field", "features")
            raise RequestError([(str(field), str(exc))]) from None
        matrix = live.inputs.matrix(assembled)
        try:
            scores = np.asarray(live.predictor.predict(matrix), dtype=float)
        except Exception as exc:
            raise ModelFailure(f"model version {live.version} failed: {type(exc).__name__}: {exc}") from None
        if scores.shape[0] != len(requests) or not np.all(np.isfinite(scores)):
            raise ModelFailure(f"model version {live.version} returned a non-finite score")
        contributions = None
        if explain:
            try:
                contributions = live.predictor.contributions(matrix)
            except LoopmlError as exc:  # e.g. a scikit-learn model by import path has no per-row contributions
                raise RequestError([("query.explain", f"model version {live.version} cannot explain: {exc}")]) from None
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
                    fallback=True if assembled.fallback else None,
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
