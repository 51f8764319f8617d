"""The request path's errors: bad input (a 4xx naming each field) and failures of the model or the feature store (503)."""

from __future__ import annotations

from loopml.errors import LoopmlError


class RequestError(LoopmlError):
    """Bad input from a client: becomes a 4xx naming each field."""

    def __init__(self, details: list[tuple[str, str]]) -> None:
        self.details = details
        super().__init__("; ".join(f"{f}: {m}" for f, m in details))


class ModelFailure(LoopmlError):
    """The model raised or returned a non-finite score: becomes a 503."""


class FeaturesUnavailable(ModelFailure):
    """The online store cannot be reached (``storage.online_unavailable: fail``): a 503 naming it."""
