"""docker-compose.yaml cannot be run on the development machines (no Docker engine), so these tests keep it
consistent with the local setup: same services, same code mounts, same settings, the same DAG and connection
ids, versions that match the pinned packages, health checks and ordering, and no secret in the file."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import fields
from pathlib import Path, PurePosixPath

import pyspark
import pytest
import yaml

from include.airflow.packaging import CODE_ARCHIVE_DIR
from include.settings import PROJECT_ROOT as SETTINGS_ROOT
from include.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "generator")
SPARK_SERVICES = ("spark-master", "spark-worker")
SETTING_NAMES = {f.name.upper() for f in fields(Settings)}
DATA_VOLUME = "pipeline-data"


def env_of(service: str) -> dict[str, str]:
    return SERVICES[service]["environment"]


def interpolate(value: str, values: dict[str, str] | None = None) -> str:
    """What compose makes of ``${NAME:-default}`` / ``${NAME:?error}`` (set variables from ``values``)."""
    values = values or {}

    def replace(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in values:
            return values[name]
        assert op == ":-", f"${{{name}}} has no default and is not set"
        return arg

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(:[-?])?([^}]*)\}", replace, value)


def mounts(service: str) -> dict[str, str]:
    """Container path -> source (named volume or ./host path) of a service's mounts."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in SERVICES[service].get("volumes", [])}


def pinned(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert match, f"{package} is not pinned in requirements.txt"
    return match.group(1)


def test_every_component_is_a_service():
    assert SERVICES["postgres"]["image"] == "postgres:15"
    assert SERVICES["redis"]["image"].startswith("redis:")
    for name in AIRFLOW_SERVICES + SPARK_SERVICES:
        assert name in SERVICES
    commands = {name: SERVICES[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"
    assert commands["airflow-worker"] == "celery worker"
    assert commands["airflow-init"][-3:] == ["-m", "scripts.pipeline", "init"]
    assert commands["generator"][:3] == ["python", "-m", "scripts.generator"]
    assert DOCKERFILE.startswith("#")


def test_images_match_the_pinned_airflow_pyspark_and_python():
    airflow, python = pinned("apache-airflow"), f"{sys.version_info.major}.{sys.version_info.minor}"
    assert re.search(rf"^FROM apache/airflow:{re.escape(airflow)}-python{python}$", DOCKERFILE, re.M), (airflow, python)
    assert airflow.startswith("3.3.")
    # The Spark services run the project image: the Spark of the pinned pyspark, with the submitter's Python
    # and the job's dependencies, which the executors need.
    assert pinned("pyspark") == pyspark.__version__
    assert pyspark.__version__.startswith("4.2")
    project = (SERVICES["airflow-worker"]["build"], SERVICES["airflow-worker"]["image"])
    for name in AIRFLOW_SERVICES + SPARK_SERVICES:
        assert (SERVICES[name]["build"], SERVICES[name]["image"]) == project, name
    assert SERVICES["spark-master"]["command"][:2] == ["spark-class", "org.apache.spark.deploy.master.Master"]
    assert SERVICES["spark-worker"]["command"][:2] == ["spark-class", "org.apache.spark.deploy.worker.Worker"]
    assert (Path(pyspark.__file__).parent / "bin" / "spark-class").exists()


def test_airflow_services_mount_the_project_code_and_share_the_data_volume():
    for name in AIRFLOW_SERVICES:
        volumes = mounts(name)
        for folder in ("dags", "plugins", "include", "spark_jobs", "scripts"):
            assert volumes[f"/opt/airflow/{folder}"] == f"./{folder}", (name, folder)
            assert (ROOT / folder).is_dir()
        assert volumes["/opt/airflow/data"] == DATA_VOLUME
        assert volumes["/opt/airflow/logs"] == "airflow-logs"  # the api-server reads the workers' task logs
    assert set(COMPOSE["volumes"]) >= {DATA_VOLUME, "airflow-logs", "postgres-data"}


def test_every_directory_setting_is_on_the_volume_shared_by_the_submitter_and_the_spark_workers():
    env = env_of("airflow-worker")
    settings = Settings.from_env({k: interpolate(v, {"POSTGRES_PASSWORD": "x"}) for k, v in env.items() if k in SETTING_NAMES})
    submitter, executor = mounts("airflow-worker"), mounts("spark-worker")
    data_mount = next(path for path, source in submitter.items() if source == DATA_VOLUME)
    assert executor[data_mount] == DATA_VOLUME  # executors read landed files by the driver's path
    code_dir = PurePosixPath(env["PIPELINE_HOME"]) / CODE_ARCHIVE_DIR.relative_to(SETTINGS_ROOT).as_posix()
    for directory in (settings.landing_dir, settings.archive_dir, settings.checkpoint_dir, settings.quarantine_dir,
                      settings.great_expectations_dir, code_dir):
        assert PurePosixPath(directory).is_relative_to(data_mount), directory
    generator = SERVICES["generator"]["command"]
    assert generator[generator.index("--output-dir") + 1] == str(settings.landing_dir)
    assert env["PIPELINE_HOME"] == "/opt/airflow" and env["PYTHONPATH"] == "/opt/airflow"
    # Spark's class-data archive is written once on the shared volume, not once per container
    assert PurePosixPath(env["XDG_CACHE_HOME"]).is_relative_to(data_mount)


def test_every_setting_the_file_passes_exists_and_the_airflow_services_agree():
    extras = {"PIPELINE_HOME", "PYTHONPATH", "PYSPARK_PYTHON", "DUMB_INIT_SETSID", "XDG_CACHE_HOME"}
    reference = env_of("airflow-scheduler")
    for name in AIRFLOW_SERVICES:
        env = env_of(name)
        unknown = {key for key in env if not key.startswith("AIRFLOW")} - SETTING_NAMES - extras
        assert not unknown, (name, unknown)
        assert {k: v for k, v in env.items() if k != "DUMB_INIT_SETSID"} == reference, name
    for name in ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert name in reference
    assert reference["POSTGRES_HOST"] == "postgres" and reference["POSTGRES_PORT"] == "5432"
    # the analytics database and its credentials are the ones the postgres service is created with
    for name in ("POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert reference[name] == env_of("postgres")[name], name


def test_the_dag_connections_point_at_the_compose_services():
    env = env_of("airflow-worker")
    from include.names import POSTGRES_CONN_ID as postgres_id
    from include.names import SPARK_CONN_ID as spark_id

    assert (spark_id, postgres_id) == ("spark_default", "ecommerce_postgres")
    spark = json.loads(env[f"AIRFLOW_CONN_{spark_id.upper()}"])
    master = SERVICES["spark-master"]["command"]
    url = f"spark://{master[master.index('--host') + 1]}:{master[master.index('--port') + 1]}"
    assert spark == {"conn_type": "spark", "host": url} == {"conn_type": "spark", "host": "spark://spark-master:7077"}
    assert url in SERVICES["spark-worker"]["command"]
    assert SERVICES["spark-master"]["hostname"] == "spark-master"
    secret = {"POSTGRES_PASSWORD": "p", "POSTGRES_USER": "u", "POSTGRES_DB": "d"}
    postgres = json.loads(interpolate(env[f"AIRFLOW_CONN_{postgres_id.upper()}"], secret))
    assert postgres == {"conn_type": "postgres", "host": "postgres", "port": 5432, "schema": "d", "login": "u",
                        "password": "p"}


def test_celery_executor_with_redis_broker_and_metadata_on_postgres():
    env = env_of("airflow-scheduler")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].endswith("@postgres:5432/airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    assert "CREATE DATABASE airflow" in (ROOT / "include" / "storage" / "sql" / "create_airflow_database.sql").read_text()
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")


def test_every_long_running_service_has_a_healthcheck_and_dependencies_wait_for_it():
    for name, service in SERVICES.items():
        if service.get("restart") == "no":
            continue  # airflow-init: a one-shot job
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, service in SERVICES.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in SERVICES, (name, dependency)
            wanted = ("service_completed_successfully" if SERVICES[dependency].get("restart") == "no"
                      else "service_healthy")
            assert spec["condition"] == wanted, (name, dependency)
    assert set(SERVICES["airflow-worker"]["depends_on"]) >= {"postgres", "redis", "airflow-init", "spark-master"}
    assert "spark-master" in SERVICES["spark-worker"]["depends_on"]
    # the health checks look at the ports the services really use
    master, worker = SERVICES["spark-master"], SERVICES["spark-worker"]
    assert f"localhost:{master['command'][master['command'].index('--webui-port') + 1]}/json/" in master["healthcheck"]["test"][1]
    assert f"localhost:{worker['command'][worker['command'].index('--webui-port') + 1]}/json/" in worker["healthcheck"]["test"][1]
    assert env_of("airflow-scheduler")["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"


def test_no_secret_is_written_in_the_file_and_every_variable_is_documented():
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_TEXT))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert referenced <= documented, referenced - documented
    # a secret comes from .env or compose refuses to start: never a default, never a literal
    for name, op in re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(:[-?])?", COMPOSE_TEXT):
        if re.search("PASSWORD|SECRET|TOKEN|_KEY$", name):
            assert op == ":?", f"${{{name}}} must be required (:?), not defaulted"
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET|_KEY$", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), (name, key)
    assert "spark123" not in COMPOSE_TEXT and "change-me" not in COMPOSE_TEXT


def test_the_spark_cluster_gets_no_database_setting():
    """Executors receive the database settings with their tasks; the Spark containers hold none."""
    for name in SPARK_SERVICES:
        service = SERVICES[name]
        assert "env_file" not in service and "POSTGRES" not in json.dumps(service.get("environment", {})), name


def test_env_example_lists_every_setting():
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert documented >= SETTING_NAMES


def test_ports_bind_to_loopback_only():
    for service in SERVICES.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_the_housekeeping_task_cleans_the_metadata_database_the_components_use():
    """A task cannot read sql_alchemy_conn in Airflow 3; connection airflow_metadata must carry the same URL."""
    from include.names import METADATA_CONN_ID

    env = env_of("airflow-worker")
    secret = {"POSTGRES_PASSWORD": "p", "POSTGRES_USER": "u"}
    metadata = json.loads(interpolate(env[f"AIRFLOW_CONN_{METADATA_CONN_ID.upper()}"], secret))
    assert metadata["conn_type"] == "generic"
    assert metadata["extra"]["sql_alchemy_conn"] == interpolate(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], secret)
