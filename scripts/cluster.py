"""The multi-node deployment, as real processes on this machine: what `make cluster` adds to `make run`.

`make run` runs every task in the scheduler's LocalExecutor and every Spark job in `local[*]`. `make cluster`
runs the same DAGs, unchanged, the way a team that has outgrown one machine deploys them:

* Redis (Debian's ``redis-server``) as the Celery broker, append-only so queued tasks survive its restart;
* Airflow with ``CeleryExecutor``: the api-server, scheduler, dag-processor and triggerer of `make run`,
  plus ``CELERY_WORKERS`` (2) Celery workers that run the tasks, results in the metadata database;
* a Spark standalone master and ``SPARK_WORKERS`` (2) workers of one core each; the connection
  ``spark_default`` points at the master, so `ingest` and the backfill submit their applications there.

Everything listens on 127.0.0.1 and Ctrl+C stops all of it (scripts/pipeline.py's Supervisor). A process that
dies is started again, as Compose's ``restart: unless-stopped`` and a node's service manager do (a crash loop
stops everything). The Spark processes get no database setting and no project path, as on a real cluster:
the executors receive the settings with their tasks and the code in the --py-files zip. docker-compose.yaml
is the same deployment on containers; docs/scaling.md compares both with local mode.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from include.settings import PROJECT_ROOT

SPARK_CLASS = Path(sys.executable).parent.parent / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" \
    / "site-packages" / "pyspark" / "bin" / "spark-class"
# Debian's package installs it here, outside a non-root user's PATH
REDIS_FALLBACK = Path("/usr/bin/redis-server")
# what the Spark processes must not see: the pipeline's settings travel with the tasks, the code in the zip
_NOT_FOR_SPARK = ("POSTGRES_", "AIRFLOW", "PIPELINE_", "PYTHONPATH")


def without_pipeline_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the pipeline's settings, Airflow's and the project path (``_NOT_FOR_SPARK``)."""
    return {key: value for key, value in environ.items() if not key.startswith(_NOT_FOR_SPARK)}


class ClusterError(RuntimeError):
    """The machine lacks something `make cluster` needs, or a setting is wrong; the message says what."""


@dataclass(frozen=True)
class Process:
    """One long-running process of the cluster: its name (and log file name), command and environment."""

    name: str
    command: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Cluster:
    root: Path
    redis_port: int = 6379
    spark_master_port: int = 7077
    spark_master_ui_port: int = 8081
    celery_workers: int = 2
    spark_workers: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str], root: Path | None = None) -> Cluster:
        def number(name: str, default: int, least: int) -> int:
            raw = (environ.get(name) or "").strip() or str(default)
            if not raw.isdigit() or int(raw) < least:
                raise ClusterError(f"{name}={raw!r}: expected a whole number of at least {least}")
            return int(raw)

        return cls(
            root=Path(root or environ.get("CLUSTER_DIR") or PROJECT_ROOT / "data" / "cluster"),
            redis_port=number("REDIS_PORT", 6379, 1),
            spark_master_port=number("SPARK_MASTER_PORT", 7077, 1),
            spark_master_ui_port=number("SPARK_MASTER_UI_PORT", 8081, 1),
            celery_workers=number("CELERY_WORKERS", 2, 1),
            spark_workers=number("SPARK_WORKERS", 2, 1),
        )

    @property
    def spark_url(self) -> str:
        return f"spark://127.0.0.1:{self.spark_master_port}"

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def spark_work_dir(self, worker: int) -> Path:
        return self.root / f"spark-worker-{worker}"

    def airflow_env(self, metadata_url: str) -> dict[str, str]:
        """What the Airflow components get on top of `make run`'s environment; Celery keeps its results in the
        metadata database ``metadata_url`` (SQLAlchemy's URL), with the metadata's own credentials."""
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+postgresql://" + metadata_url.split("://", 1)[1],
            # one task at a time per worker: with two workers, two tasks of different runs or DAGs at once
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": self.spark_url}),
            # the driver (in the Celery worker's task) must be reachable from the executors on this address
            "SPARK_LOCAL_IP": "127.0.0.1",
        }

    def spark_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        env = without_pipeline_settings(environ)
        env.update(SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(self.root / "spark-logs"),
                   PYSPARK_PYTHON=environ.get("PYSPARK_PYTHON") or sys.executable)
        return env

    def infrastructure(self, environ: Mapping[str, str]) -> list[Process]:
        """Redis, the Spark master and its workers: started before Airflow."""
        redis = shutil.which("redis-server") or (str(REDIS_FALLBACK) if REDIS_FALLBACK.exists() else None)
        if redis is None:
            raise ClusterError("no `redis-server` on PATH (the Celery broker): install it, e.g. "
                               "`sudo apt-get install redis-server`")
        redis_dir = self.root / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        processes = [Process("redis", [redis, "--bind", "127.0.0.1", "--port", str(self.redis_port),
                                       "--dir", str(redis_dir), "--appendonly", "yes", "--save", "",
                                       "--protected-mode", "yes"], without_pipeline_settings(environ))]
        spark = self.spark_env(environ)
        processes.append(Process("spark-master", [
            str(SPARK_CLASS), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
            "--port", str(self.spark_master_port), "--webui-port", str(self.spark_master_ui_port)], spark))
        for worker in range(1, self.spark_workers + 1):
            self.spark_work_dir(worker).mkdir(parents=True, exist_ok=True)
            processes.append(Process(f"spark-worker-{worker}", [
                str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", self.spark_url, "--host", "127.0.0.1",
                "--cores", "1", "--memory", "1g", "--webui-port", "0",
                "--work-dir", str(self.spark_work_dir(worker))], spark))
        return processes

    def workers(self, env: Mapping[str, str]) -> list[Process]:
        """The Celery workers; they share AIRFLOW_HOME, so the api-server reads their task logs from disk."""
        airflow = str(Path(sys.executable).parent / "airflow")
        return [Process(f"celery-worker-{worker}", [
            airflow, "celery", "worker", "--celery-hostname", f"worker{worker}@%h", "--skip-serve-logs"],
            dict(env)) for worker in range(1, self.celery_workers + 1)]

    def spark_status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.spark_master_ui_port}/json/", timeout=5) as response:
            return json.load(response)

    def ready(self) -> bool:
        """Redis answers and every Spark worker has registered with the master."""
        import redis

        try:
            redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=2).ping()
            return self.spark_status().get("aliveworkers") == self.spark_workers
        except (OSError, ValueError, redis.RedisError):
            return False
