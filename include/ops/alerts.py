"""Alerts: the one place the pipeline tells people that something needs them.

Levels of the original system:

| level | when | channels |
| --- | --- | --- |
| INFO | normal operation worth a line | task log |
| WARNING | one threshold breach (validity below MIN_VALIDITY_RATE, a table check) | log + ALERT_FILE + Slack |
| ERROR | a task failed after its retries | log + ALERT_FILE + Slack |
| CRITICAL | circuit breaker opened; no new data for ALERT_NO_DATA_MINUTES while FEED_EXPECTED; dead letters growing faster than ALERT_DEAD_LETTERS_PER_MINUTE | log + ALERT_FILE + Slack |

Slack goes through the Slack provider's ``SlackWebhookNotifier`` and the Airflow connection ``slack_alerts``
(``AIRFLOW_CONN_SLACK_ALERTS``). Without that connection the log and the file still get every alert.
Delivering an alert never raises: a broken channel is logged and the pipeline's own outcome stands.

No storms on a per-minute DAG: each condition has a ``key`` (what kind: ``quality_breach``) and a
``fingerprint`` (which variant: the threshold, the failing task). Its state lives in PostgreSQL
(``pipeline_alerts``). A condition alerts once; again only when its fingerprint changes or
ALERT_COOLDOWN_MINUTES have passed; and once more, as a recovery, when it clears. The decisions are pure
functions (``decide_raise``, ``decide_clear``) so they are tested without a database.

Only ids, counts and rule names go out: never a connection password, never a raw row.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from include.names import DAG_ID, SLACK_CONN_ID
from include.results import PublishSummary
from include.settings import Settings

log = logging.getLogger(__name__)

INFO, WARNING, ERROR, CRITICAL, RECOVERED = "INFO", "WARNING", "ERROR", "CRITICAL", "RECOVERED"
SLACK_TIMEOUT_SECONDS = 10
ICONS = {WARNING: ":warning:", ERROR: ":x:", CRITICAL: ":rotating_light:", RECOVERED: ":white_check_mark:"}

# the conditions (alert keys)
QUALITY_BREACH = "quality_breach"
TASK_FAILED = "task_failed"
BREAKER_OPEN = "circuit_breaker_open"
NO_FRESH_DATA = "no_fresh_data"
DEAD_LETTER_GROWTH = "dead_letter_growth"
NEW_COLUMN = "new_column"       # + ":" + the column name: one alert per name, ever
# a run that got through publish proves these are over
CLEARED_BY_A_PUBLISHED_RUN = (TASK_FAILED, BREAKER_OPEN)


@dataclass(frozen=True)
class Alert:
    level: str
    key: str
    fingerprint: str
    title: str
    dag_id: str = DAG_ID
    run_id: str | None = None
    details: tuple[str, ...] = ()
    links: dict[str, str] = field(default_factory=dict)
    sql: str | None = None


@dataclass(frozen=True)
class AlertState:
    """What was last said about one condition (a row of ``pipeline_alerts``)."""

    key: str
    level: str
    fingerprint: str
    active: bool
    last_sent_at: datetime
    suppressed: int = 0


# --- the decisions (pure) ------------------------------------------------------------------------------------

def decide_raise(current: AlertState | None, alert: Alert, now: datetime,
                 cooldown: timedelta) -> tuple[str | None, AlertState]:
    """Should ``alert`` be sent? Returns (why it is sent, or None when suppressed; the new state)."""
    fresh = AlertState(alert.key, alert.level, alert.fingerprint, True, now)
    if current is None or not current.active:
        return "new", fresh
    if current.fingerprint != alert.fingerprint or current.level != alert.level:
        return "changed", fresh
    if now - current.last_sent_at >= cooldown:
        return f"still failing after the {cooldown} cool-down ({current.suppressed} repeat(s) suppressed)", fresh
    return None, replace(current, suppressed=current.suppressed + 1)


def decide_clear(current: AlertState | None, now: datetime) -> tuple[bool, AlertState | None]:
    """Is a recovery message due? Only for a condition that is active (it was alerted and not yet cleared)."""
    if current is None or not current.active:
        return False, current
    return True, replace(current, active=False, last_sent_at=now, suppressed=0)


# --- message rendering (pure) ---------------------------------------------------------------------------------

def links(base_url: str, run_id: str | None, dag_id: str = DAG_ID) -> dict[str, str]:
    """Where to look, in the Airflow UI at ``base_url`` (AIRFLOW__API__BASE_URL: the address colleagues
    reach it at): the run's page and its two tabs (the plugin's run views: this run's validation in the Data
    Docs, this run's dead letters); without a run, the Data Docs."""
    base = base_url.rstrip("/")
    if not run_id:
        return {"Data Docs": f"{base}/ecommerce/data-docs/index.html"}
    run = f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
    return {"Airflow run": run, "Validation of this run": f"{run}/plugin/run-validation",
            "Dead letters of this run": f"{run}/plugin/run-dead-letters"}


def dead_letter_sql(run_id: str) -> str:
    literal = run_id.replace("'", "''")
    return ("SELECT source_file, source_line, failed_rules, validation_errors FROM dead_letter_events "
            f"WHERE airflow_run_id = '{literal}' ORDER BY id;")


_URL_CREDENTIALS = re.compile(r"(://)[^/\s:@]+:[^/\s@]+@")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove known secrets (the database password) and credentials embedded in URLs."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _URL_CREDENTIALS.sub(r"\1***:***@", text)


def render_text(alert: Alert) -> str:
    """The Slack message (mrkdwn), also written to the log and the alert file."""
    lines = [f"{ICONS.get(alert.level, '')} *{alert.level}* `{alert.dag_id}`: {alert.title}".strip()]
    if alert.run_id:
        lines.append(f"run: `{alert.run_id}`")
    lines += [f"• {detail}" for detail in alert.details]
    if alert.links:
        lines.append(" | ".join(f"<{url}|{name}>" for name, url in alert.links.items()))
    if alert.sql:
        lines.append(f"dead letters of this run: ```{alert.sql}```")
    return "\n".join(lines)


def slack_payload(alert: Alert) -> dict[str, Any]:
    """The body posted to the webhook: the text (shown in notifications) and the same text as a block."""
    text = render_text(alert)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}]}


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
        links=links(base_url, run_id), sql=dead_letter_sql(run_id) if run_id else None,
    )


def shorten(text: str, limit: int = 300) -> str:
    """An error as a chat line: the start of it (the log has the rest)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def task_failed_alert(task_id: str, error: str, tries: int | None, run_id: str | None, base_url: str,
                      breaker_note: str | None = None) -> Alert:
    after = f" after {tries} tries" if tries else ""
    return Alert(ERROR, TASK_FAILED, task_id, f"task `{task_id}` failed{after}", run_id=run_id,
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
                          "state: SELECT * FROM pipeline_circuit_breaker; what to do: docs/operations.md"),
                 links=links(base_url, run_id))


def recovery_alert(cleared: list[AlertState], what: str, run_id: str | None, base_url: str) -> Alert:
    names = ", ".join(f"{state.key} ({state.level}, {state.fingerprint})" for state in cleared)
    return Alert(RECOVERED, "recovery", ",".join(s.key for s in cleared), f"recovered: {what}", run_id=run_id,
                 details=(f"cleared: {names}",), links=links(base_url, run_id))


# --- channels -------------------------------------------------------------------------------------------------

def deliver(alert: Alert, settings: Settings, reason: str = "new") -> dict[str, Any]:
    """Send ``alert`` to its channels: always the log; WARNING and above (and recoveries) also the file and
    Slack. Never raises. Returns the record written to the file."""
    text = redact(render_text(alert), (settings.postgres_password,))
    safe = replace(alert, details=tuple(redact(d, (settings.postgres_password,)) for d in alert.details))
    log.log(logging.INFO if alert.level in (INFO, RECOVERED) else getattr(logging, alert.level),
            "ALERT %s (%s)\n%s", alert.level, reason, text)
    record = {"time": datetime.now(UTC).isoformat(timespec="seconds"), **asdict(safe), "reason": reason}
    if alert.level == INFO:
        return record
    record["slack"] = _post_to_slack(safe)
    try:
        settings.alert_file.parent.mkdir(parents=True, exist_ok=True)
        with settings.alert_file.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, default=str) + "\n")
    except OSError:
        log.exception("could not append the alert to %s", settings.alert_file)
    return record


def _post_to_slack(alert: Alert) -> str:
    """Post through the provider's notifier. Returns what happened; never raises."""
    try:
        from airflow.sdk import BaseHook

        BaseHook.get_connection(SLACK_CONN_ID)  # not configured -> not found; file and log still have it
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
    except Exception as error:  # noqa: BLE001 - a missing channel must not fail the pipeline
        if type(error).__name__ == "AirflowNotFoundException":
            log.info("no %r connection (AIRFLOW_CONN_SLACK_ALERTS): alert kept in the log and %s", SLACK_CONN_ID,
                     "the alert file")
            return "not configured"
        log.warning("Slack connection %r unusable: %s", SLACK_CONN_ID, type(error).__name__)
        return f"failed: {type(error).__name__}"
    payload = slack_payload(alert)
    try:
        SlackWebhookNotifier(slack_webhook_conn_id=SLACK_CONN_ID, text=payload["text"], blocks=payload["blocks"],
                             timeout=SLACK_TIMEOUT_SECONDS, unfurl_links=False).notify({})
    except Exception as error:  # noqa: BLE001 - a failing post must not hide the pipeline's outcome
        log.warning("posting the %s alert to Slack failed (%s: %s); it is in the log and the alert file",
                    alert.level, type(error).__name__, shorten(redact(str(error)), 200))
        return f"failed: {type(error).__name__}"
    return "sent"


# --- state in PostgreSQL --------------------------------------------------------------------------------------

def _load(conn, key: str) -> AlertState | None:
    row = conn.execute("SELECT alert_key, level, fingerprint, active, last_sent_at, suppressed FROM pipeline_alerts "
                       "WHERE alert_key = %s FOR UPDATE", (key,)).fetchone()
    return AlertState(*row) if row else None


def _save(conn, state: AlertState) -> None:
    conn.execute(
        """
        INSERT INTO pipeline_alerts (alert_key, level, fingerprint, active, last_sent_at, suppressed, updated_at)
        VALUES (%s, %s, %s, %s, %s, %s, now())
        ON CONFLICT (alert_key) DO UPDATE SET level = excluded.level, fingerprint = excluded.fingerprint,
            active = excluded.active, last_sent_at = excluded.last_sent_at, suppressed = excluded.suppressed,
            updated_at = now()
        """,
        (state.key, state.level, state.fingerprint, state.active, state.last_sent_at, state.suppressed),
    )


def raise_alert(settings: Settings, alert: Alert, conn=None) -> bool:
    """Raise ``alert`` unless the same condition was already raised within the cool-down. Returns whether it
    was sent. When the state cannot be read (PostgreSQL down: often the very failure) it is sent anyway."""
    if alert.level == INFO:
        deliver(alert, settings)
        return True
    try:
        with _connection(settings, conn) as db, db.transaction():
            db.execute("INSERT INTO pipeline_alerts (alert_key, level, fingerprint, active, last_sent_at) "
                       "VALUES (%s, %s, %s, false, now()) ON CONFLICT DO NOTHING",
                       (alert.key, alert.level, alert.fingerprint))
            current = _load(db, alert.key)
            current = current if current and current.active else None
            reason, new = decide_raise(current, alert, datetime.now(UTC),
                                       timedelta(minutes=settings.alert_cooldown_minutes))
            if reason:
                deliver(alert, settings, reason)
            else:
                log.info("alert %s (%s) already raised at %s; repeat suppressed until the cool-down",
                         alert.key, alert.fingerprint, current.last_sent_at)
            _save(db, new)
            return bool(reason)
    except Exception:  # noqa: BLE001 - the alert matters more than its dedupe
        log.exception("alert state unavailable; sending %s without dedupe", alert.key)
        deliver(alert, settings, "alert state unavailable")
        return True


def clear_alerts(settings: Settings, keys: tuple[str, ...], what: str, run_id: str | None, base_url: str,
                 conn=None) -> bool:
    """Mark the conditions ``keys`` as over; one recovery message for all that were active. Never raises."""
    try:
        with _connection(settings, conn) as db, db.transaction():
            active = [AlertState(*row) for row in db.execute(
                "SELECT alert_key, level, fingerprint, active, last_sent_at, suppressed FROM pipeline_alerts "
                "WHERE alert_key = ANY(%s) AND active ORDER BY alert_key FOR UPDATE", (list(keys),))]
            if not active:
                return False
            now = datetime.now(UTC)
            for state in active:
                _save(db, decide_clear(state, now)[1])
            deliver(recovery_alert(active, what, run_id, base_url), settings, "recovery")
            return True
    except Exception:  # noqa: BLE001 - a recovery message is never worth failing a run
        log.exception("could not clear alerts %s", keys)
        return False


class _connection:
    """Use the caller's connection, or open (and close) one with the pipeline's retrying connect."""

    def __init__(self, settings: Settings, conn) -> None:
        self.settings, self.conn, self.owned = settings, conn, None

    def __enter__(self):
        if self.conn is not None:
            return self.conn
        import psycopg

        self.owned = psycopg.connect(self.settings.postgres_conninfo, autocommit=True, connect_timeout=10)
        return self.owned

    def __exit__(self, *exc) -> None:
        if self.owned is not None:
            self.owned.close()


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
        with _connection(settings, None) as conn:
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
    kept in ``rescued_data`` until the contract learns it (docs/data-contract.md)."""
    for column in new_columns:
        name = column["name"]
        quoted = name.replace("'", "''")
        raise_alert(settings, Alert(
            WARNING, f"{NEW_COLUMN}:{name}", name, f"new column {name!r} in the feed",
            run_id=run_id, details=(
                f"first seen in {column['source_file']}; sample value {shorten(str(column['sample']), 80)!r}",
                "its values are kept per row in ecommerce_events.rescued_data (and dead_letter_events.rescued_data)",
                f"SELECT rescued_data->>'{quoted}', count(*) FROM ecommerce_events "
                f"WHERE rescued_data ? '{quoted}' GROUP BY 1 ORDER BY 2 DESC LIMIT 20;"),
            links=links(airflow_base_url(), run_id)))


def check_dead_letter_growth(settings: Settings, conn, run_id: str | None, base_url: str) -> None:
    window = settings.alert_dead_letter_window_minutes
    rows = conn.execute("SELECT count(*) FROM dead_letter_events WHERE failed_at > now() - make_interval(mins => %s)",
                        (window,)).fetchone()[0]
    per_minute = rows / window
    if per_minute > settings.alert_dead_letters_per_minute:
        raise_alert(settings, Alert(
            CRITICAL, DEAD_LETTER_GROWTH, f">{settings.alert_dead_letters_per_minute}/min",
            f"dead letters growing at {per_minute:.0f} rows/min", run_id=run_id,
            details=(f"{rows} rows dead-lettered in the last {window} min; threshold "
                     f"ALERT_DEAD_LETTERS_PER_MINUTE {settings.alert_dead_letters_per_minute}",
                     "counts per rule: SELECT rule, count(*) FROM dead_letter_events, unnest(failed_rules) AS rule "
                     f"WHERE failed_at > now() - interval '{window} minutes' GROUP BY rule ORDER BY 2 DESC;"),
            links=links(base_url, run_id), sql=dead_letter_sql(run_id) if run_id else None), conn)
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
    with _connection(settings, None) as conn:
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

