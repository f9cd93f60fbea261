"""Exactly-once under faults, with real signals on real processes.

spark-submit is SIGKILLed (its whole process group: the JVM and its Python workers) at each fault point
of the ingest in turn, then the publish step inside its transaction, PostgreSQL is stopped and restarted
under a running job, and two runs are started together. After recovery every generated event is stored
exactly once, every batch's metrics add up, and nothing is left staged or in the landing directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.airflow.packaging import build_class_archive, build_code_archive, driver_java_options
from include.storage.deliveries import split_stored_name
from scripts.generator import EventGenerator
from tests.fixtures.pipeline import PROJECT_ROOT

pytestmark = pytest.mark.integration

FILES, ROWS = 6, 200  # MAX_FILES_PER_TRIGGER=4 in the fixture: two Spark batches


def land(pipeline, seed: int) -> dict:
    generator = EventGenerator(seed, duplicate_ratio=0.05, late_ratio=0.05)
    expected: dict = {"rows": 0, "event_ids": set(), "files": []}
    for index in range(FILES):
        version = ("v1", "v2", "v3")[index % 3]
        rows = generator.generate_batch(ROWS, version)
        expected["files"].append(generator.write_batch(rows, version, pipeline.landing_dir).name)
        expected["rows"] += len(rows)
        expected["event_ids"] |= {r["event_id"] for r in rows}
    return expected


def spark_submit(pipeline, fault_dir: Path, **fault_env: str) -> subprocess.Popen:
    env = {**pipeline.env, "PIPELINE_FAULT_DIR": str(fault_dir), **fault_env}
    build_class_archive()
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]",
               "--conf", f"spark.driver.extraJavaOptions={driver_java_options()}",
               "--py-files", str(build_code_archive()), str(PROJECT_ROOT / "spark_jobs" / "ingest_events.py"),
               "--airflow-run-id", "fault_injection"]
    log = open(fault_dir / "spark-submit.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def once_in_background(pipeline, fault_dir: Path, **fault_env: str) -> subprocess.Popen:
    env = {**pipeline.env, "PIPELINE_FAULT_DIR": str(fault_dir), **fault_env}
    log = open(fault_dir / f"once-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "scripts.pipeline", "once"], env=env, cwd=PROJECT_ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(fault_dir: Path, point: str, process: subprocess.Popen, timeout: float = 240) -> int:
    marker = fault_dir / f"{point}.reached"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, f"process ended before reaching {point}"
        assert time.monotonic() < deadline, f"{point} not reached in {timeout} s"
        time.sleep(0.2)
    time.sleep(0.3)  # let the marker's writer finish
    return int(marker.read_text() or 0)


def kill_hard(process: subprocess.Popen, paused_pid: int) -> None:
    """SIGKILL the process group (spark-submit, the JVM, Python workers) and the paused process itself."""
    for target in (lambda: os.killpg(process.pid, signal.SIGKILL), lambda: os.kill(paused_pid, signal.SIGKILL)):
        with contextlib.suppress(ProcessLookupError):
            target()
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL or process.returncode != 0


def assert_exactly_once(pipeline, expected: dict) -> None:
    stored = {event_id for (event_id,) in pipeline.query("SELECT event_id FROM ecommerce_events")}
    assert stored == expected["event_ids"]  # every event, each once (event_id is the primary key)
    total, valid, invalid, dups = pipeline.query(
        "SELECT sum(total_records), sum(valid_records), sum(invalid_records), sum(duplicate_records)"
        " FROM data_quality_metrics")[0]
    assert total == expected["rows"] and valid == len(stored) and invalid == 0
    assert dups == expected["rows"] - len(expected["event_ids"])
    assert pipeline.scalar("SELECT count(*) FROM dead_letter_events") == 0
    assert pipeline.scalar("SELECT count(*) FROM staging_events") == 0
    assert pipeline.scalar("SELECT count(*) FROM pipeline_batch_ledger WHERE published_at IS NULL") == 0
    assert pipeline.scalar("SELECT count(*) FROM data_quality_metrics") == \
        pipeline.scalar("SELECT count(*) FROM pipeline_batch_ledger")
    assert waiting_files(pipeline) == []
    archived = sorted(split_stored_name(p.name) for p in pipeline.archive_dir.rglob("*.csv"))
    assert sorted(name for _, name in archived) == sorted(expected["files"])
    assert [i for i, _ in archived] == [i for (i,) in pipeline.query(  # each file one delivery, archived once
        "SELECT delivery_id FROM deliveries WHERE status = 'archived' ORDER BY 1")]
    assert pipeline.scalar("SELECT count(*) FROM deliveries WHERE status = 'archived' "
                           "AND (attempts > 0 OR published_at IS NULL)") == 0


def waiting_files(pipeline) -> list:
    """Feed files not yet archived: in LANDING_DIR, or claimed and waiting for the ingest."""
    return [*pipeline.landing_dir.glob("*.csv"), *pipeline.landing_dir.glob(".claimed/*.csv")]


def staged_state(pipeline) -> tuple[int, int, int, int, int]:
    """(rows staged, batches in the ledger, of them published, files waiting, files archived)."""
    return (pipeline.scalar("SELECT count(*) FROM staging_events"),
            pipeline.scalar("SELECT count(*) FROM pipeline_batch_ledger"),
            pipeline.scalar("SELECT count(*) FROM pipeline_batch_ledger WHERE published_at IS NOT NULL"),
            len(waiting_files(pipeline)), len(list(pipeline.archive_dir.rglob("*.csv"))))


def test_killed_at_every_fault_point_in_turn_each_next_run_recovers_and_all_is_stored_exactly_once(pipeline,
                                                                                                  tmp_path):
    """One story through every fault point of a batch's life, in order: spark-submit (its whole process group)
    is SIGKILLed at ``before_staging``; the next spark-submit recovers from that and is killed at
    ``mid_staging`` (a partition's COPY committed, the batch not recorded); the next recovers and is killed
    at ``after_ledger`` (batch staged, files not moved); the next finishes those moves before its query starts,
    finds nothing left to read in the batch Spark replays (its deliveries are staged), and is killed at
    ``after_moves`` of the second batch (files moved, Spark's checkpoint not committed). A DAG run then recovers
    from that, and is itself killed inside its publish
    transaction; the next DAG run publishes. Each kill leaves the state its point promises, and in the end every
    event is stored exactly once. (Each recovery is the next process's: a chain costs one spark-submit per
    point instead of a kill and a whole DAG run per point.)"""
    pipeline.reset()
    expected = land(pipeline, seed=104)
    first_batch = 4 * ROWS  # MAX_FILES_PER_TRIGGER=4: the first Spark batch is 4 of the 6 files
    states = {}
    for point in ("before_staging", "mid_staging", "after_ledger", "after_moves"):
        fault_dir = tmp_path / point
        fault_dir.mkdir()
        job = spark_submit(pipeline, fault_dir, PIPELINE_FAULT_PAUSE=point)
        kill_hard(job, wait_for(fault_dir, point, job))
        states[point] = staged_state(pipeline)
    assert states["before_staging"] == (0, 0, 0, FILES, 0)
    staged, *rest = states["mid_staging"]  # a partition's COPY committed, the batch is not recorded
    assert 0 < staged <= first_batch and rest == [0, 0, FILES, 0], states
    assert states["after_ledger"] == (first_batch, 1, 0, FILES, 0), states  # staged once: the leftovers went
    assert states["after_moves"] == (expected["rows"], 2, 0, 0, FILES), states

    run = once_in_background(pipeline, tmp_path, PIPELINE_FAULT_PAUSE="publish_in_transaction")
    kill_hard(run, wait_for(tmp_path, "publish_in_transaction", run))
    # the killed transaction left nothing visible: both batches staged, neither published, every file archived
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == 0
    assert staged_state(pipeline) == (expected["rows"], 2, 0, 0, FILES)

    recovery = pipeline.once()
    assert recovery.returncode == 0, recovery.stdout[-3000:] + recovery.stderr[-3000:]
    assert "batch(es) staged, unpublished" in recovery.stdout + recovery.stderr
    assert_exactly_once(pipeline, expected)


def test_postgres_restarted_under_a_running_job_is_retried_with_backoff(pipeline, tmp_path):
    pipeline.reset()
    expected = land(pipeline, seed=8)
    job = spark_submit(pipeline, tmp_path, PIPELINE_FAULT_PAUSE="before_staging", PIPELINE_FAULT_PAUSE_SECONDS="2")
    wait_for(tmp_path, "before_staging", job)
    pipeline.cluster.stop(mode="fast")
    time.sleep(6)  # the job resumes while PostgreSQL is down and must retry
    pipeline.cluster.start()
    assert job.wait(timeout=300) == 0, (tmp_path / "spark-submit.log").read_text()[-3000:]
    assert "database operation failed (attempt 1)" in (tmp_path / "spark-submit.log").read_text()

    publish = pipeline.once()
    assert publish.returncode == 0, publish.stdout[-3000:] + publish.stderr[-3000:]
    assert_exactly_once(pipeline, expected)


def test_two_runs_started_together_never_share_the_checkpoint(pipeline, tmp_path):
    pipeline.reset()
    expected = land(pipeline, seed=9)
    first = once_in_background(pipeline, tmp_path)
    second = once_in_background(pipeline, tmp_path)
    codes = [first.wait(timeout=600), second.wait(timeout=600)]
    logs = "".join(p.read_text() for p in tmp_path.glob("once-*.log"))
    assert codes == [0, 0], logs[-4000:]
    assert "another ingest is using" in logs  # one of them waited for the other's query to finish
    assert_exactly_once(pipeline, expected)


def test_a_poison_file_is_quarantined_after_bounded_attempts_and_the_rest_goes_on(pipeline, tmp_path):
    pipeline.reset()
    expected = land(pipeline, seed=10)
    poison = pipeline.landing_dir / "events_poison.csv"
    poison.write_text("event_id,user_id,event_type,product_id,price,event_time\n"
                      "7e0d4c1e-0000-4000-8000-000000000001,1,view,1,1.00,2026-01-01T00:00:00 POISON-PILL\n")
    # the marker makes the Python worker that parses the file SIGKILL itself, every time
    run = pipeline.once(PIPELINE_FAULT_POISON_MARKER="POISON-PILL", POISON_FILE_MAX_ATTEMPTS="2")
    output = run.stdout + run.stderr
    # first try crashes, the retry reads the suspects one at a time and crashes on the poison file only, the
    # third try quarantines it unread: the run ends green and every other row is stored exactly once
    assert run.returncode == 0, output[-4000:]
    assert "read one at a time" in output
    [(reason, path)] = pipeline.query("SELECT reason, quarantine_path FROM quarantined_files")
    assert "poison file: the ingest job crashed 2 times" in reason
    assert split_stored_name(Path(path).name)[1] == "events_poison.csv" and Path(path).exists()
    assert_exactly_once(pipeline, expected)


# The circuit breaker under a failing ingest (open, skip Spark, failed trial, good trial, exactly once) is
# tested with its alerts in tests/integration/test_alerts_to_slack.py.


def _alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies, which hold nothing, left out)."""
    import psutil

    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    return alive


def test_a_jvm_that_dies_mid_job_leaves_no_process_of_the_job_behind(pipeline, tmp_path):
    """The JVM alone is SIGKILLed (as the OOM killer or a crash would end it) while the job's Python driver waits
    in a batch: the driver, the Python worker daemons and their workers (each daemon in a process group of its
    own) and the data source's planner all end with it, nothing sleeps on holding ports and memory; the next run
    stores everything exactly once."""
    import psutil

    pipeline.reset()
    expected = land(pipeline, seed=12)
    job = spark_submit(pipeline, tmp_path, PIPELINE_FAULT_PAUSE="before_staging")
    driver = wait_for(tmp_path, "before_staging", job)
    tree = [child.pid for child in psutil.Process(job.pid).children(recursive=True)]
    assert driver in tree and len(tree) > 2  # spark-submit execs the JVM: the driver and the workers are its children
    os.kill(job.pid, signal.SIGKILL)
    job.wait(timeout=30)
    deadline = time.monotonic() + 20
    while (left := _alive(tree)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], f"processes of the killed job still running: {left}"
    recovery = pipeline.once()
    assert recovery.returncode == 0, recovery.stdout[-3000:] + recovery.stderr[-3000:]
    assert_exactly_once(pipeline, expected)


def test_an_ingest_that_lost_its_lock_to_another_stops_before_its_next_write(pipeline, tmp_path):
    """PostgreSQL restarts between two batches of ingest A, which loses its checkpoint lock with its session;
    ingest B, waiting for the lock, takes it and ingests everything. When A wakes up it finds the lock gone and
    the fence moved on, and stops before it writes its second batch: no row lost or doubled."""
    pipeline.reset()
    expected = land(pipeline, seed=13)
    first = tmp_path / "a"
    first.mkdir()
    a = spark_submit(pipeline, first, PIPELINE_FAULT_PAUSE="after_moves", PIPELINE_FAULT_PAUSE_SECONDS="40")
    wait_for(first, "after_moves", a)  # A staged and moved its first batch, and sleeps before its second
    pipeline.cluster.stop(mode="fast")
    pipeline.cluster.start()
    second = tmp_path / "b"
    second.mkdir()
    b = spark_submit(pipeline, second)
    assert b.wait(timeout=300) == 0, (second / "spark-submit.log").read_text()[-3000:]
    assert a.wait(timeout=300) != 0
    log = (first / "spark-submit.log").read_text()
    assert "IngestLockLost" in log and "another ingest has used the checkpoint since" in log, log[-3000:]
    assert pipeline.scalar("SELECT count(*) FROM pipeline_batch_ledger") == 2  # A's first, B's second
    publish = pipeline.once()
    assert publish.returncode == 0, publish.stdout[-3000:] + publish.stderr[-3000:]
    assert_exactly_once(pipeline, expected)
