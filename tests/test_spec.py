"""loopml.yaml: the example is valid; every error names its key and line; unknown keys are errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from loopml.errors import SpecError
from loopml.scaffold import example_spec_text
from loopml.spec import format_duration, load_spec, parse_duration, parse_spec

EXAMPLE = example_spec_text()


def _problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "p/loopml.yaml")
    return info.value.problems


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_example_spec_is_valid_and_typed() -> None:
    spec = parse_spec(EXAMPLE)
    assert spec.label.delay == timedelta(days=7)
    assert spec.features.views["terminal"].delay == timedelta(days=7)
    names = [n for n, *_ in spec.features.views["customer"].outputs("customer")]
    assert "customer_count_7d" in names and "customer_tx_amount_mean_30d" in names


def test_unknown_key_is_an_error_with_its_line() -> None:
    text = EXAMPLE.replace("psi_bins: 10", "psi_binz: 10")
    (problem,) = _problems(text)
    assert problem == f"p/loopml.yaml:{_line_of(text, 'psi_binz')}: monitoring.psi_binz: unknown key"


def test_every_error_is_reported_not_only_the_first() -> None:
    text = EXAMPLE.replace("psi_bins: 10", "psi_binz: 10").replace("delay: 7d            #", "delay: 7x            #")
    problems = _problems(text)
    assert len(problems) == 2
    assert any(p.startswith(f"p/loopml.yaml:{_line_of(text, 'delay: 7x')}: label.delay:") for p in problems)


def test_wrong_type_names_the_key() -> None:
    text = EXAMPLE.replace("port: 8000", "port: eighty")
    (problem,) = _problems(text)
    assert f":{_line_of(text, 'port: eighty')}: serving.port:" in problem


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        (
            "{column: tx_amount, functions: [count, mean]",
            "{column: tx_amt, functions: [count, mean]",
            "features.views.customer.aggregations.0.column",
            "tx_amt",
        ),
        ("entity: terminal\n", "entity: merchant\n", "features.views.terminal.entity", "merchant"),
        ("column: tx_fraud\n", "column: is_fraud\n", "label.column", "is_fraud"),
        (
            "inputs: [tx_amount, customer_tx_amount_mean_30d]",
            "inputs: [tx_amount, customer_mean_30d]",
            "features.transforms.amount_over_customer_mean_30d.inputs",
            "customer_mean_30d",
        ),
    ],
)
def test_references_to_unknown_columns_views_and_features(old: str, new: str, key: str, words: str) -> None:
    assert old in EXAMPLE
    problems = _problems(EXAMPLE.replace(old, new, 1))
    assert any(f": {key}: " in p and words in p for p in problems), problems


def test_invalid_yaml_names_the_line() -> None:
    (problem,) = _problems("project: x\nentities: {a: [\n")
    assert problem.startswith("p/loopml.yaml:") and "not valid YAML" in problem


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"no loopml\.yaml here"):
        load_spec(tmp_path)
    (tmp_path / "loopml.yaml").write_bytes(b"project: caf\xe9\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(tmp_path)


def test_spec_hash_ignores_nothing_but_is_stable(tmp_path: Path) -> None:
    (tmp_path / "loopml.yaml").write_text(EXAMPLE)
    _, first = load_spec(tmp_path)
    _, again = load_spec(tmp_path)
    (tmp_path / "loopml.yaml").write_text(EXAMPLE.replace("psi_bins: 10", "psi_bins: 12"))
    _, changed = load_spec(tmp_path)
    assert first == again != changed


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 604800), ("12h", 43200), ("30m", 1800), ("45s", 45), ("2w", 1209600), (90, 90)]
)
def test_durations_round_trip(text: str | int, seconds: int) -> None:
    value = parse_duration(text)
    assert value.total_seconds() == seconds
    assert parse_duration(format_duration(value)) == value


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration("seven days")


def test_the_environment_overrides_storage_urls_once_where_the_spec_loads(tmp_path: Path) -> None:
    (tmp_path / "loopml.yaml").write_text(EXAMPLE)
    plain, digest = load_spec(tmp_path, environ={})
    env = {"LOOPML_REGISTRY_URL": "postgresql://u@h/reg", "LOOPML_PREDLOG_URL": "postgresql://u@h/log", "LOOPML_REDIS_URL": ""}
    spec, same = load_spec(tmp_path, environ=env)
    assert (spec.storage.registry_url, spec.storage.prediction_log_url) == ("postgresql://u@h/reg", "postgresql://u@h/log")
    assert spec.storage.redis_url == plain.storage.redis_url  # an empty variable overrides nothing
    assert plain.storage.registry_url is None and same == digest  # the hash is the file's


def test_format_and_csv_options_are_checked_where_they_apply() -> None:
    text = EXAMPLE.replace(
        "tx_amount: {type: float, nullable: false, min: 0, max: 100000}",
        'tx_amount: {type: float, nullable: false, min: 0, max: 100000, format: "%d.%m.%Y"}',
    ).replace("    path: data/transactions.parquet", '    path: data/transactions.parquet\n    csv: {decimal: ","}')
    problems = _problems(text)
    assert any(
        f":{_line_of(text, 'format:')}: sources.transactions.columns.tx_amount.format: format applies to date" in p
        for p in problems
    )
    assert any(
        f":{_line_of(text, 'csv:')}: sources.transactions.csv: csv options apply to CSV sources only" in p for p in problems
    )
    assert len(problems) == 2
