"""The conditions the pipeline alerts on, what each message says, and the checks the DAG and its callbacks
call: after the quality gate (recovery of failures, a breach, dead letters growing), a new column, no fresh
data. Those of the landing directory are in ``landing``. Each check raises its alerts through ``state``
(de-duplicated, bounded). ``after_quality_gate`` and ``alert_new_columns`` never raise; ``check_freshness`` and
``check_dead_letter_growth`` need the database, and their callers catch what they raise.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from include.names import DAG_ID
from include.ops.alerts import queries
from include.ops.alerts.message import CRITICAL, ERROR, WARNING, Alert, Markup, links, shorten
from include.ops.alerts.state import clear_alerts, connection, raise_alert, raise_alerts
from include.results import PublishSummary
from include.settings import Settings

log = logging.getLogger(__name__)

# the conditions (alert keys)
QUALITY_BREACH = "quality_breach"
TASK_FAILED = "task_failed"
BREAKER_OPEN = "circuit_breaker_open"
NO_FRESH_DATA = "no_fresh_data"
DEAD_LETTER_GROWTH = "dead_letter_growth"
NEW_COLUMN = "new_column"       # + ":" + the column name: one alert per name, ever
BACKFILL_BREACH = "backfill_quality_breach"  # + ":" + the backfill: judged once, on its totals
# a run that got through publish proves these are over
CLEARED_BY_A_PUBLISHED_RUN = (TASK_FAILED, BREAKER_OPEN)


def quality_breach_alert(summary: PublishSummary, problems: list[str], threshold: float, run_id: str | None,
                         base_url: str) -> Alert:
    top = [f"{r.rule}: {r.rows} row(s), e.g. event_id {', '.join(r.sample_event_ids[:3]) or 'n/a'}"
           for r in summary.failing_rules[:3]]
    below = [f"validity<{threshold}"] if summary.total and summary.validity_rate < threshold else []
    fingerprint = ";".join(below + [f"table_check:{name}" for name in summary.breached_checks])
    return Alert(
        WARNING, QUALITY_BREACH, fingerprint or "breach", "data quality breach", run_id=run_id,
        details=(*problems,
                 f"validity {summary.validity_rate}% (MIN_VALIDITY_RATE {threshold}%); rows: {summary.total} "
                 f"total, {summary.valid} valid, {summary.invalid} dead-lettered, "
                 f"{summary.duplicates} duplicates",
                 *(f"top failing rule {line}" for line in top),
                 *([f"stored with a warn-level violation (not dead-lettered): {summary.warned} row(s); "
                    + "; ".join(f"{r.rule}: {r.rows}" for r in summary.warnings)] if summary.warnings else [])),
        links=links(base_url, run_id), queries=_dead_letters(run_id),
    )


def task_failed_alert(task_id: str, error: str, tries: int | None, run_id: str | None, base_url: str,
                      breaker_note: str | None = None) -> Alert:
    after = f" after {tries} tries" if tries else ""
    return Alert(ERROR, TASK_FAILED, task_id, Markup("task `{}` failed{}", (task_id, after)), run_id=run_id,
                 details=tuple(d for d in (f"error: {shorten(error)}", breaker_note,
                                           "the task log in the Airflow UI has the full trace") if d),
                 links=links(base_url, run_id))


def breaker_open_alert(failures: int, last_error: str, cooldown_seconds: int, run_id: str | None,
                       base_url: str) -> Alert:
    return Alert(CRITICAL, BREAKER_OPEN, "open", f"circuit breaker OPENED after {failures} consecutive failed run(s)",
                 run_id=run_id,
                 details=(f"last error: {shorten(last_error)}",
                          f"runs skip the ingest; one trial run after {cooldown_seconds} s "
                          "(CIRCUIT_BREAKER_COOLDOWN_SECONDS); landed files wait, nothing is lost",
                          "what to do: docs/operations.md"),
                 links=links(base_url, run_id), queries={"its state": queries.CIRCUIT_BREAKER_STATE})


def backfill_breach_alert(chunk, done: dict, rate: float, problems: list[str], run_id: str | None) -> Alert:
    """A whole backfill (or Trigger-form reprocess) whose re-derived rows breach quality: one alert for it, on
    its totals (``chunk``: its last chunk, ``done``: include/publish/coverage.py ``progress``)."""
    return Alert(
        WARNING, f"{BACKFILL_BREACH}:{chunk.request_key}", f"validity<{rate}",
        f"{chunk.request_key} re-derived: data quality breach", run_id=run_id,
        details=(*problems,
                 f"window {chunk.request_start:%Y-%m-%d %H:%M} to {chunk.request_end:%Y-%m-%d %H:%M} UTC"
                 + (f", reason: {chunk.reason}" if chunk.reason else ""),
                 f"{done['rows']} rows re-derived in {done['chunks']} chunk(s): {done['pass']} valid, "
                 f"{done['rule'] + done['parse']} dead-lettered, {done['duplicate']} duplicates; moved "
                 f"{done['moved_to_events']} into ecommerce_events and {done['moved_to_dead_letter']} into "
                 "dead_letter_events"),
        links=links(airflow_base_url(), run_id),
        queries={"its moves": queries.moves_of_request(chunk.request_key)})


def new_column_alert(column: dict[str, str | None], run_id: str | None, base_url: str) -> Alert:
    """A column the contract does not know, first seen in the feed (``feed_columns_seen``)."""
    name = column["name"]
    return Alert(WARNING, f"{NEW_COLUMN}:{name}", name, f"new column {name!r} in the feed", run_id=run_id,
                 details=(f"first seen in {column['source_file']}; sample value {shorten(str(column['sample']), 80)!r}",
                          "its values are kept per row in ecommerce_events.rescued_data (and "
                          "dead_letter_events.rescued_data)"),
                 links=links(base_url, run_id), queries={"its values": queries.new_column_values(name)})


def dead_letter_growth_alert(rows: int, window: int, threshold: float, run_id: str | None, base_url: str) -> Alert:
    """``rows`` dead-lettered in the last ``window`` minutes, more per minute than ``threshold``."""
    return Alert(CRITICAL, DEAD_LETTER_GROWTH, f">{threshold}/min",
                 f"dead letters growing at {rows / window:.0f} rows/min", run_id=run_id,
                 details=(f"{rows} rows dead-lettered in the last {window} min; threshold "
                          f"ALERT_DEAD_LETTERS_PER_MINUTE {threshold}",),
                 links=links(base_url, run_id),
                 queries={"counts per rule": queries.dead_letters_per_rule(window), **_dead_letters(run_id)})


def more_alert(others: list[Alert], what: str, where: dict[str, str], run_id: str | None, base_url: str) -> Alert:
    """The ``others`` one check found in a run beyond ALERT_MAX_PER_RUN, in one alert: how many, and the query
    (``where``) that lists all ``what`` of the run."""
    kind = others[0].key.split(":")[0]
    return Alert(WARNING, f"{kind}:more", str(len(others)), f"{len(others)} more {what} in this run", run_id=run_id,
                 details=("the first ALERT_MAX_PER_RUN were alerted one by one; these are recorded as alerted too, "
                          "so their repeats stay quiet",),
                 links=links(base_url, run_id), queries=where)


def _dead_letters(run_id: str | None) -> dict[str, str]:
    return {"dead letters of this run": queries.dead_letters_of_run(run_id)} if run_id else {}


# --- the checks the DAG calls ---------------------------------------------------------------------------------

def airflow_base_url() -> str:
    try:
        from airflow.configuration import conf

        return conf.get("api", "base_url", fallback="http://localhost:8080") or "http://localhost:8080"
    except Exception:  # noqa: BLE001
        return "http://localhost:8080"


def run_of(context) -> tuple[str, str | None]:
    """(dag id, run id) from an Airflow callback context."""
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    dag_id = getattr(dag_run, "dag_id", None) or getattr(dag, "dag_id", None) or DAG_ID
    return dag_id, context.get("run_id") or getattr(dag_run, "run_id", None)


def after_quality_gate(settings: Settings, summary: PublishSummary, problems: list[str], run_id: str | None) -> None:
    """Called by ``quality_gate`` after a publish: recovery of failures and breaker (the run got through),
    WARNING on a breach or its recovery, CRITICAL when dead letters grow too fast. Never raises."""
    base_url = airflow_base_url()
    try:
        with connection(settings) as conn:
            clear_alerts(settings, CLEARED_BY_A_PUBLISHED_RUN, "a run got through ingest, audit and publish again",
                         run_id, base_url, conn)
            if problems:
                raise_alert(settings, quality_breach_alert(summary, problems, settings.min_validity_rate, run_id,
                                                           base_url), conn)
            elif summary.total:
                clear_alerts(settings, (QUALITY_BREACH,),
                             f"validity {summary.validity_rate}% is at or above MIN_VALIDITY_RATE "
                             f"{settings.min_validity_rate}%", run_id, base_url, conn)
            check_dead_letter_growth(settings, conn, run_id, base_url)
    except Exception:  # noqa: BLE001
        log.exception("alerts after the quality gate could not be raised")


def alert_new_columns(settings: Settings, new_columns: list[dict[str, str | None]], run_id: str | None) -> None:
    """One WARNING the first time a column the contract does not know appears in the feed: its values are
    kept in ``rescued_data`` until the contract learns it (docs/data-contract.md); for at most ALERT_MAX_PER_RUN
    columns, one more for the rest."""
    base_url = airflow_base_url()
    raise_alerts(settings, [new_column_alert(column, run_id, base_url) for column in new_columns],
                 lambda others: more_alert(others, "new columns in the feed",
                                           {"all of them": queries.new_columns_of_run(run_id)}, run_id, base_url))


def check_dead_letter_growth(settings: Settings, conn, run_id: str | None, base_url: str) -> None:
    window = settings.alert_dead_letter_window_minutes
    rows = conn.execute("SELECT count(*) FROM dead_letter_events WHERE failed_at > now() - make_interval(mins => %s)",
                        (window,)).fetchone()[0]
    per_minute = rows / window
    if per_minute > settings.alert_dead_letters_per_minute:
        raise_alert(settings, dead_letter_growth_alert(rows, window, settings.alert_dead_letters_per_minute, run_id,
                                                       base_url), conn)
    else:
        clear_alerts(settings, (DEAD_LETTER_GROWTH,), f"dead letters at {per_minute:.0f} rows/min again",
                     run_id, base_url, conn)


def check_freshness(settings: Settings, run_id: str | None, now: datetime | None = None) -> None:
    """CRITICAL when no new data arrived for ALERT_NO_DATA_MINUTES while FEED_EXPECTED; recovery when it
    flows again. "Arrived" is the newest of: a delivery claimed, or a file first seen waiting in LANDING_DIR,
    both by the pipeline's own clock (a producer's modification time, old or in the future, never counts), so
    an open breaker (deliveries pile up) is not mistaken for a silent feed. Nothing is checked when the feed is
    not expected (the default; `make run` sets FEED_EXPECTED=true because it starts the generator)."""
    if not settings.feed_expected:
        return
    now = now or datetime.now(UTC)
    base_url = airflow_base_url()
    with connection(settings) as conn:
        claimed, waiting = conn.execute("SELECT (SELECT max(claimed_at) FROM deliveries), "
                                        "(SELECT max(first_seen_at) FROM landing_waits)").fetchone()
        seen = max([t for t in (claimed, waiting) if t is not None], default=None)
        quiet = timedelta(minutes=settings.alert_no_data_minutes)
        if seen is not None and now - seen > quiet:
            minutes = int((now - seen).total_seconds() // 60)
            raise_alert(settings, Alert(
                CRITICAL, NO_FRESH_DATA, f">{settings.alert_no_data_minutes}min", f"no new data for {minutes} minutes",
                run_id=run_id,
                details=(f"last data at {seen:%Y-%m-%d %H:%M:%S} UTC; the feed is expected (FEED_EXPECTED) and "
                         f"ALERT_NO_DATA_MINUTES is {settings.alert_no_data_minutes}",
                         f"check the producer writing into {settings.landing_dir.name}/ (make run: the generator, "
                         "data/logs/generator.log)"),
                links=links(base_url, run_id)), conn)
        elif seen is not None:
            clear_alerts(settings, (NO_FRESH_DATA,), f"data is arriving again (last at {seen:%H:%M:%S} UTC)",
                         run_id, base_url, conn)
