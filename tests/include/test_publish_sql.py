"""The publish paths' shared statements, as psycopg composes them: quoted identifiers from the contract's column
lists, the relations each statement reads named, values as placeholders. (What they write, against the code they
replaced: tests/integration/test_publish_differential.py.)"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from psycopg.sql import SQL, Identifier, Placeholder

from include.contract.columns import COLUMNS, EVENT_COLUMNS
from include.publish import sql
from include.publish.replay import selection

pytestmark = pytest.mark.unit


def qualifiers(statement) -> set[str]:
    """The relations the statement's qualified column names name (relation.column, quoted or not)."""
    return set(re.findall(r'"?([a-z_]+)"?\."?[a-z_]+"?', statement.as_string()))


def test_the_events_insert_names_its_candidates_and_conflicts_only_when_asked():
    kwargs = {"run_id": Placeholder(), "where": sql.passes_every_rule("revalidation_candidates"),
              "returning": ("event_id", "event_time"), "order_by": ("staging_row_id",)}
    checked = sql.insert_events("revalidation_candidates", **kwargs).as_string()
    plain = sql.insert_events("revalidation_candidates", **kwargs, skip_stored=False).as_string()
    assert checked.count("ON CONFLICT (event_id) DO NOTHING") == 1 and "ON CONFLICT" not in plain
    assert checked.replace(" ON CONFLICT (event_id) DO NOTHING", "") == plain
    # every column of an event, from the contract's list, in its order, read from the candidates by name
    listed = plain[plain.index("(") + 1:plain.index(")")]
    assert listed == ", ".join(f'"{c}"' for c in (*EVENT_COLUMNS, *sql.RUN_LINEAGE))
    assert qualifiers(sql.insert_events("revalidation_candidates", **kwargs)) == {"revalidation_candidates",
                                                                                   "rule_failures"}
    assert 'ORDER BY "revalidation_candidates"."staging_row_id"' in plain and "%s" in plain


def test_a_dead_letter_carries_every_lineage_column_of_the_contract_and_the_run():
    lineage = {c.name for c in COLUMNS if c.role == "lineage"}
    assert set(sql.DEAD_LETTER_LINEAGE) == lineage | set(sql.RUN_LINEAGE)
    values = sql.dead_letter_lineage("staging_events", Identifier("pipeline_batch_ledger", "airflow_run_id"))
    assert values.as_string().split(", ") == [
        '"pipeline_batch_ledger"."airflow_run_id"' if name == "airflow_run_id" else f'"staging_events"."{name}"'
        for name in sql.DEAD_LETTER_LINEAGE]


def test_a_move_record_quotes_its_direction_and_cause():
    moves = sql.record_moves(Identifier("resolved"), direction="to_events", cause="backfill", run_id=Placeholder(),
                             reason=Placeholder()).as_string()
    assert "SELECT 'to_events', 'backfill', " in moves and moves.endswith('%s, NULL, %s FROM "resolved"')


def test_the_replay_selection_passes_every_value_as_a_parameter():
    """An operator's file name or rule reaches PostgreSQL as a parameter, never as SQL text."""
    evil = "x.csv' OR '1'='1"
    where, params = selection("price_in_range'; --", datetime(2026, 1, 1, tzinfo=UTC), None, evil, up_to_id=7)
    text = where.as_string()
    assert evil not in text and "price_in_range" not in text
    assert qualifiers(where) == {"dead_letter_events"}
    assert params["file"] == evil and params["up_to_id"] == 7
    assert text.count("%(file)s") == 2 and "LIKE '%%/' ||" in text
    assert SQL("SELECT 1 WHERE {}").format(where).as_string().startswith("SELECT 1 WHERE \"dead_letter_events\"")
