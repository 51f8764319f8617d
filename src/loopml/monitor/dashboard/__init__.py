"""The dashboard's data: the JSON behind ``GET /v1/dashboard``, one section at a time.

:class:`~loopml.monitor.dashboard.board.Dashboard` assembles it (the page that
draws it is served by :mod:`loopml.serve.dashboard`):

* **overview**: the live version, the policy, predictions logged and labelled;
* **rollout**: champion/challenger with their versions, the live traffic split
  (``service.models()``), the observed requests per variant over time, the
  canary's step and guardrail statistics (``service.rollout.state()``) and the
  rollout events (promotions, rollbacks, policy changes);
* **drift**: PSI per feature (and the score) over time, with the threshold,
  and each column's verdict over the period by the test ``loopml monitor``
  uses (:func:`loopml.monitor.drift.summarise` / :func:`~loopml.monitor.drift.decide`);
* **performance**: the training report's metrics on labelled live traffic over
  time next to the training baseline (the version's test metrics), and the
  CBPE estimate (:mod:`loopml.monitor.performance`) for calibrated binary models;
* **system**: latency p50/p95/p99 and throughput over time, with the latency budget;
* **alerts**: the active alerts (:meth:`AlertStore.active`);
* **versions** and **runs**: the registry and the run store.

Time axes: drift and performance use equal-count windows over the rows (so
each point rests on the same number of rows, at least ``monitoring.min_rows``,
and no point is "not enough data" by construction); latency and throughput use
equal-width time buckets (a throughput needs a duration), aggregated in DuckDB
in one pass. Both are capped at ``max_points`` points. Drift and performance
read the champion's most recent ``max_rows`` predictions (a note says so when
the log holds more), so the page stays fast on a big log. Times are the log's
``ts`` (the request's event time when it carries one, else the server's clock
at the request; naive local time), sent as milliseconds and shown as they are.

It never fails as a whole: a section whose data cannot be loaded carries
``error`` (the reason, one line) and the page shows it in that section. The
result is cached for ``cache_seconds`` and computed by one thread at a time.

The live prediction service is read through the
:class:`~loopml.monitor.dashboard.live.LiveService` protocol, which the
serving stage's ``PredictionService`` satisfies: monitoring never imports
``loopml.serve``.
"""
