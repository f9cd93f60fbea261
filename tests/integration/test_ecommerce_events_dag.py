"""The DAG end to end on clean input: generator files -> a real `airflow dags test` (with a real spark-submit,
Great Expectations audit and publish; `make once` itself for the empty minute) -> a real PostgreSQL. Nothing
is mocked."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest

from include.storage.deliveries import split_stored_name
from scripts.generator import EventGenerator

pytestmark = pytest.mark.integration


def generate(pipeline, files: int, rows: int, seed: int, **ratios: float) -> list:
    generator = EventGenerator(seed, **ratios)
    reports = []
    for index in range(files):
        version = ("v1", "v2", "v3")[index % 3]
        batch = generator.generate_batch(rows, version)
        reports.append(generator.last_report)
        generator.write_batch(batch, version, pipeline.landing_dir)
    return reports


def test_generated_rows_land_once_are_announced_and_runs_that_store_nothing_announce_nothing(pipeline):
    """One generated backlog through three runs: the first stores it (and Airflow records an asset event for a
    downstream DAG scheduled on `ecommerce_events`), an empty minute starts no Spark job, and the same rows
    landed again under other names are published as duplicates only, which announces nothing."""
    pipeline.reset()
    generate(pipeline, files=6, rows=250, seed=11)  # 6 files, MAX_FILES_PER_TRIGGER=4: two Spark batches
    landed = sorted(p.name for p in pipeline.landing_dir.glob("*.csv"))

    started = datetime.now(UTC)
    first = pipeline.once()
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == 1500
    assert pipeline.scalar("SELECT count(DISTINCT source_file) FROM ecommerce_events") == 6
    assert pipeline.scalar("SELECT count(*) FROM dead_letter_events") == 0
    assert pipeline.query(
        "SELECT count(*), sum(total_records), sum(valid_records) FROM data_quality_metrics"
    ) == [(2, 1500, 1500)]
    # every row carries its lineage and the three schema versions were upcast
    assert pipeline.scalar(
        "SELECT count(*) FROM ecommerce_events WHERE airflow_run_id IS NULL OR spark_batch_id IS NULL "
        "OR source_line < 2 OR processed_at IS NULL"
    ) == 0
    assert {v for (v,) in pipeline.query("SELECT DISTINCT schema_version FROM ecommerce_events")} == {"v1", "v2", "v3"}
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events WHERE schema_version = 'v1' AND quantity <> 1") == 0
    # the analytics views of the original system answer over the new rows
    assert pipeline.scalar("SELECT sum(event_count) FROM v_hourly_event_summary") == 1500
    assert pipeline.scalar("SELECT sum(total_records) FROM v_data_quality_dashboard") == 1500
    assert pipeline.scalar("SELECT count(*) FROM v_category_performance") > 1
    assert pipeline.scalar("SELECT sum(events) FROM v_user_segment_analysis") == 1500
    # files moved out of the landing dir into the archive, by claim hour, each under its delivery id
    assert list(pipeline.landing_dir.glob("*.csv")) == [] and list(pipeline.landing_dir.glob(".claimed/*")) == []
    archived = {p.name: split_stored_name(p.name) for p in pipeline.archive_dir.glob("*/*/*.csv")}
    assert sorted(name for _, name in archived.values()) == landed
    assert sorted(i for i, _ in archived.values()) == [i for (i,) in pipeline.query(
        "SELECT delivery_id FROM deliveries WHERE status = 'archived' AND published_at IS NOT NULL ORDER BY 1")]
    assert pipeline.scalar("SELECT count(DISTINCT delivery_id) FROM ecommerce_events") == 6
    # what Airflow records (its metadata database): clean input, rows stored, no dead letter, so one asset
    # event, for ecommerce_events only
    [(asset, task, run_id, extra)] = pipeline.asset_events(started)
    assert (asset, task) == ("ecommerce_events", "publish")
    assert run_id.startswith("manual__")
    assert {k: extra[k] for k in ("path", "rows", "valid", "dead_lettered", "duplicates", "validity_rate")} == {
        "path": "every_minute", "rows": 1500, "valid": 1500, "dead_lettered": 0, "duplicates": 0,
        "validity_rate": 100.0}
    assert len(extra["batch_ids"]) == 2
    earliest, latest = pipeline.query("SELECT min(event_time), max(event_time) FROM ecommerce_events")[0]
    assert [datetime.fromisoformat(moment) for moment in extra["event_time_span"]] == [earliest, latest]

    # the next minute has nothing to do: it changes nothing, starts no Spark job (no JVM), announces nothing;
    # this one is `make once` itself, in a new process, as a user types it
    empty = datetime.now(UTC)
    second = pipeline.make_once()
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    output = second.stdout + second.stderr
    assert "0 delivery(ies) waiting" in output and "0 batch(es) staged" in output
    assert "spark-submit" not in output.replace("spark_submit", "")
    assert "Airflow metadata database up to date" in output  # and it did not pay a metadata migration
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == 1500
    assert pipeline.scalar("SELECT count(*) FROM data_quality_metrics") == 2
    assert pipeline.asset_events(empty) == []

    # the same rows land again under other names: publish runs and stores nothing new, so it announces
    # nothing (the quality gate then fails the run: its table check `rows_arrived` sees no new row)
    for path in pipeline.archive_dir.glob("*/*/*.csv"):
        shutil.copy(path, pipeline.landing_dir / f"again_{path.name}")
    again = datetime.now(UTC)
    third = pipeline.once()
    output = third.stdout + third.stderr
    assert "published 2 batch(es): 1500 rows -> 0 valid, 0 invalid, 1500 duplicates" in output, output[-4000:]
    assert "no asset event: neither ecommerce_events nor dead_letter_events changed" in output
    assert third.returncode == 1 and "table check rows_arrived failed" in output
    assert pipeline.asset_events(again) == []
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == 1500


def test_init_start_dags_writes_the_login_and_unpauses_what_make_run_unpauses(pipeline, tmp_path):
    """Compose's airflow-init (`init --start-dags`): the UI login from AIRFLOW_ADMIN_PASSWORD in the passwords
    file the api-server reads, the scheduled DAGs unpaused, the manual replay DAG left paused."""
    import json
    import subprocess
    import sys

    from include.names import REPLAY_DAG_ID
    from scripts.pipeline import SCHEDULED_DAG_IDS
    from tests.fixtures.pipeline import PROJECT_ROOT

    pipeline.airflow_ready()
    passwords = tmp_path / "auth" / "passwords.json"
    env = {**pipeline.env, "AIRFLOW_ADMIN_PASSWORD": "s3cret-for-compose",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)}
    dag_ids = [*SCHEDULED_DAG_IDS, REPLAY_DAG_ID]

    def paused() -> dict[str, bool]:
        return dict(pipeline.airflow_query("SELECT dag_id, is_paused FROM dag WHERE dag_id = ANY(%s)", (dag_ids,)))

    try:
        done = subprocess.run([sys.executable, "-m", "scripts.pipeline", "init", "--start-dags"], env=env,
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(passwords.read_text()) == {"admin": "s3cret-for-compose"}
        assert passwords.stat().st_mode & 0o777 == 0o600
        assert paused() == {**dict.fromkeys(SCHEDULED_DAG_IDS, False), REPLAY_DAG_ID: True}
    finally:
        pipeline.pause(SCHEDULED_DAG_IDS)


def test_make_once_migrates_the_airflow_metadata_only_when_airflow_or_the_database_changed(pipeline):
    """Every `make once` starts with `scripts.pipeline init`; an up-to-date metadata database costs one query,
    not a 9 s `airflow db migrate`, and another Airflow version still gets its migration."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.fixtures.pipeline import PROJECT_ROOT

    def init() -> str:
        done = subprocess.run([sys.executable, "-m", "scripts.pipeline", "init"], env=pipeline.env, cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    pipeline.airflow_ready()  # the session's first `init` migrates (or an earlier test's did)
    assert "Airflow metadata database up to date" in init()
    stamp = Path(pipeline.env["AIRFLOW_HOME"]) / ".metadata-migrated.json"
    recorded = json.loads(stamp.read_text())
    assert pipeline.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] not in stamp.read_text()  # a hash, no password
    stamp.write_text(json.dumps({**recorded, "airflow": "0.0.1"}))  # as if Airflow had been upgraded since
    assert "Airflow metadata database ready" in init()
    assert json.loads(stamp.read_text()) == recorded
