"""Training: splits, models and their artifacts, metrics, reference statistics and run tracking."""

from loopml.train.artifact import LightGBMPredictor, LinearModel, LinearPredictor, Predictor
from loopml.train.metrics import card_precision_at_k
from loopml.train.reference import psi, reference_stats
from loopml.train.split import SplitResult, split_rows
from loopml.train.tracking import RunRecord, RunStore, RunSummary

__all__ = [
    "LightGBMPredictor",
    "LinearModel",
    "LinearPredictor",
    "Predictor",
    "RunRecord",
    "RunStore",
    "RunSummary",
    "SplitResult",
    "card_precision_at_k",
    "psi",
    "reference_stats",
    "split_rows",
]
