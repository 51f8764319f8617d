"""Request and response bodies of the HTTP API (see shared contract).

Unknown fields are rejected (``extra="forbid"``) so that a typo in a client
is a 422 naming the field, not a silently ignored value.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

EntityValue = Annotated[str, Field(max_length=200)] | int
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FeatureValue = bool | int | FiniteFloat | Annotated[str, Field(max_length=1000)] | None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entities: dict[str, EntityValue] = Field(description="entity key column -> value, e.g. customer_id")
    features: dict[str, FeatureValue] = Field(default_factory=dict, description="request-time features")
    request_id: str | None = Field(default=None, max_length=200)


class PredictBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[PredictRequest] = Field(max_length=10_000)


class Prediction(BaseModel):
    request_id: str
    score: float
    model_version: int
    variant: str
    missing_entities: list[str] = Field(default_factory=list)
    fallback: bool | None = Field(
        default=None, description="true when the online store was unreachable and features came from the local cache"
    )
    explanation: dict[str, float] | None = None


class PredictBatchResponse(BaseModel):
    predictions: list[Prediction]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=200)
    label: bool | int | FiniteFloat


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    error: str
    details: list[ErrorDetail] = Field(default_factory=list)


def error_body(message: str, details: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    return ErrorResponse(error=message, details=[ErrorDetail(field=f, message=m) for f, m in details or []]).model_dump()
