"""The audit: run the contract suite with Great Expectations over the rows waiting to be published.

1. ``prepare_candidates`` pins the batches the ledger shows as staged but unpublished, and marks which of
   their rows that parsed are candidates, one per event_id (the first occurrence: earliest batch, then file
   name, then line), leaving out event_ids already stored: the rows that would be published if every rule
   passed. The view ``audit_candidates`` shows them where they lie, in ``staging_events``: no row is copied.
2. ``validate`` runs the suite over that view through a GX checkpoint, rebuilds the Data Docs pages of
   that validation from an HTML-escaped copy of its result (``_build_data_docs``), and returns a JSON-able
   summary: per rule the number of failing rows, whether it passed, and a few sample event_ids; the
   table-level checks; the Data Docs address.

The publish step (``include.publish.every_minute``) routes rows with that summary.
"""

from __future__ import annotations

import html
import os
import sys
import time
from pathlib import Path

import psycopg

from include.contract.rules import SUITE_NAME, severities, suite_parameters
from include.quality.suite import build_suite
from include.results import AuditResult, RuleResult, TableCheck, Validation
from include.settings import Settings
from include.storage.connections import with_connection
from include.storage.locks import events_generation
from include.storage.privileges import analyze

DATASOURCE = "ecommerce_postgres"
ASSET = "audit_candidates"
BATCH_DEFINITION = "whole_table"
VALIDATION = "ecommerce_events_contract"
CHECKPOINT = "ecommerce_events_audit"
SAMPLE_IDS = 5
_DB_URL_VARIABLE = "ECOMMERCE_GX_DATABASE_URL"  # referenced as ${...} so no password lands in GX's config


def prepare_candidates(conn: psycopg.Connection) -> AuditResult:
    """Pin the unpublished batches and mark which of their rows are the candidates (one transaction).

    One per event_id: the first occurrence (earliest batch, file, line), and none for an event_id stored
    already. Only rows that parsed count: a row without an event_id never does (the contract declares it
    ``not_empty``, so the typing dead-letters it). The candidates stay where they are: the view ``audit_candidates``
    reads them from ``staging_events`` through the two small tables written here, the pinned batches and the
    rows left out (include/storage/migrations/columns.py ``audit_candidates_view_sql``)."""
    with conn.transaction():
        # read before the anti-join below: a write committed after this read moves the generation on, so the
        # publish sees it and checks its candidates against the stored ids again (include.storage.locks.publish_lock)
        generation = events_generation(conn)
        batches = conn.execute(
            "SELECT spark_query_id, spark_batch_id, input_files FROM pipeline_batch_ledger "
            "WHERE published_at IS NULL ORDER BY staged_at, spark_batch_id FOR UPDATE"
        ).fetchall()
        conn.execute("TRUNCATE audit_pinned_batches, audit_excluded_rows")
        with conn.cursor().copy("COPY audit_pinned_batches (spark_query_id, spark_batch_id) FROM STDIN") as copy:
            for query_id, batch_id, _ in batches:
                copy.write_row((query_id, batch_id))
        # The publish empties staging_events with TRUNCATE, so its statistics describe an empty table until
        # autovacuum looks again; the planner needs the real sizes for the statements below and for the
        # suite's scans of the view (what ANALYZE costs: docs/performance.md, "Audit").
        analyze(conn, "staging_events", "audit_pinned_batches")
        # Left out: every occurrence after the first of an event_id repeated in these batches (only the
        # repeated ids are sorted, found by one hash aggregate), and every row whose event_id is stored.
        conn.execute(
            """
            INSERT INTO audit_excluded_rows (staging_row_id)
            WITH parsed AS MATERIALIZED (
                SELECT s.staging_row_id, s.event_id, s.spark_batch_id, s.source_file, s.source_line
                  FROM staging_events s JOIN audit_pinned_batches USING (spark_query_id, spark_batch_id)
                 WHERE s.parse_errors IS NULL AND s.event_id IS NOT NULL
            ), repeated AS MATERIALIZED (
                SELECT event_id FROM parsed GROUP BY event_id HAVING count(*) > 1
            )
            SELECT staging_row_id FROM (
                SELECT p.staging_row_id, row_number() OVER (
                           PARTITION BY p.event_id
                           ORDER BY p.spark_batch_id, p.source_file, p.source_line, p.staging_row_id) AS occurrence
                  FROM parsed p JOIN repeated USING (event_id)
            ) later WHERE occurrence > 1
            UNION
            SELECT p.staging_row_id FROM parsed p
             WHERE EXISTS (SELECT 1 FROM ecommerce_events e WHERE e.event_id = p.event_id)
            """
        )
        analyze(conn, "audit_excluded_rows")
        candidates = conn.execute("SELECT count(*) FROM audit_candidates").fetchone()[0]
    return AuditResult(batches=[(str(query_id), batch_id) for query_id, batch_id, _ in batches],
                       input_files=sum(files for _, _, files in batches), candidate_rows=candidates,
                       events_generation=generation)


def _context(settings: Settings):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(settings.great_expectations_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _sqlalchemy_url(settings: Settings) -> str:
    from sqlalchemy.engine import URL

    return URL.create(
        "postgresql+psycopg2", username=settings.postgres_user, password=settings.postgres_password,
        host=settings.postgres_host, port=settings.postgres_port, database=settings.postgres_db,
        query=settings.postgres_parameters,  # psycopg2 hands them to libpq (sslmode, options, ...)
    ).render_as_string(hide_password=False)


def _checkpoint(context, settings: Settings, table: str = ASSET, audited_at: str | None = None):
    """Register (or update) datasource, asset, suite, validation definition and checkpoint; return it.

    ``table`` is the table validated: ``audit_candidates`` for the every-minute runs, another table of the
    same shape for backfills and replays (``include.publish.backfill``), each with its own asset and checkpoint.
    """
    import great_expectations as gx

    suffix = "" if table == ASSET else f"__{table}"

    try:
        datasource = context.data_sources.get(DATASOURCE)
    except (KeyError, ValueError):
        datasource = context.data_sources.add_postgres(DATASOURCE, connection_string="${%s}" % _DB_URL_VARIABLE)  # noqa: UP031
    try:
        asset = datasource.get_asset(table)
    except LookupError:
        asset = datasource.add_table_asset(table, table_name=table)
    try:
        batch_definition = asset.get_batch_definition(BATCH_DEFINITION)
    except (KeyError, ValueError, LookupError):
        batch_definition = asset.add_batch_definition_whole_table(BATCH_DEFINITION)
    suite = context.suites.add_or_update(build_suite(suite_parameters(settings, audited_at), severities(settings)))
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=VALIDATION + suffix, data=batch_definition, suite=suite)
    )
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=CHECKPOINT + suffix,
            validation_definitions=[validation],
            actions=[],  # the Data Docs are built by _build_data_docs, from an escaped copy of the result
            result_format={"result_format": "SUMMARY", "unexpected_index_column_names": ["event_id"],
                           "partial_unexpected_count": SAMPLE_IDS},
        )
    )


def escape_data_values(value):
    """``value`` (a validation result's ``result`` dict) with every string HTML-escaped, keys excepted.

    GX 1.x escapes the parameters of its sentence templates but writes a rule's sample values (the
    unexpected values, their counts, the event_ids of the failing rows) into the Data Docs' tables as raw
    HTML. Those values are the feed's own text: a category ``<img src=x onerror=...>`` would run its
    script in the Airflow UI, where the plugin serves the Data Docs to logged-in users. Escaped here, the
    page shows the text as it arrived."""
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, list | tuple):
        return [escape_data_values(item) for item in value]
    if isinstance(value, dict):
        return {key: escape_data_values(item) for key, item in value.items()}
    return value


def _build_data_docs(context, checkpoint_result) -> None:
    """Rebuild the Data Docs pages of this run's validations (and the index) from escaped copies.

    The checkpoint has just stored each validation result; the stored copy, which only the Data Docs
    read, is replaced by one whose data values are escaped (``escape_data_values``). The result returned
    to the caller, which the routing reads, keeps the values as they are."""
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    store = context.validation_results_store
    keys = list(checkpoint_result.run_results)
    for key in keys:
        stored = store.get(key)
        for outcome in stored.results:
            outcome.result = escape_data_values(outcome.result or {})
        store.set(key, stored)
    context.build_data_docs(resource_identifiers=[*keys, ExpectationSuiteIdentifier(name=SUITE_NAME)])


def prune_validation_results(settings: Settings) -> int:
    """Keep the newest ``data_docs_keep_runs`` validation results (a per-minute DAG makes 1,440 a day)."""
    store = settings.great_expectations_dir / "gx" / "uncommitted" / "validations"
    results = sorted(store.rglob("*.json"), key=lambda p: p.stat().st_mtime) if store.exists() else []
    stale = results[: max(len(results) - settings.data_docs_keep_runs, 0)]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def data_docs_index(settings: Settings) -> Path:
    return settings.great_expectations_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"


def validate(settings: Settings, airflow_run_id: str, table: str = ASSET) -> Validation:
    """Run the suite over ``table`` (``audit_candidates``); return per-rule failing-row counts and table checks."""
    import great_expectations as gx

    started = time.monotonic()
    # one moment for the rules that depend on time, in Great Expectations and in the routing after it
    audited_at = with_connection(settings, lambda conn: conn.execute("SELECT now()").fetchone()[0]).isoformat()
    os.environ[_DB_URL_VARIABLE] = _sqlalchemy_url(settings)
    context = _context(settings)
    checkpoint = _checkpoint(context, settings, table, audited_at)
    prune_validation_results(settings)
    result = checkpoint.run(
        expectation_parameters=suite_parameters(settings, audited_at),
        run_id=gx.RunIdentifier(run_name=airflow_run_id),
    )
    _build_data_docs(context, result)
    rules: dict[str, RuleResult] = {}
    table_checks: dict[str, TableCheck] = {}
    for validation_result in result.run_results.values():
        for outcome in validation_result.results:
            config = outcome.expectation_config
            name = config.meta["rule"]
            details = outcome.result or {}
            if config.meta.get("routes_rows"):
                count = details.get("unexpected_count")
                if count is None:  # UnexpectedRowsExpectation reports its row count as observed_value
                    count = details.get("observed_value")
                samples = [
                    entry["event_id"] for entry in details.get("partial_unexpected_index_list") or []
                    if isinstance(entry, dict) and "event_id" in entry
                ]
                rules[name] = RuleResult(
                    unexpected_count=int(count or 0), success=bool(outcome.success),
                    description=config.description, sample_event_ids=samples[:SAMPLE_IDS],
                    exception=(outcome.exception_info or {}).get("exception_message"),
                )
            else:
                table_checks[name] = TableCheck(
                    success=bool(outcome.success),
                    observed_value=details.get("observed_value", details.get("unexpected_count")),
                )
    broken = [name for name, rule in rules.items() if rule.exception]
    if broken:
        raise RuntimeError(f"Great Expectations could not evaluate rules {broken}: "
                           + "; ".join(str(rules[n].exception) for n in broken))
    return Validation(suite=SUITE_NAME, success=bool(result.success), rules=rules, table_checks=table_checks,
                      data_docs=str(data_docs_index(settings)),
                      validation_seconds=round(time.monotonic() - started, 2), audited_at=audited_at)


def audit_staged_batches(settings: Settings, airflow_run_id: str) -> AuditResult:
    """The ``audit`` task: pin the staged, unpublished batches and validate their candidate rows."""
    # include/airflow/preload.py: under a scheduler or Celery worker, the process that forked this task has
    # imported Great Expectations already (seconds a run would pay otherwise)
    preloaded = "great_expectations" in sys.modules
    pinned = with_connection(settings, prepare_candidates)
    if not pinned.batches:
        print("no staged batch waits for publishing")
        return pinned
    pinned.validation = validate(settings, airflow_run_id)
    failing = {name: r.unexpected_count for name, r in pinned.validation.rules.items() if r.unexpected_count}
    print(f"audited {pinned.candidate_rows} rows of {len(pinned.batches)} batch(es) in "
          f"{pinned.validation.validation_seconds} s; failing rows per rule: {failing or 'none'}; "
          f"Data Docs: {pinned.validation.data_docs}; Great Expectations "
          f"{'preloaded by the process that forked this task' if preloaded else 'imported by this task'}")
    return pinned
