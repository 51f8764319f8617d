"""What the dashboard reads from the live prediction service, as a protocol.

Monitoring comes before serving in the loop and never imports it: the serving
stage's ``PredictionService`` satisfies :class:`LiveService` structurally (its
``spec``, ``registry``, ``live`` model, ``rollout`` controller and ``logger``
attributes, its ``models()`` and ``events()``), and the composition root
(:mod:`loopml.server`) hands it to :class:`~loopml.monitor.dashboard.board.Dashboard`.
Every member is read-only here.
"""

from __future__ import annotations

from typing import Any, Protocol

from loopml.registry.base import Registry
from loopml.spec.model import Spec


class ServedModel(Protocol):
    """A loaded model: the dashboard needs only its version."""

    @property
    def version(self) -> int: ...


class RolloutState(Protocol):
    """The rollout controller: its state as JSON (``policy``, ``variants``, ``stats``, canary ``step``/``steps``)."""

    def state(self) -> dict[str, Any]: ...


class DropCounter(Protocol):
    """The prediction-log writer: records it had to drop."""

    @property
    def dropped(self) -> int: ...


class LiveService(Protocol):
    """The live prediction service as the dashboard sees it."""

    @property
    def spec(self) -> Spec: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def live(self) -> ServedModel | None:
        """The champion (or the first variant with a model); None while no model is loaded."""
        ...

    @property
    def rollout(self) -> RolloutState: ...

    @property
    def logger(self) -> DropCounter | None: ...

    def models(self) -> dict[str, Any]:
        """``versions`` (registry records as JSON), ``traffic`` (variant -> version, weight), ``policy``, ``live_version``."""
        ...

    def events(self) -> list[dict[str, Any]]:
        """The rollout events, oldest first."""
        ...
