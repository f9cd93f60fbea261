"""scripts/cluster.py's settings and what each process of `make cluster` is given (the processes themselves
run in tests/integration/test_cluster.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.cluster import Cluster, ClusterError

pytestmark = pytest.mark.unit


def test_the_defaults_and_the_settings_that_change_them(tmp_path):
    cluster = Cluster.from_env({})
    assert (cluster.redis_port, cluster.spark_master_port, cluster.spark_master_ui_port) == (6379, 7077, 8081)
    assert (cluster.celery_workers, cluster.spark_workers) == (2, 2) and cluster.root.parts[-2:] == ("data", "cluster")
    cluster = Cluster.from_env({"REDIS_PORT": "7000", "SPARK_WORKERS": "3", "CELERY_WORKERS": " 1 ", "CLUSTER_DIR": str(tmp_path),
                                "SPARK_MASTER_PORT": "", "SPARK_MASTER_UI_PORT": ""})  # empty: the default
    assert (cluster.redis_port, cluster.spark_workers, cluster.celery_workers, cluster.root) == (7000, 3, 1, tmp_path)
    assert cluster.spark_master_port == 7077


@pytest.mark.parametrize("name, value", [("SPARK_WORKERS", "0"), ("REDIS_PORT", "six"), ("CELERY_WORKERS", "-1")])
def test_a_bad_value_is_refused_with_its_name(name, value):
    with pytest.raises(ClusterError, match=f"{name}='{value}'"):
        Cluster.from_env({name: value})


def test_airflow_gets_celery_and_the_spark_master_and_spark_gets_no_pipeline_setting(tmp_path, monkeypatch):
    monkeypatch.setattr("scripts.cluster.shutil.which", lambda name: f"/usr/bin/{name}")  # no Redis needed here
    cluster = Cluster(root=tmp_path, redis_port=7001, spark_master_port=7078)
    env = cluster.airflow_env("postgresql+psycopg2://airflow:p%40ss@127.0.0.1:5499/airflow")  # the metadata's own role
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:7001/0"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql://airflow:p%40ss@127.0.0.1:5499/airflow"
    assert json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"]) == {"conn_type": "spark", "host": "spark://127.0.0.1:7078"}
    environ = {"POSTGRES_PASSWORD": "p@ss", "AIRFLOW_HOME": "/x", "PIPELINE_HOME": "/y", "PYTHONPATH": "/z", "PATH": "/bin"}
    processes = {process.name: process for process in cluster.infrastructure(environ)}
    assert list(processes) == ["redis", "spark-master", "spark-worker-1", "spark-worker-2"]
    for process in processes.values():
        assert not {key for key in process.env if key.startswith(("POSTGRES_", "AIRFLOW", "PIPELINE_", "PYTHONPATH"))}
        assert "p@ss" not in " ".join(process.command)
    assert processes["redis"].command[1:5] == ["--bind", "127.0.0.1", "--port", "7001"]
    worker = processes["spark-worker-2"].command
    assert worker[2] == "spark://127.0.0.1:7078" and worker[worker.index("--cores") + 1] == "1"
    assert Path(worker[worker.index("--work-dir") + 1]) == cluster.spark_work_dir(2) and cluster.spark_work_dir(2).is_dir()
    names = [process.name for process in cluster.workers({"AIRFLOW_HOME": "/x"})]
    assert names == ["celery-worker-1", "celery-worker-2"]


def test_without_redis_the_message_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("scripts.cluster.shutil.which", lambda name: None)
    monkeypatch.setattr("scripts.cluster.REDIS_FALLBACK", tmp_path / "no-redis-server")
    with pytest.raises(ClusterError, match="apt-get install redis-server"):
        Cluster(root=tmp_path).infrastructure({})
