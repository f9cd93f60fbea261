"""The SQL an alert hands the operator to paste into psql, composed with ``psycopg.sql``.

Every value the feed or a trigger controls (a file path, a column name, a run id) goes in as a literal
(``sql.Literal``), never as text of the statement, so a suggestion is one SELECT whatever the value holds: a
file named ``x'; DROP TABLE ecommerce_events; --`` is a string to compare with, nothing more. The tables and
columns named are the pipeline's own; were one ever to come from the feed, it would go in as ``sql.Identifier``.

A query is rendered to text without a connection: ``Composable.as_string()`` takes no context since psycopg
3.2, and then renders generically (a value holding a backslash becomes ``E'...'``), which every PostgreSQL
reads the same. Some characters are spelled with ``chr()`` instead of being written between the quotes: a
backtick, which would close the Slack code block the query is shown in, and the invisible ones (``HIDDEN``:
control characters, zero-width and bidirectional marks), so that what the operator reads is what runs.
"""

from __future__ import annotations

import re

from psycopg import sql

from include.ops.alerts.message import HIDDEN

_SPELLED = re.compile(f"([`{HIDDEN.pattern[1:-1]}])")

CIRCUIT_BREAKER_STATE = "SELECT * FROM pipeline_circuit_breaker;"


def text_literal(value: str) -> sql.Composable:
    """``value`` as an SQL string literal; its backticks and invisible characters as ``chr(n)``, joined on."""
    parts = _SPELLED.split(value)  # text, spelled character, text, ...
    if len(parts) == 1:
        return sql.Literal(value)
    pieces = [sql.SQL("chr({})").format(sql.Literal(ord(part))) if odd else sql.Literal(part)
              for odd, part in ((index % 2 == 1, part) for index, part in enumerate(parts)) if odd or part]
    return sql.SQL("({})").format(sql.SQL(" || ").join(pieces))


def _text(query: sql.Composable) -> str:
    return query.as_string()


def dead_letters_of_run(run_id: str) -> str:
    return _text(sql.SQL(
        "SELECT source_file, source_line, failed_rules, validation_errors FROM dead_letter_events "
        "WHERE airflow_run_id = {} ORDER BY id;").format(text_literal(run_id)))


def dead_letters_per_rule(window_minutes: int) -> str:
    return _text(sql.SQL(
        "SELECT rule, count(*) FROM dead_letter_events, unnest(failed_rules) AS rule "
        "WHERE failed_at > now() - make_interval(mins => {}) GROUP BY rule ORDER BY 2 DESC;").format(
            sql.Literal(window_minutes)))


def quarantined_file(record_id: int) -> str:
    return _text(sql.SQL("SELECT * FROM quarantined_files WHERE id = {};").format(sql.Literal(record_id)))


def quarantined_between(first_id: int, last_id: int) -> str:
    return _text(sql.SQL(
        "SELECT delivery_id, source_file, quarantine_path, reason, quarantined_at FROM quarantined_files "
        "WHERE id BETWEEN {} AND {} ORDER BY id;").format(sql.Literal(first_id), sql.Literal(last_id)))


LANDING_WAITS = "SELECT name, reason, first_seen_at FROM landing_waits ORDER BY first_seen_at;"


def new_columns_of_run(run_id: str | None) -> str:
    return _text(sql.SQL(
        "SELECT column_name, first_file, sample_value FROM feed_columns_seen "
        "WHERE airflow_run_id IS NOT DISTINCT FROM {} ORDER BY column_name;").format(_optional_literal(run_id)))


def _optional_literal(value: str | None) -> sql.Composable:
    return sql.NULL if value is None else text_literal(value)


def new_column_values(name: str) -> str:
    """The commonest values of the feed column ``name`` the contract does not know (kept in rescued_data)."""
    return _text(sql.SQL(
        "SELECT rescued_data->>{name}, count(*) FROM ecommerce_events WHERE rescued_data ? {name} "
        "GROUP BY 1 ORDER BY 2 DESC LIMIT 20;").format(name=text_literal(name)))


def moves_of_request(request_key: str) -> str:
    """The moves the chunks of one backfill (or Trigger-form reprocess) made."""
    return _text(sql.SQL(
        "SELECT direction, event_id, source_file, source_line, failed_rules, reason, moved_at FROM dead_letter_moves "
        "WHERE airflow_run_id IN (SELECT airflow_run_id FROM pipeline_backfill_ledger WHERE request_key = {}) "
        "ORDER BY id;").format(text_literal(request_key)))
