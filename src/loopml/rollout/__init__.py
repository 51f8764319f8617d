"""Rollout: the traffic policies (:mod:`.policy`: A/B, shadow, canary, bandit, blue-green), the experiment
statistics they and the report use (:mod:`.stats`), and the per-variant report over the prediction log (:mod:`.report`)."""

from loopml.rollout.report import Comparison, ExperimentReport, VariantSummary, experiment_report
from loopml.rollout.stats import (
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
