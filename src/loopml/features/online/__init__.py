"""The online feature store: the protocol and event codec (``base``), its backends (``sqlite``, ``redis``), the
mirrored local cache that answers while Redis is down (``fallback``), the windows computed from events at
request time (``windows``), and the one factory that opens what ``storage.online`` names (``backends``)."""
