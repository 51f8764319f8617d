"""Request and response bodies of the HTTP API (see shared contract), and the OpenAPI document.

Unknown fields are rejected (``extra="forbid"``) so that a typo in a client
is a 422 naming the field, not a silently ignored value. Text must be valid
Unicode: a JSON ``\\ud800`` escape (a lone surrogate) parses in Python but
cannot be written back as UTF-8 (response, prediction log), so it is a 422
here rather than a 500 or a dropped log batch later. JSON ``NaN``,
``Infinity`` and numbers past the float range (``1e400``) are refused before
validation (:mod:`loopml.serve.guard`); :data:`FiniteFloat` is the second line.

The bodies are generic (any entity key, any feature name); what one project
accepts is narrower. :class:`RequestShape` holds that project's entity keys
(with their column types), request features and batch limit: it checks a
request's entity keys (missing, unknown, or a value that cannot be a key of
that type: ``"abc"`` for an integer key is a 422, not an unknown customer) and
feature names, and when one of those is wrong it also parses every feature
value, so that one 422 names every bad field. ``entities`` may be left out
when the project has no entity (it is required when it has some). It also
rewrites the generated OpenAPI
document (:func:`install_openapi`) so that ``/openapi.json`` describes the
project's own request body and every error status the server can answer
(400 unparsable, 413 too large, 422 invalid, all with :class:`ErrorResponse`).
FastAPI has no per-app schema hook for a model shared by several apps, hence
the post-processing of its document.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from loopml.features.vector import RequestFeatureError, parse_request_feature
from loopml.spec.model import RequestFeature

if TYPE_CHECKING:
    from fastapi import FastAPI

#: longest field path and message echoed back in an error body (they may come from client keys)
_MAX_FIELD_CHARS = 200
_MAX_MESSAGE_CHARS = 500
#: most details listed in one error body; the rest are counted in a last detail
MAX_DETAILS = 100


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode (lone surrogate at position {exc.start})") from None
    return value


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("an entity key is a string or an integer, not a boolean")
    return value


Text = Annotated[str, AfterValidator(_unicode)]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_unicode)]
EntityValue = Annotated[str, Field(max_length=200), AfterValidator(_unicode)] | Annotated[int, BeforeValidator(_not_bool)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FeatureValue = bool | int | FiniteFloat | Annotated[str, Field(max_length=1000), AfterValidator(_unicode)] | None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: required when the project has entities (:meth:`RequestShape.check`), else it may be left out
    entities: dict[Name, EntityValue] = Field(default_factory=dict, description="entity key column -> value, e.g. customer_id")
    features: dict[Name, FeatureValue] = Field(default_factory=dict, description="request-time features")
    request_id: Annotated[str, Field(max_length=200), AfterValidator(_unicode)] | None = None


class PredictBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: the hard ceiling; ``serving.max_batch`` (checked by :meth:`RequestShape.check`) is usually lower
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

    request_id: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_unicode)]
    label: bool | int | FiniteFloat


class FeedbackBatchRequest(BaseModel):
    """Many labels at once (a chargeback file): ``{"items": [{"request_id", "label"}...]}``."""

    model_config = ConfigDict(extra="forbid")

    items: list[FeedbackRequest] = Field(max_length=100_000)


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    error: str
    details: list[ErrorDetail] = Field(default_factory=list)


def _printable(text: str, limit: int) -> str:
    """``text`` safe to encode as UTF-8 (lone surrogates escaped) and at most ``limit`` characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_body(message: str, details: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The JSON error body: client-supplied names are escaped and shortened, at most :data:`MAX_DETAILS` details."""
    items = list(details or [])
    shown = [
        ErrorDetail(field=_printable(f, _MAX_FIELD_CHARS), message=_printable(m, _MAX_MESSAGE_CHARS))
        for f, m in items[:MAX_DETAILS]
    ]
    if len(items) > MAX_DETAILS:
        shown.append(ErrorDetail(field="...", message=f"and {len(items) - MAX_DETAILS} more problem(s)"))
    return ErrorResponse(error=_printable(message, _MAX_MESSAGE_CHARS), details=shown).model_dump()


# -- one project's request shape ---------------------------------------------------------------------------------

_FEATURE_TYPES: dict[str, dict[str, Any]] = {
    "float": {"type": "number"},
    "int": {"type": "integer"},
    "bool": {"type": "boolean"},
    "string": {"type": "string", "maxLength": 1000},
    "timestamp": {"type": "string", "format": "date-time"},
}
_ERROR_REF = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
_BODY_ERRORS = {
    "400": "the body is not JSON (syntax, encoding, nesting)",
    "413": "the body is larger than serving.max_body_bytes",
    "422": "invalid request: each bad field is named in details",
}


_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_INSTANCE = re.compile(r"instances\.[0-9]+\.")


@dataclass(frozen=True)
class RequestShape:
    """What one project's predict bodies may hold: entity keys, request features, batch size."""

    entity_keys: tuple[str, ...]
    features: Mapping[str, RequestFeature]
    max_batch: int
    #: entity key -> the type of its column in its views' source (``int``: a string value must be an integer's digits)
    entity_types: Mapping[str, str] = field(default_factory=dict)

    def check(self, requests: Sequence[PredictRequest], batch: bool = False) -> list[tuple[str, str]]:
        """(field, message) for an oversized batch, each missing, unknown or ill-typed entity key and each feature
        name the project does not declare; when there is one, also for each missing or unparsable feature value."""
        problems: list[tuple[str, str]] = []
        if batch and len(requests) > self.max_batch:
            limit = f"at most {self.max_batch} instances per batch (serving.max_batch)"
            problems.append(("instances", f"{limit}, got {len(requests)}"))
        prefixes = [f"instances.{i}." if batch else "" for i in range(len(requests))]
        found = [
            self._names(prefix, req.entities if "entities" in req.model_fields_set else None, req.features)
            for prefix, req in zip(prefixes, requests, strict=True)
        ]
        if not problems and not any(found):
            return []  # the feature values are parsed once, while assembling
        for prefix, req, names in zip(prefixes, requests, found, strict=True):
            problems += names + self._values(prefix, req.features)
        return problems

    def check_raw(self, body: Any, batch: bool = False) -> list[tuple[str, str]]:
        """:meth:`check` of a body that did not validate (its parsed JSON), as far as its shape allows: the fields
        pydantic did not name are then named in the same answer (the caller drops those it already names)."""
        if batch:
            instances = body.get("instances") if isinstance(body, dict) else None
            items = list(enumerate(instances)) if isinstance(instances, list) else []
        else:
            items = [(0, body)]
        problems: list[tuple[str, str]] = []
        for i, item in items:
            if not isinstance(item, dict):
                continue
            prefix = f"instances.{i}." if batch else ""
            entities, features = item.get("entities"), item.get("features", {})
            # values pydantic refused as objects or arrays are named by it already (and are not parsed again here)
            features = {k: v for k, v in features.items() if not isinstance(v, dict | list)} if isinstance(features, dict) else {}
            entities = None if "entities" not in item else entities if isinstance(entities, dict) else {}
            problems += self._names(prefix, entities, features) + self._values(prefix, features)
        return problems

    def _names(self, prefix: str, entities: Mapping[str, Any] | None, features: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Entity keys (missing, unknown, ill-typed) and feature names (unknown) of one request; ``entities`` None: absent."""
        problems: list[tuple[str, str]] = []
        if entities is None:
            if self.entity_keys:
                keys = ", ".join(self.entity_keys)
                problems.append((f"{prefix}entities", f"Field required (this project's entity keys: {keys})"))
        else:
            problems += [(f"{prefix}entities.{key}", "missing entity key") for key in self.entity_keys if key not in entities]
            for key, value in entities.items():
                if key not in self.entity_keys:
                    keys = ", ".join(self.entity_keys)
                    expected = f"expected: {keys}" if keys else "this project has no entities: leave entities out"
                    problems.append((f"{prefix}entities.{key}", f"unknown entity key ({expected})"))
                elif self.entity_types.get(key) == "int" and isinstance(value, str) and not _INTEGER_TEXT.fullmatch(value):
                    message = f"expected an integer ({key} holds integers), got {value[:40]!r}"
                    problems.append((f"{prefix}entities.{key}", message))
        for name in features:
            if name not in self.features:
                known = ", ".join(sorted(self.features)) or "none"
                problems.append((f"{prefix}features.{name}", f"unknown request feature (expected: {known})"))
        return problems

    def _values(self, prefix: str, features: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Each declared request feature that is missing (required) or unparsable, as the assembler would refuse it."""
        problems: list[tuple[str, str]] = []
        for name, rule in self.features.items():
            try:
                parse_request_feature(name, rule, features.get(name))
            except RequestFeatureError as exc:
                problems.append((f"{prefix}{exc.field}", exc.message))
        return problems

    def non_finite_advice(self, field: str, batch: bool) -> str:
        """What to send instead of a non-finite number at ``field`` of a predict body: null only where null is accepted."""
        path = _INSTANCE.sub("", field, count=1) if batch and _INSTANCE.match(field) else field
        rule = self.features.get(path[len("features.") :]) if path.startswith("features.") else None
        if rule is None:
            return "send a finite number"
        if rule.required:
            return f"send a finite number ({path} is a required request feature)"
        return "send a finite number, or null for a missing value"

    def request_schema(self) -> dict[str, Any]:
        """The JSON schema of this project's predict body."""
        features: dict[str, Any] = {}
        for name, rule in self.features.items():
            kind = dict(_FEATURE_TYPES[rule.type])
            features[name] = kind if rule.required else {"anyOf": [kind, {"type": "null"}]}
        required = sorted(name for name, rule in self.features.items() if rule.required)
        text = {"type": "string", "minLength": 0, "maxLength": 200}
        integer = {"type": "string", "pattern": "^-?[0-9]+$", "maxLength": 200}
        entity = {
            key: {"anyOf": [{"type": "integer"}, integer if self.entity_types.get(key) == "int" else text]}
            for key in self.entity_keys
        }
        entities: dict[str, Any] = {
            "type": "object",
            "description": "entity key column -> value; every key is required"
            if self.entity_keys
            else "this project has no entities: leave entities out (or send {})",
            "additionalProperties": False,
            "properties": entity,
        }
        body: dict[str, Any] = {
            "type": "object",
            "title": "PredictRequest",
            "additionalProperties": False,
            "properties": {
                "entities": entities,
                "features": {
                    "type": "object",
                    "description": "request-time features (numbers may also be sent as numeric strings, "
                    "timestamps as epoch seconds); unknown names are rejected",
                    "additionalProperties": False,
                    "properties": features,
                },
                "request_id": {"anyOf": [{"type": "string", "maxLength": 200}, {"type": "null"}]},
            },
        }
        # an empty "required" list is not valid in every OpenAPI version: left out when nothing is required
        if self.entity_keys:
            entities["required"] = list(self.entity_keys)
        if required:
            body["properties"]["features"]["required"] = required
        top = (["entities"] if self.entity_keys else []) + (["features"] if required else [])
        if top:
            body["required"] = top
        return body

    def openapi(self, document: dict[str, Any]) -> dict[str, Any]:
        """``document`` (FastAPI's) with this project's predict body and every error status documented."""
        doc = copy.deepcopy(document)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        if "PredictRequest" in schemas:
            schemas["PredictRequest"] = self.request_schema()
        batch = schemas.get("PredictBatchRequest", {}).get("properties", {}).get("instances")
        if batch is not None:
            batch["maxItems"] = self.max_batch
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if "requestBody" in operation:
                    for status, description in _BODY_ERRORS.items():
                        responses.setdefault(status, {"description": description})
                if "422" in responses:  # FastAPI's default 422 body is not what the server sends
                    responses["422"] = {"description": responses["422"].get("description") or _BODY_ERRORS["422"]}
                for status in ("400", "413", "422"):
                    if status in responses:
                        responses[status] = {**responses[status], **copy.deepcopy(_ERROR_REF)}
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return doc


def install_openapi(app: FastAPI, shape: RequestShape) -> None:
    """Serve ``shape.openapi`` of FastAPI's generated document at ``/openapi.json``."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    done: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not done:
            done.append(shape.openapi(generate()))
            app.openapi_schema = done[0]
        return done[0]

    app.openapi = openapi  # type: ignore[method-assign]
