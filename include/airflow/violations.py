"""Reading ``rule_violations`` for people: the "Rule violations" page beside "Dead letters".

Rows here were stored (``ecommerce_events``); each one broke a rule of severity ``warn``. The filters, the
time parsing and the spreadsheet-safe CSV export are the dead-letter page's (``include.airflow.dead_letters``);
every filter value reaches SQL as a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from include.airflow.dead_letters import DEFAULT_LIMIT, EXPORT_MAX_ROWS, as_query_params, filter_params

COLUMNS = ("id", "recorded_at", "event_id", "rule", "severity", "reason", "source_file", "source_line",
           "airflow_run_id", "spark_batch_id")


@dataclass(frozen=True)
class ViolationFilter:
    rule: str | None = None
    reason: str | None = None
    recorded_from: datetime | None = None
    recorded_to: datetime | None = None
    file: str | None = None
    run_id: str | None = None
    limit: int = DEFAULT_LIMIT

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ViolationFilter:
        return cls(*filter_params(params))

    def where(self, *, with_rule: bool = True) -> tuple[str, list[Any]]:
        clauses, values = ["TRUE"], []
        for active, clause, value in (
            (with_rule and self.rule, "rule = %s", self.rule),
            (self.reason, "strpos(lower(reason), lower(%s)) > 0", self.reason),
            (self.recorded_from, "recorded_at >= %s", self.recorded_from),
            (self.recorded_to, "recorded_at <= %s", self.recorded_to),
            (self.file, "strpos(lower(source_file), lower(%s)) > 0", self.file),
            (self.run_id, "airflow_run_id = %s", self.run_id),
        ):
            if active:
                clauses.append(clause)
                values.append(value)
        return " AND ".join(clauses), values

    def query_params(self) -> dict[str, str]:
        return as_query_params(self.rule, self.reason, self.recorded_from, self.recorded_to, self.file,
                               self.run_id, self.limit)


def recent(conn, violation_filter: ViolationFilter) -> list[dict[str, Any]]:
    where, values = violation_filter.where()
    cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM rule_violations WHERE {where} "
                          "ORDER BY recorded_at DESC, id DESC LIMIT %s", [*values, violation_filter.limit])
    return [dict(zip(COLUMNS, row)) for row in cursor.fetchall()]


def matching_count(conn, violation_filter: ViolationFilter) -> int:
    where, values = violation_filter.where()
    return conn.execute(f"SELECT count(*) FROM rule_violations WHERE {where}", values).fetchone()[0]


def counts_per_rule(conn, violation_filter: ViolationFilter) -> list[tuple[str, str, int]]:
    """(rule, severity, rows) under every filter but the rule, most frequent first."""
    where, values = violation_filter.where(with_rule=False)
    return [tuple(row) for row in conn.execute(
        f"SELECT rule, severity, count(*) FROM rule_violations WHERE {where} GROUP BY 1, 2 ORDER BY 3 DESC, 1",
        values).fetchall()]


def export_rows(conn, violation_filter: ViolationFilter, max_rows: int = EXPORT_MAX_ROWS) -> Iterator[tuple]:
    where, values = violation_filter.where()
    with conn.cursor(name="rule_violation_export") as cursor:
        cursor.itersize = 2000
        cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM rule_violations WHERE {where} "
                       "ORDER BY recorded_at DESC, id DESC LIMIT %s", [*values, max_rows])
        yield from cursor
