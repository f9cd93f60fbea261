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

pytest_plugins = ["tests.fixtures.spark", "tests.fixtures.pipeline", "tests.fixtures.ui"]

# `make test` runs the files on two workers, each file whole on one of them (pytest-xdist --dist loadfile), in
# collection order. The longest files go first, so that the two workers end together rather than one of them
# running the last long file alone. Seconds are each file's sum in one fresh-clone `make test` on two workers
# (2026-12-02, slowest first); they only order the files, and a file missing here runs after these in its usual place.
LONGEST_FIRST = (
    "tests/integration/test_fault_tolerance.py",  # 757 s
    "tests/integration/test_cluster.py",  # 631 s
    "tests/integration/test_backfill_and_replay.py",  # 478 s
    "tests/integration/test_make_run.py",  # 433 s
    "tests/integration/test_alerts_to_slack.py",  # 241 s
    "tests/integration/test_ecommerce_events_dag.py",  # 152 s
    "tests/integration/test_rule_severities.py",  # 151 s
    "tests/integration/test_spark_cluster.py",  # 122 s
    "tests/integration/test_airflow_ui.py",  # 114 s
    "tests/integration/test_data_contract.py",  # 111 s
    "tests/integration/test_private_checkout.py",  # 54 s
    "tests/integration/test_publish_staging.py",  # 34 s
    "tests/benchmarks/test_peers.py",  # 31 s
    "tests/spark_jobs/test_batch_size.py",  # 29 s
)


def pytest_collection_modifyitems(config, items):
    rank = {path: index for index, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order
