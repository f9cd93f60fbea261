"""Shared fixtures. Airflow is pointed at a throw-away AIRFLOW_HOME before anything imports it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="ecom-airflow-home-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT_ROOT / "plugins")
# Every JVM the tests start (spark-submit's launcher, the Spark driver, a standalone master, workers and
# executors) inherits this. The tests' jobs are seconds long over a few hundred rows: the JIT's optimising tier
# and the parallel collector cost more CPU than they ever win back (measured: docs/performance.md, "A small
# machine"). Behaviour is the same; only the JVM's compiler and collector differ. A user's `make run` keeps the
# defaults.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")

pytest_plugins = ["tests.fixtures.spark", "tests.fixtures.pipeline", "tests.fixtures.ui"]

# `make test` runs the files on two workers, each file whole on one of them (pytest-xdist --dist loadfile), in
# collection order. The longest files go first, so that the two workers end together rather than one of them
# running the last long file alone. The order is by each file's time in one `make test` (docs/performance.md,
# "The test suite"), slowest first; it only orders the files, and a file missing here runs after these in its
# usual place.
LONGEST_FIRST = (
    "tests/integration/test_cluster.py",
    "tests/integration/test_fault_tolerance.py",
    "tests/integration/test_make_run.py",
    "tests/integration/test_backfill_and_replay.py",
    "tests/integration/test_external_database.py",
    "tests/integration/test_airflow_ui.py",
    "tests/integration/test_alerts_to_slack.py",
    "tests/integration/test_rule_severities.py",
    "tests/integration/test_ecommerce_events_dag.py",
    "tests/integration/test_spark_cluster.py",
    "tests/integration/test_data_contract.py",
    "tests/integration/test_private_checkout.py",
    "tests/benchmarks/test_peers.py",
    "tests/integration/test_publish_staging.py",
    "tests/spark_jobs/test_batch_size.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: index for index, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order
