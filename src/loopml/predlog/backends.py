"""The prediction-log backends by name (``storage.prediction_log``), and the one factory that opens them."""

from __future__ import annotations

from loopml.errors import LoopmlError
from loopml.layout import Layout
from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.parquet import PredictionLog
from loopml.spec.model import Spec


def open_prediction_log(spec: Spec, layout: Layout) -> PredictionLogBackend:
    """The prediction-log backend named by ``storage.prediction_log``."""
    if spec.storage.prediction_log == "postgres":
        url = spec.storage.prediction_log_url  # LOOPML_PREDLOG_URL is applied when the spec loads
        if not url:
            raise LoopmlError("storage.prediction_log_url: the postgres prediction log needs a URL (or set LOOPML_PREDLOG_URL)")
        try:
            from loopml.predlog.postgres import PostgresPredictionLog
        except ImportError:
            raise LoopmlError("storage.prediction_log: postgres needs the extra (pip install 'loopml[postgres]')") from None
        return PostgresPredictionLog(url)
    return PredictionLog(layout.prediction_log)
