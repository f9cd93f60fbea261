"""Each contract rule on a passing and a failing row, through the real audit (Great Expectations on
PostgreSQL) and the real publish: the routing of every rule agrees with GX's own count, and each failing
row is dead-lettered with exactly the rule it broke."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from include.contract.rules import ROW_RULES, routing_predicate, severities, suite_parameters
from include.publish.every_minute import publish
from include.quality.audit import data_docs_index, prepare_candidates, validate

pytestmark = [pytest.mark.integration, pytest.mark.db]

NOW = datetime.now(UTC)
BASE = {
    "user_id": 1, "session_id": "s-1", "event_type": "purchase", "product_id": 5, "category": "books",
    "price": 10, "quantity": 2, "total_amount": 20, "user_segment": "new", "event_time": NOW - timedelta(minutes=1),
}
# rule -> the one change to a valid row that breaks exactly that rule
FAILING = {
    "event_id_is_uuid": {"event_id": "not-a-uuid"},
    "event_type_known": {"event_type": "<script>alert('event_type')</script>"},
    "price_present": {"price": None, "total_amount": None},
    "price_in_range": {"price": 0, "total_amount": 0},
    "quantity_present": {"quantity": None, "total_amount": None},
    "quantity_at_least_one": {"quantity": 0, "total_amount": 0},
    "product_id_present": {"product_id": None},
    "product_id_positive": {"product_id": 0},
    "user_required_for_action": {"user_id": None, "user_segment": None},
    "event_time_not_in_future": {"event_time": NOW + timedelta(hours=1)},
    "category_known": {"category": "<img src=x onerror=alert('category')>"},
    "user_segment_known": {"user_segment": "gold"},
    "total_amount_is_price_times_quantity": {"total_amount": 999},
}
PASSING = {
    "anonymous view (no user needed)": {"event_type": "view", "user_id": None, "user_segment": None},
    "v1 row without category and segment": {"category": None, "user_segment": None},
    "price exactly MAX_PRICE": {"price": 500, "quantity": 1, "total_amount": 500},
    "clock skew within tolerance": {"event_time": NOW + timedelta(minutes=2)},
    "plain valid purchase": {},
}
COLUMNS = ("event_id",) + tuple(BASE) + ("is_late_arrival", "schema_version", "source_file", "source_line", "raw_data",
                                          "parse_errors")


def stage(conn, rows: list[dict]) -> str:
    query_id = str(uuid.uuid4())
    with conn.transaction():
        with conn.cursor().copy(
            f"COPY staging_events (spark_query_id, spark_batch_id, spark_partition, {', '.join(COLUMNS)}) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row((query_id, 0, 0, *(row[c] for c in COLUMNS)))
        conn.execute(
            "INSERT INTO pipeline_batch_ledger (spark_query_id, spark_batch_id, airflow_run_id, input_files,"
            " input_rows, started_at) VALUES (%s, 0, 'test', 1, %s, now())",
            (query_id, len(rows)),
        )
    return query_id


def _rows(source_file: str, lines: dict[int, dict]) -> list[dict]:
    # the same ids each time it is called, so two publishes of the corpus can be compared row for row
    return [{"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source_file}:{line}")), **BASE, "parse_errors": None,
             **change, "is_late_arrival": False, "schema_version": "v3",
             "source_file": source_file, "source_line": line, "raw_data": f"line {line}"}
            for line, change in lines.items()]


@pytest.fixture
def audited(pipeline, tmp_path):
    pipeline.reset()
    settings = replace(pipeline.settings, max_price=500.0, great_expectations_dir=tmp_path / "gx")
    cases = [("fail", name, change) for name, change in FAILING.items()]
    cases += [("pass", name, change) for name, change in PASSING.items()]
    rows = _rows("/landing/rules.csv", {line: change for line, (_, _, change) in enumerate(cases, start=2)})
    with psycopg.connect(settings.postgres_conninfo) as conn:
        stage(conn, rows)
        pinned = prepare_candidates(conn)
    pinned.validation = validate(settings, "rules_test")
    return settings, cases, pinned


def test_every_rule_counts_exactly_its_failing_row_and_routing_agrees(audited, pipeline):
    settings, _, result = audited
    assert set(result.validation.rules) == {rule.name for rule in ROW_RULES} == set(FAILING)
    with psycopg.connect(settings.postgres_conninfo) as conn:
        for rule in ROW_RULES:
            gx_count = result.validation.rules[rule.name].unexpected_count
            routed = conn.execute(
                "SELECT count(*) FROM audit_candidates WHERE "
                f"{routing_predicate(rule, suite_parameters(settings, result.validation.audited_at))}"
            ).fetchone()[0]
            assert gx_count == 1, (rule.name, gx_count)
            assert routed == gx_count, rule.name
    assert result.validation.success is False
    assert data_docs_index(settings).is_file()


def test_the_data_docs_show_the_feeds_markup_as_text_never_as_html(audited):
    """The failing category and event type are HTML written by the feed; the validation page lists them as
    sample values, escaped, so the Airflow UI that serves the page never runs them."""
    settings, _, _ = audited
    [page] = data_docs_index(settings).parent.glob("validations/**/rules_test/*/*.html")
    text = page.read_text()
    assert "&lt;img src=x onerror=alert(&#x27;category&#x27;)&gt;" in text
    assert "&lt;script&gt;alert(&#x27;event_type&#x27;)&lt;/script&gt;" in text
    assert "<img src=x" not in text and "alert('" not in text


def test_publish_dead_letters_each_failing_row_with_exactly_its_rule(audited, pipeline):
    settings, cases, result = audited
    # every rule at severity drop, the domain rules too (their default is warn: tests/integration/test_rule_severities.py)
    settings = replace(settings, rule_severity=json.dumps({rule.name: "drop" for rule in ROW_RULES}))
    with psycopg.connect(settings.postgres_conninfo) as conn:
        summary = publish(conn, result, settings, "rules_test")
    assert (summary.total, summary.valid, summary.invalid, summary.duplicates) == (
        len(cases), len(PASSING), len(FAILING), 0)
    dead = {line: (rules, reason) for line, rules, reason in pipeline.query(
        "SELECT source_line, failed_rules, validation_errors FROM dead_letter_events WHERE error_kind = 'rule'")}
    stored = {line for (line,) in pipeline.query("SELECT source_line FROM ecommerce_events")}
    for line, (expected, name, _) in enumerate(cases, start=2):
        if expected == "fail":
            assert dead[line][0] == [name], (name, dead.get(line))
            assert dead[line][1].startswith(f"{name}: ")
            assert line not in stored
        else:
            assert line in stored and line not in dead, name
    assert "price_in_range: price is not in (0, 500.0] (MAX_PRICE) (price = 0.00)" in {r for _, r in dead.values()}


def test_a_routing_that_disagrees_with_great_expectations_publishes_nothing(audited, pipeline):
    from include.publish.sql import RoutingMismatch

    settings, _, result = audited
    result.validation.rules["price_in_range"].unexpected_count += 1
    with psycopg.connect(settings.postgres_conninfo) as conn, pytest.raises(RoutingMismatch, match="price_in_range"):
        publish(conn, result, settings, "rules_test")
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == 0
    assert pipeline.scalar("SELECT count(*) FROM dead_letter_events") == 0
    assert pipeline.scalar("SELECT count(*) FROM pipeline_batch_ledger WHERE published_at IS NULL") == 1


def test_rows_without_an_event_id_are_each_dead_lettered_not_counted_as_duplicates(pipeline, tmp_path):
    """Rows that share no id cannot be copies of each other: every row missing its event_id is dead-lettered
    with its own reason; only a real repeat of an event_id (here line 6 of line 5) counts as a duplicate.
    The rows are staged as the typing stages them: event_id is ``not_empty`` in the contract file, so a row
    without one carries the reason "event_id is empty" and is a parse dead letter; no rule sees it."""
    pipeline.reset()
    settings = replace(pipeline.settings, great_expectations_dir=tmp_path / "gx")
    repeated = str(uuid.uuid4())
    ids = {2: None, 3: None, 4: None, 5: repeated, 6: repeated}
    rows = _rows("/landing/ids.csv", {
        line: {"event_id": event_id, "parse_errors": None if event_id else "event_id is empty"}
        for line, event_id in ids.items()})
    with psycopg.connect(settings.postgres_conninfo) as conn:
        stage(conn, rows)
        result = prepare_candidates(conn)
        result.validation = validate(settings, "ids_test")
        summary = publish(conn, result, settings, "ids_test")
    assert (summary.total, summary.valid, summary.invalid, summary.duplicates) == (5, 1, 3, 1)
    assert pipeline.query("SELECT source_line, error_kind, failed_rules, validation_errors FROM dead_letter_events "
                          "ORDER BY source_line") == [(line, "parse", [], "event_id is empty") for line in (2, 3, 4)]
    assert pipeline.query("SELECT source_line FROM ecommerce_events") == [(5,)]


def _publish_corpus(pipeline, settings, *, audit_generation_known: bool) -> dict[str, list[tuple]]:
    """From an empty database: publish a first batch, then a second one that repeats two of its event_ids and
    one of its own and has a failing row of every rule; return what was written."""
    pipeline.reset()
    first = _rows("/landing/first.csv", {line: {} for line in range(2, 7)})
    second = _rows("/landing/second.csv", {line: change for line, change in enumerate(
        [*FAILING.values(), *PASSING.values()], start=2)})
    second[-1]["event_id"], second[-2]["event_id"] = first[0]["event_id"], first[1]["event_id"]  # stored already
    second.append({**second[-3], "source_line": len(second) + 2, "raw_data": "a repeat within the batch"})
    with psycopg.connect(settings.postgres_conninfo) as conn:
        for rows in (first, second):
            stage(conn, rows)
            audit = prepare_candidates(conn)
            audit.validation = validate(settings, "differential")
            if not audit_generation_known:
                audit.events_generation = None  # as an audit of an older release: the publish checks every id
            publish(conn, audit, settings, "differential")
    return {
        "events": pipeline.query(
            "SELECT event_id, source_file, source_line, price, event_time, schema_version, airflow_run_id "
            "FROM ecommerce_events ORDER BY source_file, source_line"),
        "dead_letters": pipeline.query(
            "SELECT source_file, source_line, event_id, error_kind, failed_rules, validation_errors, raw_data "
            "FROM dead_letter_events ORDER BY source_file, source_line"),
        "metrics": pipeline.query(
            "SELECT total_records, valid_records, invalid_records, duplicate_records, late_records "
            "FROM data_quality_metrics ORDER BY id"),
    }


def test_the_plain_insert_stores_exactly_what_on_conflict_stores(pipeline, tmp_path, capsys):
    """The publish inserts without ON CONFLICT when no event was written since the audit; the reference,
    ON CONFLICT, is what an audit without a known write generation gets. Same corpus, same tables."""
    settings = replace(pipeline.settings, max_price=500.0, great_expectations_dir=tmp_path / "gx")
    reference = _publish_corpus(pipeline, settings, audit_generation_known=False)
    assert capsys.readouterr().out.count("events were written since the audit") == 2
    plain = _publish_corpus(pipeline, settings, audit_generation_known=True)
    assert "events were written since the audit" not in capsys.readouterr().out
    assert plain == reference
    assert [m[3] for m in plain["metrics"]] == [0, 3]  # two ids stored by the first batch, one repeated in the second
    # the first batch, the second's passing rows that are not duplicates, and its rows that break a rule of
    # severity warn (by default the two domain rules): stored, with the violation recorded
    warned = [rule.name for rule in ROW_RULES if severities(settings)[rule.name] == "warn"]
    assert len(plain["events"]) == 5 + (len(PASSING) - 2) + len(warned)
    assert len(plain["dead_letters"]) == len(FAILING) - len(warned)


def test_an_event_stored_between_audit_and_publish_is_a_duplicate_not_an_error(pipeline, tmp_path, capsys):
    """A replay or backfill that stores one of the audited event_ids before the publish runs (it holds the
    publish lock, so it moves the write generation on): the publish checks the ids again and counts the row
    as a duplicate, where a plain INSERT would fail on the primary key."""
    from include.storage.locks import publish_lock

    pipeline.reset()
    settings = replace(pipeline.settings, great_expectations_dir=tmp_path / "gx")
    rows = _rows("/landing/race.csv", {line: {} for line in range(2, 6)})
    with psycopg.connect(settings.postgres_conninfo) as conn:
        stage(conn, rows)
        audit = prepare_candidates(conn)
        audit.validation = validate(settings, "race")
        with psycopg.connect(settings.postgres_conninfo) as other, other.transaction():
            publish_lock(other)
            other.execute("INSERT INTO ecommerce_events (event_id, event_type, event_time, schema_version, "
                          "source_file, source_line) VALUES (%s, 'view', now(), 'v3', '/archive/replayed.csv', 9)",
                          (rows[2]["event_id"],))
        summary = publish(conn, audit, settings, "race")
    assert (summary.total, summary.valid, summary.invalid, summary.duplicates) == (4, 3, 0, 1)
    assert "write generation" in capsys.readouterr().out
    assert pipeline.scalar("SELECT source_file FROM ecommerce_events WHERE event_id = %s",
                           (rows[2]["event_id"],)) == "/archive/replayed.csv"


def test_a_publish_whose_audit_another_audit_replaced_publishes_nothing(pipeline, tmp_path):
    """The candidates are a view over the batches the latest audit pinned. An audit's publish that runs after
    a newer audit pinned more batches (a retry of an old task instance) would route rows GX never counted for
    it: it refuses, and the newer audit's publish stores every batch once."""
    from include.publish.every_minute import AuditOutOfDate

    pipeline.reset()
    settings = replace(pipeline.settings, great_expectations_dir=tmp_path / "gx")
    with psycopg.connect(settings.postgres_conninfo) as conn:
        stage(conn, _rows("/landing/first.csv", {line: {} for line in range(2, 5)}))
        older = prepare_candidates(conn)
        older.validation = validate(settings, "older")
        stage(conn, _rows("/landing/second.csv", {line: {} for line in range(2, 6)}))
        newer = prepare_candidates(conn)
        newer.validation = validate(settings, "newer")
        with pytest.raises(AuditOutOfDate, match="pinned 2 batch"):
            publish(conn, older, settings, "older")
        assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == 0
        summary = publish(conn, newer, settings, "newer")
    assert (summary.total, summary.valid, len(summary.batches)) == (7, 7, 2)
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == 7


def test_rows_at_the_future_edge_are_judged_at_one_moment_by_the_audit_and_by_the_publish(pipeline, tmp_path):
    """``event_time_not_in_future`` compares with the moment of the validation, and the publish routes by that
    same moment however long after the audit it runs. Rows a second either side of "now + 5 minutes": judged by
    two clocks (``now()`` in Great Expectations, again in the routing seconds later) the counts would differ and
    every retry would fail with RoutingMismatch."""
    pipeline.reset()
    settings = replace(pipeline.settings, great_expectations_dir=tmp_path / "gx")
    with psycopg.connect(settings.postgres_conninfo) as conn:
        edge = conn.execute("SELECT now() + interval '5 minutes'").fetchone()[0]
        stage(conn, _rows("/landing/edge.csv", {line: {"event_time": edge + timedelta(seconds=offset)}
                                               for line, offset in enumerate((-1, 1, 2, 3, 4, 6, 9), start=2)}))
        pinned = prepare_candidates(conn)
    pinned.validation = validate(settings, "edge_test")
    future = pinned.validation.rules["event_time_not_in_future"].unexpected_count
    time.sleep(5)  # the publish runs seconds after the audit: now() has moved past some of those rows
    with psycopg.connect(settings.postgres_conninfo) as conn:
        summary = publish(conn, pinned, settings, "edge_test")
    assert future >= 4 and summary.invalid == future and summary.valid == 7 - future
    assert pipeline.scalar("SELECT count(*) FROM dead_letter_events WHERE 'event_time_not_in_future' = "
                           "ANY(failed_rules)") == future
