"""Serving: the HTTP request path (routed by :mod:`loopml.rollout`, logged to :mod:`loopml.predlog`), the admin API,
batch and stream scoring, and the dashboard page."""
