"""Open the online store ``loopml.yaml`` configures (``storage.online``), and its fallback.

The one place that maps the spec's choice to a backend object:

- ``sqlite`` (default): :class:`~loopml.features.online.sqlite.SqliteOnlineStore`
  at ``.loopml/online.sqlite``;
- ``redis``: :class:`~loopml.features.online.redis.RedisOnlineStore` at
  ``storage.redis_url``, keys prefixed by the project name. With
  ``storage.online_unavailable: fallback`` it is wrapped in a
  :class:`~loopml.features.online.fallback.MirroredStore` that also writes
  ``.loopml/online-cache.sqlite``, and :func:`open_fallback` gives the reader
  of that cache for the request path.

redis-py is an optional extra (``loopml[redis]``), imported only when the
spec chooses Redis. ``check=True`` pings the store so that an unreachable Redis stops a command
at start-up with one line naming the URL.
"""

from __future__ import annotations

from datetime import timedelta

from loopml.errors import LoopmlError
from loopml.features.definitions import view_horizon
from loopml.features.online.base import OnlineStore, OnlineStoreUnavailable
from loopml.features.online.fallback import Fallback, MirroredStore
from loopml.features.online.sqlite import SqliteOnlineStore
from loopml.layout import Layout
from loopml.spec.model import Spec

__all__ = ["open_fallback", "open_online_store"]

_ONE_US = timedelta(microseconds=1)


def _cache(layout: Layout) -> SqliteOnlineStore:
    return SqliteOnlineStore(layout.online_cache)


def open_online_store(spec: Spec, layout: Layout, check: bool = True) -> OnlineStore:
    """The configured online store; with ``check``, raise at once (one line) if it cannot be reached."""
    storage = spec.storage
    store: OnlineStore
    if storage.online == "redis":
        try:  # an optional extra: imported only when configured
            from loopml.features.online.redis import RedisOnlineStore
        except ImportError:
            raise LoopmlError("storage.online: redis needs the redis extra (pip install 'loopml[redis]')") from None
        store = RedisOnlineStore(storage.redis_url, spec.project)
        if storage.online_unavailable == "fallback":
            store = MirroredStore(store, _cache(layout))
    else:
        store = SqliteOnlineStore(layout.online_store)
    if check:
        try:
            store.ping()
        except OnlineStoreUnavailable as exc:
            store.close()
            raise OnlineStoreUnavailable(f"storage.online: {exc}") from None
    return store


def open_fallback(spec: Spec, layout: Layout) -> Fallback | None:
    """The request path's fallback reader, when the spec asks for one (Redis with ``online_unavailable: fallback``)."""
    if spec.storage.online != "redis" or spec.storage.online_unavailable != "fallback":
        return None
    horizons = {name: view_horizon(view) // _ONE_US for name, view in spec.features.views.items()}
    return Fallback(_cache(layout), horizons)
