"""What an alert says (``Alert``) and how it is written out: the Slack text (mrkdwn), the task log's text,
the alert file's record, the links into the Airflow UI. Pure: no I/O.

Much of what an alert says comes from the feed: file and column names, sample values, event ids, error
texts. ``render_text`` is the one place an alert becomes text, and it escapes every text of the alert on the
way, so no builder can forget to:

- for Slack, ``escape_mrkdwn``: ``&``, ``<`` and ``>`` as ``&amp;``, ``&lt;``, ``&gt;``, Slack's documented
  rule, which also makes ``<!channel>``, ``<@U123>`` and ``<http://evil|click>`` plain text; a backtick as
  ``ˋ`` (U+02CB), because Slack has no escape for it and one from the feed must not end the code span or
  block it stands in (a query stays exact: ``queries`` spells a backtick in a value as ``chr(96)``);
- for Slack and for the task log, ``visible``: invisible characters (``HIDDEN``) spelled out (a line break as
  ``\\x0a``), so that a value stays on its line and reads as it is.

The markup (bold, code spans, links, code blocks) is the renderer's own, plus the ``{}``-templates of
``Markup``; ``*``, ``_`` and ``~`` from the feed are left alone: they can change how a few words look, but
not add a mention or a link.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, LiteralString
from urllib.parse import quote

from include.names import DAG_ID

INFO, WARNING, ERROR, CRITICAL, RECOVERED = "INFO", "WARNING", "ERROR", "CRITICAL", "RECOVERED"
# characters that are invisible or move text around: control characters (a line break, a terminal escape),
# zero-width and bidirectional marks
HIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
ICONS = {WARNING: ":warning:", ERROR: ":x:", CRITICAL: ":rotating_light:", RECOVERED: ":white_check_mark:"}


@dataclass(frozen=True)
class Markup:
    """Alert text with Slack markup of the pipeline's own (a `code` span): ``template`` is written in the code,
    never built from a value; each of ``values`` fills one ``{}`` of it and is escaped like any other text."""

    template: LiteralString
    values: tuple[str, ...] = ()


Text = str | Markup  # a plain str is text only: all of it is escaped


@dataclass(frozen=True)
class Alert:
    """One alert. ``title`` and ``details`` take values from the feed as they are (they are escaped when
    rendered); ``links`` (name -> URL) are the pipeline's own and stay links; ``queries`` (label -> SQL to
    paste into psql, composed in include/ops/alerts/queries.py) are shown as code blocks."""

    level: str
    key: str
    fingerprint: str
    title: Text
    dag_id: str = DAG_ID
    run_id: str | None = None
    details: tuple[Text, ...] = ()
    links: dict[str, str] = field(default_factory=dict)
    queries: dict[str, str] = field(default_factory=dict)


def visible(text: str) -> str:
    """``text`` with its invisible characters spelled out: ``\\x0a``, ``\\x1b``, ``\\u202e``."""
    return HIDDEN.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) <= 0xFF else f"\\u{ord(m[0]):04x}", text)


def escape_mrkdwn(text: str) -> str:
    """``text`` to be shown as it is in Slack mrkdwn (the module's docstring has the rule)."""
    return visible(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "\u02cb")


def _filled(text: Text, escape: Callable[[str], str]) -> str:
    if isinstance(text, Markup):
        return text.template.format(*map(escape, text.values))
    return escape(text)


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


def render_text(alert: Alert, escape: Callable[[str], str] = escape_mrkdwn) -> str:
    """The Slack message (mrkdwn); with ``escape=visible``, the task log's text. Every text of ``alert`` is
    escaped here, the one place an alert becomes text."""
    lines = [f"{ICONS.get(alert.level, '')} *{alert.level}* `{escape(alert.dag_id)}`: "
             f"{_filled(alert.title, escape)}".strip()]
    if alert.run_id:
        lines.append(f"run: `{escape(alert.run_id)}`")
    lines += [f"• {_filled(detail, escape)}" for detail in alert.details]
    if alert.links:
        lines.append(" | ".join(f"<{escape(url)}|{escape(name)}>" for name, url in alert.links.items()))
    lines += [f"{escape(label)}: ```{escape(query)}```" for label, query in alert.queries.items()]
    return "\n".join(lines)


def as_record(alert: Alert) -> dict[str, Any]:
    """``alert`` as the alert file's JSON object: its texts as they are (``json.dumps`` escapes what a JSON
    line needs), a ``Markup`` filled in."""
    return {**asdict(alert), "title": _filled(alert.title, str), "details": [_filled(d, str) for d in alert.details]}


def redacted(alert: Alert, secrets: tuple[str, ...]) -> Alert:
    """``alert`` with ``redact`` applied to each of its texts: before any escaping, which could hide a secret
    from it (a password holding ``&``)."""

    def clean(text: Text) -> Text:
        if isinstance(text, Markup):
            return replace(text, values=tuple(redact(value, secrets) for value in text.values))
        return redact(text, secrets)

    return replace(alert, title=clean(alert.title), details=tuple(map(clean, alert.details)),
                   run_id=alert.run_id and redact(alert.run_id, secrets),
                   links={name: redact(url, secrets) for name, url in alert.links.items()},
                   queries={label: redact(query, secrets) for label, query in alert.queries.items()})


def slack_payload(alert: Alert) -> dict[str, Any]:
    """The body posted to the webhook: the text (shown in notifications) and the same text as a block."""
    text = render_text(alert)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}]}
