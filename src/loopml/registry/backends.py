"""The registry backends by name (``storage.registry``), and the one factory that opens them."""

from __future__ import annotations

from loopml.errors import LoopmlError
from loopml.layout import Layout
from loopml.registry.base import Registry
from loopml.registry.sqlite import SqliteRegistry
from loopml.spec.model import Spec


def open_registry(spec: Spec, layout: Layout) -> Registry:
    """The registry backend named by ``storage.registry`` (``LOOPML_REGISTRY_URL`` is applied when the spec loads)."""
    if spec.storage.registry == "postgres":
        try:  # an optional extra: imported only when configured
            from loopml.registry.postgres import PostgresRegistry
        except ImportError:
            raise LoopmlError("storage.registry: postgres needs the extra (pip install 'loopml[postgres]')") from None
        url = spec.storage.registry_url
        if not url:
            raise LoopmlError("storage.registry_url: the postgres registry needs a URL (or set LOOPML_REGISTRY_URL)")
        return PostgresRegistry(url, layout.artifacts)
    return SqliteRegistry.for_layout(layout)
