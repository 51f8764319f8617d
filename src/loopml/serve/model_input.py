"""A registered version's model input (its signature's column order, with the encodings it was trained with) and the
prediction log's record of a scored row: shared by the online service, batch scoring and the stream scorer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from loopml.errors import LoopmlError
from loopml.features.encodings import EncodingState, apply_encodings
from loopml.features.online.base import datetime_from_us
from loopml.features.vector import AssembledBatch
from loopml.predlog.records import LoggedPrediction
from loopml.registry.base import Registry
from loopml.spec.model import Spec
from loopml.train.artifact import Predictor


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


def _local(utc: datetime) -> datetime:
    """Naive UTC -> naive local time, the prediction log's clock (``loopml.predlog``)."""
    return utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)


def prediction_record(
    request_id: str,
    entities: dict[str, Any],
    feature_names: Sequence[str],
    inputs: npt.NDArray[np.float64],
    assembled: AssembledBatch,
    i: int,
    now: datetime,
    score: float,
    version: int,
    variant: str,
    latency_ms: float,
) -> LoggedPrediction:
    """The prediction log's record of row ``i`` of a scored batch (online service and stream scorer).

    Features: the model's inputs by name, plus the string request features; time: the request's
    event time when it has one (so replays and late traffic land in their own window), else ``now``.
    """
    values: dict[str, Any] = {n: float(v) for n, v in zip(feature_names, inputs, strict=False)}
    for name, column in assembled.strings.items():
        values.setdefault(name, column[i])
    event = assembled.event_us[i] if assembled.event_us else None
    return LoggedPrediction(
        request_id=request_id,
        ts=now if event is None else _local(datetime_from_us(event)),
        entities=entities,
        features=values,
        score=score,
        model_version=version,
        variant=variant,
        latency_ms=latency_ms,
    )


def load_version(spec: Spec, registry: Registry, version: int, columns: list[str]) -> tuple[Predictor, ModelInput]:
    """A registered version's predictor (hash-checked by the registry) and its input builder over assembled ``columns``,
    with the categorical encodings fitted when that version was trained (online service, batch and stream scoring)."""
    record = registry.get(version)
    predictor = registry.load_predictor(record.version)
    state = EncodingState()
    if any("encoding" in column for column in record.signature):
        where = f"model version {record.version}"
        state = EncodingState.from_reference(registry.reference_stats(record.version), where)
        strings = {name for name, rf in spec.features.request.items() if rf.type == "string"}
        lacking = [name for name in state.inputs if name not in strings]
        if lacking:
            raise LoopmlError(f"{where} encodes request feature(s) {', '.join(lacking)}; declare them under features.request")
    return predictor, ModelInput(predictor.feature_names, columns, state, record.version)
