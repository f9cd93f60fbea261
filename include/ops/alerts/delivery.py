"""The channels an alert goes to: the task log always; WARNING and above (and recoveries) also ALERT_FILE
(JSON lines) and Slack, through the provider's ``SlackWebhookNotifier`` and the Airflow connection
``slack_alerts``. Delivering never raises: a broken channel is logged and the pipeline's own outcome stands."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from include.names import SLACK_CONN_ID
from include.ops.alerts.message import (
    INFO,
    RECOVERED,
    Alert,
    as_record,
    redact,
    redacted,
    render_text,
    shorten,
    slack_payload,
    visible,
)
from include.settings import Settings

log = logging.getLogger(__name__)

SLACK_TIMEOUT_SECONDS = 10


def deliver(alert: Alert, settings: Settings, reason: str = "new") -> dict[str, Any]:
    """Send ``alert`` to its channels: always the log; WARNING and above (and recoveries) also the file and
    Slack. Never raises. Returns the record written to the file."""
    safe = redacted(alert, (settings.postgres_password,))
    log.log(logging.INFO if alert.level in (INFO, RECOVERED) else getattr(logging, alert.level),
            "ALERT %s (%s)\n%s", alert.level, reason, render_text(safe, visible))
    record = {"time": datetime.now(UTC).isoformat(timespec="seconds"), **as_record(safe), "reason": reason}
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
