"""The contract suite as data: every rule is a GX expectation with a name, a reason and a routing."""

from __future__ import annotations

import pytest

from include.contract.columns import NOT_EMPTY_COLUMNS
from include.contract.rules import (
    ROW_RULES,
    TABLE_EXPECTATIONS,
    RowRule,
    describe,
    reason_sql,
    routing_predicate,
    suite_parameters,
)
from include.quality.suite import build_suite
from include.settings import Settings

pytestmark = pytest.mark.unit

PARAMETERS = suite_parameters(Settings.from_env({"MAX_PRICE": "750"}))


def test_the_ten_rules_of_the_original_system_are_all_there():
    names = {rule.name for rule in ROW_RULES}
    for required in ("event_id_is_uuid", "event_type_known", "price_in_range",
                     "quantity_at_least_one", "product_id_positive", "user_required_for_action",
                     "event_time_not_in_future", "category_known", "user_segment_known",
                     "total_amount_is_price_times_quantity"):
        assert required in names
    assert {name for name, _, _ in TABLE_EXPECTATIONS} == {"rows_arrived", "event_id_unique"}


def test_no_rule_checks_a_value_the_typing_already_dead_letters_when_empty():
    """event_id, event_type and event_time cannot be empty in a row that reaches the suite: the contract file
    declares them not_empty and the typing dead-letters such a row (a parse dead letter, whatever a severity
    says). A not-null rule on one of them could never fire."""
    assert NOT_EMPTY_COLUMNS == ("event_id", "event_type", "event_time")
    never_firing = [rule.name for rule in ROW_RULES if rule.expectation_type == "ExpectColumnValuesToNotBeNull"
                    and rule.kwargs["column"] in NOT_EMPTY_COLUMNS]
    assert never_firing == []


def test_suite_carries_every_rule_with_its_reason_and_thresholds_from_settings():
    suite = build_suite(PARAMETERS)
    by_rule = {e.meta["rule"]: e for e in suite.expectations}
    assert set(by_rule) == {r.name for r in ROW_RULES} | {name for name, _, _ in TABLE_EXPECTATIONS}
    price = by_rule["price_in_range"]
    assert price.max_value == {"$PARAMETER": "max_price"}  # config, not a literal, sets the threshold
    assert price.description == "price is not in (0, 750.0] (MAX_PRICE) [severity: drop]"
    assert all(by_rule[r.name].meta["routes_rows"] for r in ROW_RULES)


def test_routing_predicates_follow_the_expectation_configuration():
    rules = {rule.name: rule for rule in ROW_RULES}
    assert routing_predicate(rules["price_in_range"], PARAMETERS) == \
        "price IS NOT NULL AND NOT (price > 0 AND price <= 750.0)"
    assert routing_predicate(rules["quantity_at_least_one"], PARAMETERS) == \
        "quantity IS NOT NULL AND NOT (quantity >= 1)"
    assert routing_predicate(rules["price_present"], PARAMETERS) == "price IS NULL"
    login = routing_predicate(rules["user_required_for_action"], PARAMETERS)
    # the condition on event_type is part of the routing (GX's own index query drops row conditions)
    assert "user_id IS NULL" in login and "event_type IN ('add_to_cart'" in login


def test_an_expectation_without_routing_is_refused_not_guessed():
    rule = RowRule("odd", "odd", "ExpectColumnValueLengthsToBeBetween", {"column": "event_id", "max_value": 5})
    with pytest.raises(NotImplementedError, match="no routing"):
        routing_predicate(rule, PARAMETERS)


def test_reasons_name_the_rule_and_quote_safely():
    rule = next(r for r in ROW_RULES if r.name == "price_in_range")
    assert describe(rule, PARAMETERS).startswith("price is not in (0, 750.0]")
    assert reason_sql(rule, PARAMETERS).startswith("'price_in_range: price is not in (0, 750.0] (MAX_PRICE)' || ' (price = '")
    evil = RowRule("evil", "it's bad", "ExpectColumnValuesToNotBeNull", {"column": "price"})
    assert "'evil: it''s bad'" in reason_sql(evil, PARAMETERS)
