"""The business rules of the data contract, as one Great Expectations suite, and how failing rows are found.

The suite is the single source of truth. Great Expectations validates the audit table and reports, per
expectation, how many rows failed (Data Docs show it); the publish step then routes each failing row to
the dead-letter table with the names of every rule it broke. Because GX 1.x caps its row-level id lists
and drops ``row_condition`` from its ``unexpected_index_query``, routing uses a SQL predicate derived here
from each expectation's own configuration (``routing_predicate``), and the publish step refuses to route
unless the rows each predicate selects number exactly GX's ``unexpected_count`` for that expectation.

Thresholds are suite parameters (``{"$PARAMETER": ...}``) filled from settings at validation time.

Each rule has a severity (``SEVERITY_MEANING``): ``warn`` (stored, violation recorded), ``drop`` (dead letter)
or ``fail`` (the run stops before publishing the batch). Defaults are on the rules; ``severities`` applies
the overrides in force.

No rule checks that ``event_id``, ``event_type`` or ``event_time`` is present: a row cannot be stored without
them whatever a severity says, so the contract file declares them ``not_empty`` and such a row is a parse
dead letter before it reaches the suite (docs/data-contract.md, "Values a row cannot be stored without").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from include.contract.versions import CATEGORIES, EVENT_TYPES, LOGIN_REQUIRED_EVENT_TYPES, USER_SEGMENTS
from include.settings import Settings, SettingsError, severity_problems

SUITE_NAME = "ecommerce_events.contract"
UUID_REGEX = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# Clock skew tolerated between the shop's servers and ours before an event counts as "from the future".
FUTURE_TOLERANCE_MINUTES = 5


# Where a rule's SQL means "the moment of this validation": replaced by that moment (``expectation_kwargs``).
AUDITED_AT = "{audited_at}"


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


@dataclass(frozen=True)
class RowRule:
    """One row-level rule: a named expectation, and what happens to a row that breaks it (``severity``)."""

    name: str
    description: str
    expectation_type: str
    kwargs: Mapping[str, Any]
    severity: str = "drop"


# What a broken rule does to its row (a rule's default is overridden by RULE_SEVERITY / the Airflow Variable
# ecommerce_rule_severity):
SEVERITY_MEANING = {
    "warn": "the row is stored; the violation is recorded in rule_violations",
    "drop": "the row goes to dead_letter_events",
    "fail": "the run fails before publishing anything of the batch, which stays staged",
}


# (name, human-readable reason, expectation class name, expectation kwargs[, default severity])
_LOGIN_TYPES = _sql_list(LOGIN_REQUIRED_EVENT_TYPES)
ROW_RULES: tuple[RowRule, ...] = (
    RowRule("event_id_is_uuid", "event_id is not a UUID", "ExpectColumnValuesToMatchRegex",
            {"column": "event_id", "regex": UUID_REGEX}),
    RowRule("event_type_known", f"event_type is not one of {', '.join(EVENT_TYPES)}", "ExpectColumnValuesToBeInSet",
            {"column": "event_type", "value_set": list(EVENT_TYPES)}),
    RowRule("price_present", "price is missing", "ExpectColumnValuesToNotBeNull", {"column": "price"}),
    RowRule("price_in_range", "price is not in (0, {max_price}] (MAX_PRICE)", "ExpectColumnValuesToBeBetween",
            {"column": "price", "min_value": 0, "max_value": {"$PARAMETER": "max_price"}, "strict_min": True}),
    RowRule("quantity_present", "quantity is missing", "ExpectColumnValuesToNotBeNull", {"column": "quantity"}),
    RowRule("quantity_at_least_one", "quantity is less than 1", "ExpectColumnValuesToBeBetween",
            {"column": "quantity", "min_value": 1}),
    RowRule("product_id_present", "product_id is missing", "ExpectColumnValuesToNotBeNull", {"column": "product_id"}),
    RowRule("product_id_positive", "product_id is not positive", "ExpectColumnValuesToBeBetween",
            {"column": "product_id", "min_value": 1}),
    RowRule("user_required_for_action", f"user_id is missing on an action that needs a login ({', '.join(LOGIN_REQUIRED_EVENT_TYPES)})",
            "UnexpectedRowsExpectation",
            {"unexpected_rows_query": f"SELECT * FROM {{batch}} WHERE user_id IS NULL AND event_type IN ({_LOGIN_TYPES})"}),
    # "the future" is the validation's own moment (``audited_at``), the same for Great Expectations and for the
    # routing: with now() in each, a row at the edge could count in one and not in the other
    RowRule("event_time_not_in_future", f"event_time is more than {FUTURE_TOLERANCE_MINUTES} minutes in the future",
            "UnexpectedRowsExpectation",
            {"unexpected_rows_query": "SELECT * FROM {batch} WHERE event_time > "
                                      f"{AUDITED_AT} + interval '{FUTURE_TOLERANCE_MINUTES} minutes'"}),
    # A new category or segment is the business growing, not bad data: stored, and the violation recorded.
    RowRule("category_known", "category is not a known category", "ExpectColumnValuesToBeInSet",
            {"column": "category", "value_set": list(CATEGORIES)}, severity="warn"),
    RowRule("user_segment_known", "user_segment is not a known segment", "ExpectColumnValuesToBeInSet",
            {"column": "user_segment", "value_set": list(USER_SEGMENTS)}, severity="warn"),
    RowRule("total_amount_is_price_times_quantity", "total_amount is not price × quantity",
            "UnexpectedRowsExpectation",
            {"unexpected_rows_query": "SELECT * FROM {batch} WHERE total_amount IS DISTINCT FROM round(price * quantity, 2)"}),
)
RULES_BY_NAME = {rule.name: rule for rule in ROW_RULES}

# Table-level expectations: they describe the run, not a row; a failure fails the quality gate.
TABLE_EXPECTATIONS: tuple[tuple[str, str, Mapping[str, Any]], ...] = (
    ("rows_arrived", "ExpectTableRowCountToBeBetween", {"min_value": 1}),
    ("event_id_unique", "ExpectColumnValuesToBeUnique", {"column": "event_id"}),
)


def severities(settings: Settings, source: str = "RULE_SEVERITY") -> dict[str, str]:
    """Each row rule's severity in force: its default, overridden by ``settings.rule_severity``. An unknown
    rule name is an error naming ``source`` (the setting or Airflow Variable it came from), never ignored."""
    problems = severity_problems(settings.rule_severity, source)
    overrides = json.loads(settings.rule_severity) if settings.rule_severity.strip() and not problems else {}
    problems += [f"{source}: no rule is named {name!r} (rules: {', '.join(RULES_BY_NAME)})"
                 for name in overrides if name not in RULES_BY_NAME]
    if problems:
        raise SettingsError("; ".join(problems))
    return {rule.name: overrides.get(rule.name, rule.severity) for rule in ROW_RULES}


def suite_parameters(settings: Settings, audited_at: str | None = None) -> dict[str, Any]:
    """The suite's parameters: the thresholds in force, and the moment of the validation (ISO-8601; None: the
    database's ``now()``, for showing the rules rather than validating)."""
    return {"max_price": settings.max_price, "audited_at": audited_at}


def expectation_kwargs(rule: RowRule, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The rule's expectation arguments, its SQL's ``AUDITED_AT`` replaced by the validation's moment."""
    kwargs = dict(rule.kwargs)
    query = kwargs.get("unexpected_rows_query")
    if query and AUDITED_AT in query:
        moment = parameters.get("audited_at")
        kwargs["unexpected_rows_query"] = query.replace(
            AUDITED_AT, f"{_literal(str(moment), parameters)}::timestamptz" if moment else "now()")
    return kwargs


def describe(rule: RowRule, parameters: Mapping[str, Any]) -> str:
    """The rule's reason as people read it, thresholds filled in (``{max_price}`` -> ``10000.0``)."""
    return rule.description.format(**parameters)


def reason_sql(rule: RowRule, parameters: Mapping[str, Any]) -> str:
    """SQL text expression: '<rule>: <reason> (<column> = <value>)' for one failing row of the audit table."""
    text = "'" + f"{rule.name}: {describe(rule, parameters)}".replace("'", "''") + "'"
    column = rule.kwargs.get("column")
    if column is None:
        return text
    return f"{text} || ' ({column} = ' || coalesce(left({column}::text, 80), 'NULL') || ')'"


def _literal(value: Any, parameters: Mapping[str, Any]) -> str:
    if isinstance(value, Mapping) and "$PARAMETER" in value:
        value = parameters[value["$PARAMETER"]]
    if isinstance(value, bool) or value is None:
        raise ValueError(f"unsupported bound {value!r}")
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


_WHERE = re.compile(r"^\s*SELECT \* FROM \{batch\} WHERE (?P<predicate>.+)$", re.S | re.I)


def routing_predicate(rule: RowRule, parameters: Mapping[str, Any]) -> str:
    """SQL predicate over the audit table that is true exactly for the rows GX counts as unexpected.

    GX ignores NULLs in column-map expectations other than not-null ones, so the predicates do too.
    """
    kwargs = rule.kwargs
    column = kwargs.get("column")
    if rule.expectation_type == "ExpectColumnValuesToNotBeNull":
        return f"{column} IS NULL"
    if rule.expectation_type == "ExpectColumnValuesToBeInSet":
        return f"{column} IS NOT NULL AND {column} NOT IN ({_sql_list(tuple(kwargs['value_set']))})"
    if rule.expectation_type == "ExpectColumnValuesToMatchRegex":
        return f"{column} IS NOT NULL AND NOT ({column} ~ {_literal(kwargs['regex'], parameters)})"
    if rule.expectation_type == "ExpectColumnValuesToBeBetween":
        bounds = []
        if kwargs.get("min_value") is not None:
            op = ">" if kwargs.get("strict_min") else ">="
            bounds.append(f"{column} {op} {_literal(kwargs['min_value'], parameters)}")
        if kwargs.get("max_value") is not None:
            op = "<" if kwargs.get("strict_max") else "<="
            bounds.append(f"{column} {op} {_literal(kwargs['max_value'], parameters)}")
        return f"{column} IS NOT NULL AND NOT ({' AND '.join(bounds)})"
    if rule.expectation_type == "UnexpectedRowsExpectation":
        match = _WHERE.match(expectation_kwargs(rule, parameters)["unexpected_rows_query"])
        if not match:
            raise ValueError(f"{rule.name}: unexpected_rows_query must be 'SELECT * FROM {{batch}} WHERE ...'")
        return f"({match['predicate']})"
    raise NotImplementedError(
        f"rule {rule.name}: no routing for {rule.expectation_type}; add it to routing_predicate"
    )
