"""The contract's rules as a Great Expectations suite (``include.contract.rules`` holds them as data)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from include.contract import rules as _rules
from include.contract.rules import (
    ROW_RULES,
    SEVERITY_MEANING,
    SUITE_NAME,
    TABLE_EXPECTATIONS,
    describe,
    expectation_kwargs,
)


def build_suite(parameters: Mapping[str, Any], severity: Mapping[str, str] | None = None):
    """The Great Expectations suite: each expectation's ``meta`` carries its rule name and severity, its
    description the reason and the severity (the Data Docs show the description)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    severity = severity or {rule.name: rule.severity for rule in ROW_RULES}
    expectations = [
        getattr(gxe, rule.expectation_type)(
            **expectation_kwargs(rule, parameters), description=f"{describe(rule, parameters)} [severity: {severity[rule.name]}]",
            meta={"rule": rule.name, "routes_rows": True, "severity": severity[rule.name],
                  "notes": {"format": "markdown",
                            "content": [f"**severity: {severity[rule.name]}**: {SEVERITY_MEANING[severity[rule.name]]}"]}},
        )
        for rule in ROW_RULES
    ]
    expectations += [
        getattr(gxe, expectation_type)(**kwargs, meta={"rule": name, "routes_rows": False})
        for name, expectation_type, kwargs in TABLE_EXPECTATIONS
    ]
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations, meta={"notes": _rules.__doc__})
