"""Reading the dead-letter queue for people: filters, counts per rule, and a spreadsheet-safe CSV export.

The Airflow UI's "Dead letters" page (plugins/ecommerce_pipeline.py) is a thin shell around this module.
Filters arrive as untrusted query parameters; every value reaches SQL as a bound parameter, never as text.

Rows that could not be typed (``error_kind = 'parse'``) break no named rule; for filtering and counting
they form one pseudo-rule, ``parse``, which no contract rule is called.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PARSE = "parse"  # the pseudo-rule of rows that could not be typed
DEFAULT_LIMIT = 200
MAX_LIMIT = 1000
EXPORT_MAX_ROWS = 100_000
COLUMNS = ("id", "failed_at", "event_id", "error_kind", "failed_rules", "validation_errors", "source_file",
           "source_line", "schema_version", "airflow_run_id", "spark_batch_id", "raw_data")
# A spreadsheet treats a cell starting with one of these as a formula (OWASP "CSV injection"), also after
# leading blanks; the full-width forms are included because some spreadsheet programs normalise them.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


class FilterError(ValueError):
    """A filter value the page cannot use; the message names the parameter and the expected form."""


@dataclass(frozen=True)
class DeadLetterFilter:
    """What the user asked to see. Empty fields do not filter."""

    rule: str | None = None          # a rule name from include/contract/rules.py, or ``parse``
    reason: str | None = None        # case-insensitive text within validation_errors
    failed_from: datetime | None = None
    failed_to: datetime | None = None
    file: str | None = None          # case-insensitive text within source_file
    run_id: str | None = None        # exact Airflow run id
    limit: int = DEFAULT_LIMIT

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> DeadLetterFilter:
        """Parse query parameters (``rule``, ``reason``, ``from``, ``to``, ``file``, ``run_id``, ``limit``)."""
        rule, reason, start, end, file, run_id, limit = filter_params(params)
        return cls(rule=rule, reason=reason, failed_from=start, failed_to=end, file=file, run_id=run_id, limit=limit)

    def where(self, *, with_rule: bool = True) -> tuple[str, list[Any]]:
        """A SQL WHERE clause over ``dead_letter_events`` and its bound parameters."""
        clauses, values = ["TRUE"], []
        if with_rule and self.rule == PARSE:
            clauses.append("error_kind = 'parse'")
        elif with_rule and self.rule:
            clauses.append("failed_rules @> ARRAY[%s]::text[]")
            values.append(self.rule)
        if self.reason:
            clauses.append("strpos(lower(validation_errors), lower(%s)) > 0")
            values.append(self.reason)
        if self.failed_from:
            clauses.append("failed_at >= %s")
            values.append(self.failed_from)
        if self.failed_to:
            clauses.append("failed_at <= %s")
            values.append(self.failed_to)
        if self.file:
            clauses.append("strpos(lower(source_file), lower(%s)) > 0")
            values.append(self.file)
        if self.run_id:
            clauses.append("airflow_run_id = %s")
            values.append(self.run_id)
        return " AND ".join(clauses), values

    def query_params(self) -> dict[str, str]:
        """The filter as query parameters again (for links and the export), without the defaults."""
        return as_query_params(self.rule, self.reason, self.failed_from, self.failed_to, self.file, self.run_id,
                               self.limit)


def filter_params(params: Mapping[str, str]) -> tuple:
    """The filters of a page from untrusted query parameters, checked: (rule, reason, from, to, file, run_id,
    limit); empty values are None. Shared by the Dead letters and the Rule violations pages."""
    def text(name: str) -> str | None:
        value = (params.get(name) or "").strip()
        return value or None

    raw_limit = text("limit")
    try:
        limit = int(raw_limit) if raw_limit else DEFAULT_LIMIT
    except ValueError as error:
        raise FilterError(f"limit={raw_limit!r} is not a whole number") from error
    if not 1 <= limit <= MAX_LIMIT:
        raise FilterError(f"limit must be between 1 and {MAX_LIMIT}")
    start, end = parse_time(text("from"), "from"), parse_time(text("to"), "to")
    if start and end and start > end:
        raise FilterError("from is after to")
    return text("rule"), text("reason"), start, end, text("file"), text("run_id"), limit


def as_query_params(rule, reason, start: datetime | None, end: datetime | None, file, run_id,
                    limit: int) -> dict[str, str]:
    """Filters as query parameters (the inverse of ``filter_params``), without empty ones and the default limit."""
    params = {"rule": rule, "reason": reason, "file": file, "run_id": run_id,
              "from": start.isoformat() if start else None, "to": end.isoformat() if end else None,
              "limit": str(limit) if limit != DEFAULT_LIMIT else None}
    return {key: value for key, value in params.items() if value}


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO-8601 date or date-time; without a time zone it is UTC (the pipeline's clock)."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace(" ", "T", 1) if len(value) > 10 else value)
    except ValueError as error:
        raise FilterError(f"{name}={value!r} is not an ISO-8601 date or time (e.g. 2026-01-31T14:00)") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def recent(conn, dead_filter: DeadLetterFilter) -> list[dict[str, Any]]:
    """The newest matching rows, at most ``dead_filter.limit``."""
    where, values = dead_filter.where()
    cursor = conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM dead_letter_events WHERE {where} ORDER BY failed_at DESC, id DESC LIMIT %s",
        [*values, dead_filter.limit],
    )
    return [dict(zip(COLUMNS, row)) for row in cursor.fetchall()]


def matching_count(conn, dead_filter: DeadLetterFilter) -> int:
    where, values = dead_filter.where()
    return conn.execute(f"SELECT count(*) FROM dead_letter_events WHERE {where}", values).fetchone()[0]


def counts_per_rule(conn, dead_filter: DeadLetterFilter) -> list[tuple[str, int]]:
    """Rows per broken rule (and ``parse``) under every filter but the rule itself, most frequent first.

    A row that broke two rules counts once for each, so the counts can add up to more than the rows.
    """
    where, values = dead_filter.where(with_rule=False)
    return [(rule, count) for rule, count in conn.execute(
        f"""
        SELECT rule, count(*) FROM (
            SELECT unnest(failed_rules) AS rule FROM dead_letter_events WHERE {where} AND error_kind <> 'parse'
            UNION ALL
            SELECT %s FROM dead_letter_events WHERE {where} AND error_kind = 'parse'
        ) AS broken
        GROUP BY rule ORDER BY count(*) DESC, rule
        """,
        [*values, PARSE, *values],
    ).fetchall()]


def export_rows(conn, dead_filter: DeadLetterFilter, max_rows: int = EXPORT_MAX_ROWS) -> Iterator[tuple]:
    """Every matching row (newest first, at most ``max_rows``), read in chunks by a server-side cursor."""
    where, values = dead_filter.where()
    with conn.cursor(name="dead_letter_export") as cursor:
        cursor.itersize = 2000
        cursor.execute(
            f"SELECT {', '.join(COLUMNS)} FROM dead_letter_events WHERE {where} ORDER BY failed_at DESC, id DESC LIMIT %s",
            [*values, max_rows],
        )
        yield from cursor


def csv_safe(value: object) -> object:
    """A cell value a spreadsheet will show as text, never run as a formula.

    Text that starts (after any blanks) with ``= + - @``, or with a tab or line break, gets a leading
    apostrophe, which spreadsheets display as text and do not evaluate. Numbers and dates are left alone.
    """
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, (list, tuple)):
        value = ";".join(str(item) for item in value)
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_TRIGGERS) or value.lstrip(" \u00a0").startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def csv_lines(rows: Iterable[Sequence[object]], header: Sequence[str] = COLUMNS) -> Iterator[str]:
    """CSV text, one record per item (header first), every cell passed through ``csv_safe`` and quoted."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([csv_safe(value) for value in row])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
