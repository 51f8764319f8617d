"""Experiment statistics (:mod:`.stats`) and the per-variant report over the prediction log (:mod:`.report`)."""

from loopml.experiment.report import Comparison, ExperimentReport, VariantSummary, experiment_report
from loopml.experiment.stats import (
    MSPRT,
    MeanTest,
    ProportionTest,
    SampleRatioTest,
    SampleSize,
    SequentialTest,
    msprt_test,
    proportion_z_test,
    sample_ratio_test,
    sample_size_means,
    sample_size_proportions,
    welch_t_test,
    welch_t_test_from_stats,
)

__all__ = [
    "MSPRT",
    "Comparison",
    "ExperimentReport",
    "MeanTest",
    "ProportionTest",
    "SampleRatioTest",
    "SampleSize",
    "SequentialTest",
    "VariantSummary",
    "experiment_report",
    "msprt_test",
    "proportion_z_test",
    "sample_ratio_test",
    "sample_size_means",
    "sample_size_proportions",
    "welch_t_test",
    "welch_t_test_from_stats",
]
