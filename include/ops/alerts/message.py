"""What an alert says (``Alert``) and how it is written out: the Slack text (mrkdwn), the links into the
Airflow UI. Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from include.names import DAG_ID

INFO, WARNING, ERROR, CRITICAL, RECOVERED = "INFO", "WARNING", "ERROR", "CRITICAL", "RECOVERED"
# characters that are invisible or move text around: control characters (a line break, a terminal escape),
# zero-width and bidirectional marks
HIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
ICONS = {WARNING: ":warning:", ERROR: ":x:", CRITICAL: ":rotating_light:", RECOVERED: ":white_check_mark:"}


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
    # label -> SQL to paste into psql (include/ops/alerts/queries.py)
    queries: dict[str, str] = field(default_factory=dict)


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


_URL_CREDENTIALS = re.compile(r"(://)[^/\s:@]+:[^/\s@]+@")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove known secrets (the database password) and credentials embedded in URLs."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _URL_CREDENTIALS.sub(r"\1***:***@", text)


def shorten(text: str, limit: int = 300) -> str:
    """An error as a chat line: the start of it (the log has the rest)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def render_text(alert: Alert) -> str:
    """The Slack message (mrkdwn), also written to the log and the alert file."""
    lines = [f"{ICONS.get(alert.level, '')} *{alert.level}* `{alert.dag_id}`: {alert.title}".strip()]
    if alert.run_id:
        lines.append(f"run: `{alert.run_id}`")
    lines += [f"• {detail}" for detail in alert.details]
    if alert.links:
        lines.append(" | ".join(f"<{url}|{name}>" for name, url in alert.links.items()))
    lines += [f"{label}: ```{query}```" for label, query in alert.queries.items()]
    return "\n".join(lines)


def slack_payload(alert: Alert) -> dict[str, Any]:
    """The body posted to the webhook: the text (shown in notifications) and the same text as a block."""
    text = render_text(alert)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}]}
