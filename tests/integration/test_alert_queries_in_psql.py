"""The SQL in an alert, pasted into psql as Slack shows it, against a real PostgreSQL with the schema: a
hostile file or column name gives one harmless SELECT that finds its row, and every table survives."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from include.ops.alerts.conditions import new_column_alert
from include.ops.alerts.landing import quarantined_file_alert
from include.ops.alerts.message import render_text

pytestmark = [pytest.mark.integration, pytest.mark.db]

BASE = "http://127.0.0.1:8080"
RUN_ID = "manual__2026-03-01T12:00:00+00:00"
# each one a statement of its own if pasted between quotes unescaped; `\!` is a psql shell escape
HOSTILE_FILES = ["x'; DROP TABLE ecommerce_events; --", "y\\'; DROP TABLE quarantined_files; --.csv",
                 "z'; \\! touch pwned\n\\! touch pwned", "tick`'; DROP TABLE pipeline_alerts; ```.csv",
                 "<!channel> <http://evil.example|click>.csv"]
HOSTILE_COLUMNS = ['a\'b"c', "k'); DROP TABLE ecommerce_events; --", "back`tick```", "line\nbreak\\'; --",
                   "<@U123>&amp;"]
TABLES = ("ecommerce_events", "quarantined_files", "pipeline_alerts")
SEPARATOR, END = "\x1f", "\x1e"


def shown(slack_text: str) -> str:
    """What Slack displays (and a copy from it gives): its three entities decoded."""
    return slack_text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def pasted(slack_text: str, label: str) -> str:
    """The query of the code block labelled ``label``, as copied from Slack."""
    return shown(re.search(rf"{label}: ```(.*?)```", slack_text, re.S)[1])


def psql(pipeline, query: str, cwd: Path) -> list[list[str]]:
    """``query`` typed into psql (its meta-commands live); the rows it printed."""
    s = pipeline.settings
    done = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", SEPARATOR, "-R", END,
                           "-h", s.postgres_host, "-p", str(s.postgres_port), "-U", s.postgres_user, s.postgres_db],
                          input=query, env={**os.environ, "PGPASSWORD": s.postgres_password}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return [record.split(SEPARATOR) for record in done.stdout.removesuffix("\n").split(END) if record]


def insert(pipeline, statement: str, rows: list[tuple]) -> None:
    with psycopg.connect(pipeline.settings.postgres_conninfo) as conn:
        conn.cursor().executemany(statement, rows)


def counts(pipeline) -> dict[str, int]:
    return {table: pipeline.scalar(f"SELECT count(*) FROM {table}") for table in TABLES}


@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_a_hostile_file_name_gives_one_select_of_its_quarantine_record(pipeline, tmp_path, name):
    pipeline.reset()
    path = pipeline.settings.quarantine_dir / name
    insert(pipeline, "INSERT INTO quarantined_files (source_file, quarantine_path, reason) VALUES (%s, %s, 'test')",
           [(str(pipeline.landing_dir / p.name), str(p)) for p in (path, path.with_name("decoy.csv"))])
    record = pipeline.scalar("SELECT id FROM quarantined_files WHERE quarantine_path = %s", (str(path),))
    before = counts(pipeline)
    text = render_text(quarantined_file_alert(record, 7, str(pipeline.landing_dir / name), str(path),
                                              f"not a feed file: {name!r}", RUN_ID, BASE))

    rows = psql(pipeline, pasted(text, "its record"), tmp_path)
    assert [row[2] for row in rows] == [str(path)]  # quarantine_path: its row, only its row
    assert counts(pipeline) == before and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name", HOSTILE_COLUMNS)
def test_a_hostile_column_name_gives_one_select_of_its_values(pipeline, tmp_path, name):
    pipeline.reset()
    insert(pipeline, "INSERT INTO ecommerce_events (event_id, event_type, event_time, schema_version, source_file, "
           "source_line, rescued_data) VALUES (%s, 'view', now(), 'v4', 'f.csv', 1, %s)",
           [(event_id, json.dumps(rescued)) for event_id, rescued in (
               ("e-1", {name: "v1"}), ("e-2", {name: "v1"}), ("e-3", {"other": "v1"}))])
    before = counts(pipeline)
    text = render_text(new_column_alert({"name": name, "source_file": "f.csv", "sample": "v1"}, RUN_ID, BASE))

    assert psql(pipeline, pasted(text, "its values"), tmp_path) == [["v1", "2"]]
    assert counts(pipeline) == before and not (tmp_path / "pwned").exists()
