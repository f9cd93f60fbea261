"""docker-compose.yaml cannot be run on the development machines (no Docker engine), so these tests keep it
consistent with the local setup: same services, same code mounts, same settings, no secret in the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from include.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "generator")


def test_every_component_of_make_run_is_a_service():
    services = COMPOSE["services"]
    assert services["postgres"]["image"] == "postgres:15"
    for name in AIRFLOW_SERVICES:
        assert name in services
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"
    assert commands["airflow-init"][-3:] == ["-m", "scripts.pipeline", "init"]
    assert commands["generator"][:3] == ["python", "-m", "include.generator"]
    assert (ROOT / "Dockerfile").read_text().startswith("#") and "FROM apache/airflow:3.3" in (ROOT / "Dockerfile").read_text()


def test_airflow_services_mount_the_project_code_and_share_the_data_volume():
    for name in AIRFLOW_SERVICES:
        volumes = COMPOSE["services"][name]["volumes"]
        for folder in ("dags", "plugins", "include", "spark_jobs", "scripts"):
            assert f"./{folder}:/opt/airflow/{folder}" in volumes, (name, folder)
            assert (ROOT / folder).is_dir()
        assert "pipeline-data:/opt/airflow/data" in volumes


def test_airflow_services_get_every_directory_and_database_setting():
    env = COMPOSE["services"]["airflow-scheduler"]["environment"]
    for name in ("LANDING_DIR", "ARCHIVE_DIR", "CHECKPOINT_DIR", "QUARANTINE_DIR", "GREAT_EXPECTATIONS_DIR"):
        assert env[name].startswith("/opt/airflow/data/"), name
    for name in ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert name in env
    assert "AIRFLOW_CONN_SPARK_DEFAULT" in env and "AIRFLOW_CONN_ECOMMERCE_POSTGRES" in env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")


def test_no_secret_is_written_in_the_file_and_every_variable_is_documented():
    referenced = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_TEXT))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert referenced <= documented, referenced - documented
    env = COMPOSE["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET:?")
    assert env["AIRFLOW__API__SECRET_KEY"].startswith("${AIRFLOW_API_SECRET_KEY:?")


def test_env_example_lists_every_setting():
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    from dataclasses import fields

    assert {f.name.upper() for f in fields(Settings)} <= documented


def test_ports_bind_to_loopback_only():
    for service in COMPOSE["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
