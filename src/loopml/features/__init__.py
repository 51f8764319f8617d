"""The feature store: definitions, offline point-in-time tables, online store, materialization.

One definition (``features`` in ``loopml.yaml``) feeds both paths: the offline
builder computes point-in-time-correct training tables in DuckDB, the same SQL
materializes the online store, and one transform function serves both.
"""

from loopml.features.definitions import feature_columns
from loopml.features.join import point_in_time_join
from loopml.features.materialize import MaterializeResult, materialize
from loopml.features.offline import BuildResult, build_training_set
from loopml.features.online import OnlineStore, SqliteOnlineStore
from loopml.features.transforms import apply_transforms
from loopml.features.vector import AssembledBatch, FeatureAssembler, RequestFeatureError

__all__ = [
    "AssembledBatch",
    "BuildResult",
    "FeatureAssembler",
    "MaterializeResult",
    "OnlineStore",
    "RequestFeatureError",
    "SqliteOnlineStore",
    "apply_transforms",
    "build_training_set",
    "feature_columns",
    "materialize",
    "point_in_time_join",
]
