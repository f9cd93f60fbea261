"""How many alerts one check sends in a run, against a real PostgreSQL: at most ALERT_MAX_PER_RUN, then one
summary whose query lists them all; those only summarised are de-duplicated like the ones sent."""

from __future__ import annotations

import re
from dataclasses import replace

import psycopg
import pytest

from include.ops.alerts import delivery
from include.ops.alerts.conditions import alert_new_columns
from include.ops.alerts.landing import alert_quarantined
from include.ops.alerts.message import render_text

pytestmark = [pytest.mark.integration, pytest.mark.db]

RUN, NEXT_RUN = "manual__2026-03-01T12:00:00+00:00", "manual__2026-03-01T12:01:00+00:00"


@pytest.fixture
def slack(monkeypatch) -> list[str]:
    """The texts posted to Slack."""
    posted = []
    monkeypatch.setattr(delivery, "_post_to_slack", lambda alert: posted.append(render_text(alert)) or "sent")
    return posted


def insert(pipeline, statement: str, rows: list[tuple]) -> None:
    with psycopg.connect(pipeline.settings.postgres_conninfo) as conn:
        conn.cursor().executemany(statement, rows)


def summary_query(text: str) -> str:
    return re.search(r"all of them: ```(.*?)```", text)[1].replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def quarantine(pipeline, names: list[str]) -> None:
    insert(pipeline, "INSERT INTO quarantined_files (source_file, quarantine_path, reason, airflow_run_id) "
           "VALUES (%s, %s, 'not a feed file (its name)', %s)",
           [(f"/landing/{name}", f"/quarantine/{name}", RUN) for name in names])


def test_quarantined_files_beyond_the_bound_are_summed_up_and_never_alerted_one_by_one_later(pipeline, tmp_path,
                                                                                             slack):
    pipeline.reset()
    settings = replace(pipeline.settings, alert_max_per_run=3, alert_file=tmp_path / "alerts.jsonl")
    names = [f"file-{index}.bin" for index in range(8)]
    quarantine(pipeline, names)

    with psycopg.connect(settings.postgres_conninfo, autocommit=True) as conn:
        assert alert_quarantined(settings, conn, RUN) == 8
    assert [text.splitlines()[0] for text in slack] == [
        *(f":warning: *WARNING* `ecommerce_events`: file 'file-{index}.bin' from the landing directory quarantined"
          for index in range(3)),
        ":warning: *WARNING* `ecommerce_events`: 5 more files quarantined from the landing directory in this run"]
    assert sorted(row[1].rsplit("/", 1)[-1] for row in pipeline.query(summary_query(slack[-1]))) == sorted(names)
    assert pipeline.query("SELECT count(*), bool_and(active) FROM pipeline_alerts WHERE alert_key LIKE %s",
                          ("quarantined_file:%",)) == [(8, True)]
    assert len(settings.alert_file.read_text().splitlines()) == 4

    # the same eight again (each one already said, directly or in the summary): nothing; two new ones: those two
    slack.clear()
    with psycopg.connect(settings.postgres_conninfo, autocommit=True) as conn:
        assert alert_quarantined(settings, conn, NEXT_RUN) == 0
        assert slack == []
        quarantine(pipeline, ["new-0.bin", "new-1.bin"])
        assert alert_quarantined(settings, conn, NEXT_RUN) == 2
    assert [text.splitlines()[0].rsplit(": ", 1)[1] for text in slack] == [
        "file 'new-0.bin' from the landing directory quarantined",
        "file 'new-1.bin' from the landing directory quarantined"]


def test_new_columns_beyond_the_bound_are_summed_up_with_the_query_that_lists_them(pipeline, tmp_path, slack):
    pipeline.reset()
    settings = replace(pipeline.settings, alert_max_per_run=1, alert_file=tmp_path / "alerts.jsonl")
    columns = [{"name": name, "source_file": "f.csv", "sample": "x"} for name in ("coupon", "a'b\"c", "gift`wrap")]
    insert(pipeline, "INSERT INTO feed_columns_seen (column_name, first_file, sample_value, airflow_run_id) "
           "VALUES (%s, %s, %s, %s)", [(c["name"], c["source_file"], c["sample"], RUN) for c in columns])

    alert_new_columns(settings, columns, RUN)
    assert len(slack) == 2 and "new column 'coupon' in the feed" in slack[0]
    assert "2 more new columns in the feed in this run" in slack[1]
    assert sorted(row[0] for row in pipeline.query(summary_query(slack[1]))) == sorted(c["name"] for c in columns)
