"""Serving: the HTTP request path, rollout policies, the admin API, batch and stream scoring, the dashboard page."""
