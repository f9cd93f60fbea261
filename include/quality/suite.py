"""The contract's rules as a Great Expectations suite (``include.contract.rules`` holds them as data)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from include.contract import rules as _rules
from include.contract.rules import ROW_RULES, SUITE_NAME, TABLE_EXPECTATIONS, describe


def build_suite(parameters: Mapping[str, Any]):
    """The Great Expectations suite (rule name in each expectation's ``meta``, reason in its description)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = [
        getattr(gxe, rule.expectation_type)(
            **rule.kwargs, description=describe(rule, parameters), meta={"rule": rule.name, "routes_rows": True}
        )
        for rule in ROW_RULES
    ]
    expectations += [
        getattr(gxe, expectation_type)(**kwargs, meta={"rule": name, "routes_rows": False})
        for name, expectation_type, kwargs in TABLE_EXPECTATIONS
    ]
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations, meta={"notes": _rules.__doc__})
