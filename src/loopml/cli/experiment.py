"""``loopml experiment``: A/B statistics over the prediction log (``report``) and sample sizes (``size``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from loopml.cli.common import JsonOpt, ProjectOpt, emit_json, load_project, make_table, out, run_command
from loopml.errors import LoopmlError

if TYPE_CHECKING:
    from loopml.project import Project

experiment_app = typer.Typer(help="A/B experiment statistics over the prediction log, and sample sizes.", no_args_is_help=True)


def _experiment_defaults(p: Project) -> tuple[list[str], dict[str, float] | None, str | None]:
    """Control candidates, expected weights and a reason to skip the sample-ratio test, from ``rollout``."""
    rollout = p.spec.rollout
    candidates = [name for name, v in rollout.variants.items() if v.alias == rollout.alias] + [rollout.alias, "champion"]
    if rollout.policy == "ab":
        return candidates, {name: v.weight for name, v in rollout.variants.items()}, None
    if rollout.policy in ("canary", "bandit", "bluegreen"):
        return candidates, None, f"the {rollout.policy} policy changes the split over time: give --weights to test a fixed split"
    return candidates, None, None


def _g(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _test_row(label: str, result: Any) -> list[str]:
    if isinstance(result, str):
        return [label, result, "", "", ""]
    verdict = "significant" if result.significant else "-"
    ci = f"{result.ci_low:+.3g} .. {result.ci_high:+.3g}"
    return [label, f"{result.estimate:+.3g}", ci, f"{result.p_value:.3g}", verdict]


@experiment_app.command("report")
def experiment_report_cmd(
    project: ProjectOpt = Path("."),
    since: Annotated[str | None, typer.Option(help="only predictions at or after this ISO date/time")] = None,
    control: Annotated[str | None, typer.Option(help="control variant (default: the champion's, else the first)")] = None,
    weights: Annotated[
        str | None,
        typer.Option(help="expected split for the sample-ratio test, e.g. a=0.5,b=0.5 (default: rollout weights, else equal)"),
    ] = None,
    metric: Annotated[str, typer.Option(help="numeric prediction-log column compared with Welch's t-test")] = "score",
    alpha: Annotated[float, typer.Option(help="significance level of the tests and intervals")] = 0.05,
    as_json: JsonOpt = False,
) -> None:
    """Per-variant counts and metrics, and each variant against the control: z-test, Welch, mSPRT, SRM."""

    def go() -> None:
        from loopml.rollout.report import experiment_report, parse_since
        from loopml.rollout.stats import parse_weights

        p = load_project(project)
        candidates, default_weights, srm_skip = _experiment_defaults(p)
        given = parse_weights(weights)
        log = p.prediction_log()
        try:
            report = experiment_report(
                log,
                task=p.spec.task,
                since=parse_since(since),
                control=control,
                weights=given or default_weights,
                metric=metric,
                control_candidates=candidates,
                srm_skip=None if given else srm_skip,
                alpha=alpha,
            )
        finally:
            log.close()
        if as_json:
            emit_json(report.to_json())
            return
        since_text = f" since {report.since:%Y-%m-%d %H:%M}" if report.since else ""
        if not report.variants:
            out.print(f"not enough data: no predictions logged{since_text}", highlight=False)
            return
        vs = report.variants  # one column per variant: a few variants, many figures
        lines: list[list[Any]] = [
            ["requests", *(f"{v.requests:,}" for v in vs)],
            ["model versions", *(",".join(map(str, v.model_versions)) for v in vs)],
            ["labelled", *(f"{v.labelled:,} ({v.labelled_fraction:.0%})" for v in vs)],
            ["label rate", *(_g(v.label_rate, ".2%") for v in vs)],
            ["mean score", *(_g(v.mean_score) for v in vs)],
        ]
        lines += [[f"mean {metric}", *(_g(v.mean_metric) for v in vs)]] if metric != "score" else []
        lines += [
            ["average precision", *(_g(v.average_precision) for v in vs)],
            ["ROC AUC", *(_g(v.roc_auc) for v in vs)],
            ["latency p50 / p99 ms", *(f"{_g(v.latency_p50_ms)} / {_g(v.latency_p99_ms)}" for v in vs)],
        ]
        names = [f"{v.variant} (control)" if v.variant == report.control else v.variant for v in vs]
        out.print(make_table(f"experiment: {report.rows:,} predictions{since_text}", ["", *names], lines))
        for c in report.comparisons:
            tests = [
                _test_row("label rate z-test", c.label_rate),
                _test_row("label rate mSPRT", c.label_rate_sequential),
                _test_row(f"{metric} Welch", c.metric),
                _test_row(f"{metric} mSPRT", c.metric_sequential),
            ]
            title = f"{c.variant} minus {c.control} (mSPRT: valid however often you look)"
            out.print(make_table(title, ["test", "difference", f"{1 - report.alpha:.0%} CI", "p-value", "verdict"], tests))
        if isinstance(report.srm, str):
            out.print(f"sample ratio: {report.srm}", highlight=False, soft_wrap=True)
        else:
            verdict = "MISMATCH: the split is not what was configured; fix assignment before trusting the tests"
            ok = verdict if report.srm.mismatch else "ok"
            out.print(
                f"sample ratio: chi-square {report.srm.statistic:.3f}, p = {report.srm.p_value:.4g} "
                f"(flag below {report.srm.threshold:g}): {ok}",
                highlight=False,
                soft_wrap=True,
            )

    run_command(go)


@experiment_app.command("size")
def experiment_size_cmd(
    rate_control: Annotated[float | None, typer.Option(help="proportions: the control's rate, e.g. 0.05")] = None,
    rate_treatment: Annotated[float | None, typer.Option(help="proportions: the rate to detect, e.g. 0.06")] = None,
    difference: Annotated[float | None, typer.Option(help="means: the difference to detect")] = None,
    sd: Annotated[float | None, typer.Option(help="means: the standard deviation of one observation")] = None,
    alpha: Annotated[float, typer.Option(help="two-sided significance level")] = 0.05,
    power: Annotated[float, typer.Option(help="probability of detecting the effect")] = 0.8,
    ratio: Annotated[float, typer.Option(help="treatment size / control size")] = 1.0,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Observations per group for a two-sided test: two proportions (Cohen's h) or two means."""

    def go() -> None:
        from loopml.rollout.stats import sample_size_means, sample_size_proportions

        props = rate_control is not None or rate_treatment is not None
        means = difference is not None or sd is not None
        if props == means:
            raise LoopmlError("experiment size: give --rate-control and --rate-treatment, or --difference and --sd")
        if props:
            if rate_control is None or rate_treatment is None:
                raise LoopmlError("experiment size: give both --rate-control and --rate-treatment")
            size = sample_size_proportions(rate_control, rate_treatment, alpha=alpha, power=power, ratio=ratio)
        else:
            if difference is None or sd is None:
                raise LoopmlError("experiment size: give both --difference and --sd")
            size = sample_size_means(difference, sd, alpha=alpha, power=power, ratio=ratio)
        if as_json:
            emit_json(size.to_json())
            return
        out.print(
            f"{size.n_control:,} control + {size.n_treatment:,} treatment = {size.n_control + size.n_treatment:,} observations "
            f"(alpha {alpha:g}, power {power:g}; {size.formula}, effect size {size.effect_size:.4f})",
            highlight=False,
            soft_wrap=True,
        )

    run_command(go)
