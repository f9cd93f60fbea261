"""How an alert is written out: a value from the feed is shown as it is and can do nothing else in Slack (no
mention, no link, no escape from a code span or block), in the task log (no line of its own) or in the alert
file; the alert's own markup and links stay."""

from __future__ import annotations

import pytest

from include.ops.alerts.message import (
    WARNING,
    Alert,
    Markup,
    as_record,
    escape_mrkdwn,
    redacted,
    render_text,
    slack_payload,
    visible,
)

pytestmark = pytest.mark.unit

FEED = "<!channel> `x```\nforged line"  # a file name, say
LINKS = {"Airflow run": "http://127.0.0.1:8080/dags/ecommerce_events/runs/manual__1"}


@pytest.mark.parametrize(("feed", "shown"), [
    ("<!channel>", "&lt;!channel&gt;"),
    ("<@U123> <!subteam^S1>", "&lt;@U123&gt; &lt;!subteam^S1&gt;"),
    ("<http://evil.example|click here>", "&lt;http://evil.example|click here&gt;"),
    ("&lt; stays &lt;", "&amp;lt; stays &amp;lt;"),
    ("```code``` and `span`", "ˋˋˋcodeˋˋˋ and ˋspanˋ"),
    ("two\nlines\r\x1b[31mred\u202eevil", "two\\x0alines\\x0d\\x1b[31mred\\u202eevil"),
    ("*bold* _italic_ ~strike~ :emoji: café", "*bold* _italic_ ~strike~ :emoji: café"),
])
def test_feed_text_is_escaped_for_slack(feed, shown):
    assert escape_mrkdwn(feed) == shown


def test_the_log_text_keeps_the_characters_but_spells_out_the_invisible_ones():
    assert visible("<!channel> `x` a\nb\x1b\u200b") == "<!channel> `x` a\\x0ab\\x1b\\u200b"


def hostile_alert() -> Alert:
    return Alert(WARNING, "quarantined_file:" + FEED, FEED, f"file {FEED!r} quarantined", run_id="manual__1",
                 details=(Markup("in `{}`", (FEED,)), FEED), links=LINKS,
                 queries={"its record": "SELECT * FROM quarantined_files WHERE quarantine_path = ('a' || chr(96));"})


def test_only_the_alerts_own_markup_and_links_remain_in_the_slack_text():
    text = render_text(hostile_alert())
    assert text.splitlines() == [
        ":warning: *WARNING* `ecommerce_events`: file '&lt;!channel&gt; ˋxˋˋˋ\\nforged line' quarantined",
        "run: `manual__1`",
        "• in `&lt;!channel&gt; ˋxˋˋˋ\\x0aforged line`",
        "• &lt;!channel&gt; ˋxˋˋˋ\\x0aforged line",
        "<http://127.0.0.1:8080/dags/ecommerce_events/runs/manual__1|Airflow run>",
        "its record: ```SELECT * FROM quarantined_files WHERE quarantine_path = ('a' || chr(96));```",
    ]
    payload = slack_payload(hostile_alert())
    assert payload["text"] == text and payload["blocks"][0]["text"] == {"type": "mrkdwn", "text": text}


def test_the_log_text_has_one_line_per_part_and_the_file_record_the_texts_as_they_are():
    alert = hostile_alert()
    assert len(render_text(alert, visible).splitlines()) == 6
    assert "• in `<!channel> `x```\\x0aforged line`" in render_text(alert, visible)
    record = as_record(alert)
    assert record["title"] == alert.title and record["details"] == [f"in `{FEED}`", FEED]
    assert record["queries"] == alert.queries and record["links"] == LINKS


def test_a_secret_is_redacted_before_escaping_could_hide_it():
    secret = "pw&<8chars>"
    alert = Alert(WARNING, "k", "f", Markup("task `{}` failed", (f"x {secret}",)), run_id="r",
                  details=(f"connection to postgresql://spark:{secret}@db failed; password={secret}",),
                  queries={"q": f"SELECT '{secret}';"})
    for text in (render_text(redacted(alert, (secret,))), str(as_record(redacted(alert, (secret,))))):
        assert secret not in text and escape_mrkdwn(secret) not in text and "***" in text
