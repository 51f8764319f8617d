"""The feature store: definitions, offline point-in-time tables, online store, materialization.

One definition (``features`` in ``loopml.yaml``) feeds both paths: the offline
builder computes point-in-time-correct training tables in DuckDB; the online
store keeps each entity's recent events and computes the same windows as of
each request's time; one transform function serves both.
"""

from loopml.features.definitions import feature_columns
from loopml.features.join import point_in_time_join
from loopml.features.materialize import MaterializeResult, materialize
from loopml.features.offline import BuildResult, build_spine_training_set, build_training_set
from loopml.features.online.base import OnlineStore, OnlineStoreUnavailable
from loopml.features.online.sqlite import SqliteOnlineStore
from loopml.features.push import PushResult, push_events
from loopml.features.transforms import apply_transforms
from loopml.features.vector import AssembledBatch, FeatureAssembler, RequestFeatureError

__all__ = [
    "AssembledBatch",
    "BuildResult",
    "FeatureAssembler",
    "MaterializeResult",
    "OnlineStore",
    "OnlineStoreUnavailable",
    "PushResult",
    "RequestFeatureError",
    "SqliteOnlineStore",
    "apply_transforms",
    "build_spine_training_set",
    "build_training_set",
    "feature_columns",
    "materialize",
    "point_in_time_join",
    "push_events",
]
