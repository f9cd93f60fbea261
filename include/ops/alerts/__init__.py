"""Alerts: the one place the pipeline tells people that something needs them.

Levels (the original system's four, and the recovery of a condition):

| level | when | channels |
| --- | --- | --- |
| INFO | normal operation worth a line (no condition raises one today) | task log |
| WARNING | a quality breach (validity below MIN_VALIDITY_RATE, a table check); a new column in the feed; a file quarantined, or waiting in LANDING_DIR longer than LANDING_STUCK_MINUTES | log + ALERT_FILE + Slack |
| ERROR | a task failed after its retries | log + ALERT_FILE + Slack |
| CRITICAL | circuit breaker opened; no new data for ALERT_NO_DATA_MINUTES while FEED_EXPECTED; dead letters growing faster than ALERT_DEAD_LETTERS_PER_MINUTE | log + ALERT_FILE + Slack |
| RECOVERED | a condition alerted above is over | log + ALERT_FILE + Slack |

One module per concern:

- ``message``: what an alert says (``Alert``) and how it is written out: the Slack text, the task log's text,
  the alert file's record, the links. Pure. Everything the feed controls (file and column names, sample
  values, event ids, error texts) is escaped where the text is rendered, so no condition can forget to.
- ``queries``: the SQL an alert suggests, composed with ``psycopg.sql``: a hostile name is a quoted literal.
- ``delivery``: the channels: the task log, ALERT_FILE, and Slack through the provider's
  ``SlackWebhookNotifier`` and the Airflow connection ``slack_alerts`` (``AIRFLOW_CONN_SLACK_ALERTS``).
  Without that connection the log and the file still get every alert. Delivering never raises: a broken
  channel is logged and the pipeline's own outcome stands.
- ``state``: no storms on a per-minute DAG. Each condition has a ``key`` (what kind: ``quality_breach``) and a
  ``fingerprint`` (which variant: the threshold, the failing task). Its state lives in PostgreSQL
  (``pipeline_alerts``). A condition alerts once; again only when its fingerprint changes or
  ALERT_COOLDOWN_MINUTES have passed; and once more, as a recovery, when it clears. The decisions are pure
  functions (``decide_raise``, ``decide_clear``) so they are tested without a database. One check sends at
  most ALERT_MAX_PER_RUN alerts in a run and sums up the rest in one more.
- ``conditions``: the conditions the pipeline alerts on, their messages, and the checks the DAG and its
  callbacks call; ``landing``: those of the landing directory (files quarantined, files waiting too long).

Never does a connection password go out (it, and credentials in URLs, are masked), nor a raw row.

The names other modules use are imported here.
"""

from __future__ import annotations

import logging

from include.ops.alerts.conditions import (
    after_quality_gate,
    airflow_base_url,
    alert_new_columns,
    backfill_breach_alert,
    breaker_open_alert,
    check_dead_letter_growth,
    check_freshness,
    run_of,
    task_failed_alert,
)
from include.ops.alerts.message import redact
from include.ops.alerts.state import raise_alert

log = logging.getLogger(__name__)  # the parent of the modules' loggers

__all__ = ["after_quality_gate", "airflow_base_url", "alert_new_columns", "backfill_breach_alert", "breaker_open_alert",
           "check_dead_letter_growth", "check_freshness", "log", "raise_alert", "redact", "run_of", "task_failed_alert"]
