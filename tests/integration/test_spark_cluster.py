"""The same DAG on a real Spark standalone cluster: only the `spark_default` connection changes.

A Spark master and one worker (1 core, 1 GB) are started on 127.0.0.1 from the pyspark installation, the
same generated files go through `make once` in local mode and then against the cluster, and the two runs
must leave identical stored rows, dead letters and metrics. The master's JSON status proves the ingest
really ran as a cluster application, and the worker's work dir proves its executor ran there (the COPYs
into staging are executor work). Both wall times are printed for docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from scripts.cluster import SPARK_CLASS, without_pipeline_settings
from scripts.generator import EventGenerator
from tests.fixtures.pipeline import free_port
from tests.fixtures.processes import stop_process_group

pytestmark = pytest.mark.integration

APP_NAME = "ecommerce_events_ingest"  # SparkSubmitOperator(name=...) in dags/ecommerce_events.py


class StandaloneCluster:
    """A Spark master and one worker, each in its own process group so that every JVM can be killed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port, self.ui_port, self.worker_ui_port = free_port(), free_port(), free_port()
        self.work_dir = root / "spark-work"
        self.processes: list[subprocess.Popen] = []
        # No database setting and no project path on the cluster: the executors must get the settings with
        # their tasks and the code from the --py-files zip, as on a real one.
        self.env = without_pipeline_settings(os.environ)
        self.env.update(SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(root / "spark-logs"))

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _start(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child for its lifetime
        self.processes.append(subprocess.Popen(
            [str(SPARK_CLASS), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root,
        ))

    def start(self) -> None:
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.port), "--webui-port", str(self.ui_port))
        self._start("worker", "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                    "--cores", "1", "--memory", "1g", "--webui-port", str(self.worker_ui_port),
                    "--work-dir", str(self.work_dir))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if self.status().get("aliveworkers") == 1:
                    return
            assert all(p.poll() is None for p in self.processes), self.logs()
            time.sleep(1)
        raise AssertionError("the Spark worker did not register with the master in 90 s\n" + self.logs())

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as response:
            return json.load(response)

    def logs(self) -> str:
        return "\n".join((self.root / f"{n}.log").read_text(errors="replace")[-3000:] for n in ("master", "worker")
                         if (self.root / f"{n}.log").exists())

    def stop(self) -> None:
        for process in reversed(self.processes):  # the workers before their master
            stop_process_group(process)


@pytest.fixture
def spark_cluster(pipeline):
    cluster = StandaloneCluster(pipeline.root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.work_dir, ignore_errors=True)


def generate_inputs(directory: Path) -> None:
    """Six files (v1, v2, v3) with invalid, structurally damaged, duplicate and late rows; one seed."""
    generator = EventGenerator(29, invalid_ratio=0.03, duplicate_ratio=0.02, late_ratio=0.02, structural_ratio=0.01)
    directory.mkdir(parents=True)
    for index in range(6):
        version = ("v1", "v2", "v3")[index % 3]
        generator.write_batch(generator.generate_batch(400, version), version, directory)
        time.sleep(0.01)  # distinct modification times: the same files form the same Spark batches


def land(pipeline, inputs: Path) -> None:
    pipeline.reset()
    for path in sorted(inputs.iterdir()):
        shutil.copy2(path, pipeline.landing_dir / path.name)  # keeps the modification time


def outcome(pipeline) -> dict:
    """Everything a user sees after a run, without the per-run lineage (run id, query id, timestamps)."""
    return {
        "events": pipeline.query(
            "SELECT event_id, user_id, session_id, event_type, product_id, category, price, quantity, total_amount, "
            "user_segment, event_time, geo_country, geo_city, is_late_arrival, schema_version, source_file, "
            "source_line, spark_batch_id FROM ecommerce_events ORDER BY event_id"),
        "dead_letters": pipeline.query(
            "SELECT source_file, source_line, event_id, error_kind, failed_rules, validation_errors, raw_data "
            "FROM dead_letter_events ORDER BY source_file, source_line, raw_data"),
        "metrics": pipeline.query(
            "SELECT spark_batch_id, total_records, valid_records, invalid_records, duplicate_records, late_records, "
            "quarantined_files, validity_rate FROM data_quality_metrics ORDER BY spark_batch_id"),
        "ledger": pipeline.query(
            "SELECT spark_batch_id, input_files, input_rows, published_at IS NOT NULL FROM pipeline_batch_ledger "
            "ORDER BY spark_batch_id"),
    }


def timed_once(pipeline, **extra_env: str) -> float:
    started = time.monotonic()
    done = pipeline.once(**extra_env)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    return elapsed


def test_the_same_dag_on_a_standalone_cluster_gives_the_same_results(pipeline, spark_cluster, tmp_path):
    inputs = tmp_path / "inputs"
    generate_inputs(inputs)

    land(pipeline, inputs)
    local_seconds = timed_once(pipeline)
    local = outcome(pipeline)
    assert spark_cluster.status()["completedapps"] == []  # local mode never touches the cluster

    land(pipeline, inputs)
    connection = json.dumps({"conn_type": "spark", "host": spark_cluster.url})
    cluster_seconds = timed_once(pipeline, AIRFLOW_CONN_SPARK_DEFAULT=connection, SPARK_LOCAL_IP="127.0.0.1")
    on_cluster = outcome(pipeline)
    print(f"\nsame input (6 files x 400 rows): local[*] {local_seconds:.1f} s, "
          f"standalone cluster (1 worker, 1 core) {cluster_seconds:.1f} s; "
          f"load average {os.getloadavg()[1]:.1f} on {os.cpu_count()} cores")

    # the input really exercised every fate, and both runs gave each row the same one
    assert len(local["events"]) > 2000 and local["dead_letters"] and len(local["metrics"]) == 2
    assert sum(m[4] for m in local["metrics"]) > 0  # duplicates
    assert on_cluster == local
    assert list(pipeline.landing_dir.glob("*.csv")) == []

    # the ingest ran as an application of this cluster, with its executor on the worker
    status = spark_cluster.status()
    apps = [app for app in status["completedapps"] if app["name"] == APP_NAME]
    assert len(apps) == 1 and apps[0]["state"] == "FINISHED", status["completedapps"]
    executor_dirs = list((spark_cluster.work_dir / apps[0]["id"]).iterdir())
    assert executor_dirs, f"no executor of {apps[0]['id']} ran on the worker"
    # every task (parsing, typing and the COPYs into staging) ran there: a standalone driver runs none
    assert any("Finished task" in (d / "stderr").read_text(errors="replace") for d in executor_dirs)
