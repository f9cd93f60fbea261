"""Thresholds and rule severities an operator changes in Airflow Variables, and what a bad value does."""

from __future__ import annotations

import pytest

from include.airflow.settings_resolution import with_live_variables
from include.contract.rules import ROW_RULES, severities
from include.quality.suite import build_suite
from include.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def test_variables_override_the_environment_and_unset_ones_leave_it():
    base = Settings.from_env({"MAX_PRICE": "500", "MIN_VALIDITY_RATE": "97"})
    variables = {"ecommerce_max_price": "25000", "ecommerce_rule_severity": '{"category_known": "drop"}',
                 "ecommerce_min_validity_rate": ""}
    live = with_live_variables(base, variables.get)
    assert (live.max_price, live.min_validity_rate) == (25000.0, 97.0)
    assert severities(live)["category_known"] == "drop"
    assert severities(base)["category_known"] == "warn" and severities(base)["price_in_range"] == "drop"


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("ecommerce_max_price", "-1", "MAX_PRICE must be positive"),
    ("ecommerce_max_price", "cheap", "is not a valid float"),
    ("ecommerce_max_price", "inf", "MAX_PRICE must be a finite number, not inf"),
    ("ecommerce_max_price", "NaN", "MAX_PRICE must be a finite number, not nan"),
    ("ecommerce_min_validity_rate", "-inf", "MIN_VALIDITY_RATE must be a finite number, not -inf"),
    ("ecommerce_min_validity_rate", "101", "MIN_VALIDITY_RATE is a percentage"),
    ("ecommerce_rule_severity", '{"price_in_range": "ignore"}', "'price_in_range' has severity 'ignore'"),
    ("ecommerce_rule_severity", '{"no_such_rule": "warn"}', "no rule is named 'no_such_rule'"),
    ("ecommerce_rule_severity", '["drop"]', "must be a JSON object"),
])
def test_a_bad_variable_is_refused_naming_it(variable, value, message):
    with pytest.raises(SettingsError) as refused:
        with_live_variables(Settings(), {variable: value}.get)
    assert f"Airflow Variable {variable}={value!r}" in str(refused.value) and message in str(refused.value)


def test_the_environment_setting_is_checked_the_same_way():
    with pytest.raises(SettingsError, match="RULE_SEVERITY: 'category_known' has severity 'keep'"):
        Settings.from_env({"RULE_SEVERITY": '{"category_known": "keep"}'})


def test_the_suite_carries_each_rules_severity_in_force_for_the_data_docs():
    suite = build_suite({"max_price": 100.0}, {**{r.name: r.severity for r in ROW_RULES}, "price_in_range": "fail"})
    meta = {e.meta["rule"]: e.meta for e in suite.expectations if e.meta.get("routes_rows")}
    assert meta["price_in_range"]["severity"] == "fail" and meta["category_known"]["severity"] == "warn"
    assert "severity: fail" in meta["price_in_range"]["notes"]["content"][0]
