"""Placeholder secrets and the default login are refused wherever the UI is reachable beyond loopback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from include.airflow.exposure import ExposedWithPlaceholders, exposed, problems, refuse_placeholders
from scripts.env_file import read_env_file
from tests.fixtures.pipeline import PROJECT_ROOT

pytestmark = pytest.mark.unit

STRONG = {"AIRFLOW_ADMIN_PASSWORD": "a-long-Passw0rd-of-mine", "AIRFLOW__API_AUTH__JWT_SECRET": "9f" * 32,
          "AIRFLOW__API__SECRET_KEY": "e3" * 32}


def test_loopback_is_not_exposed_and_anything_else_is():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert exposed({"AIRFLOW__API__HOST": host}) is None, host
    assert "0.0.0.0" in exposed({})  # Airflow's own default: what a container gets  # noqa: S104
    assert "10.1.2.3" in exposed({"AIRFLOW__API__HOST": "10.1.2.3"})
    assert "Compose" in exposed({"AIRFLOW__API__HOST": "127.0.0.1", "PIPELINE_DEPLOYMENT": "compose"})


def test_on_loopback_the_local_defaults_are_fine():
    refuse_placeholders({"AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API_AUTH__JWT_SECRET": "change-me"})


def test_the_env_example_as_it_is_does_not_start_under_compose():
    """.env.example's `change-me` passes Compose's `${VAR:?}` guards; start-up refuses it, naming each one."""
    environ = {**read_env_file(PROJECT_ROOT / ".env.example"), "PIPELINE_DEPLOYMENT": "compose"}
    environ["AIRFLOW__API_AUTH__JWT_SECRET"] = environ["AIRFLOW_JWT_SECRET"]  # as docker-compose.yaml maps them
    environ["AIRFLOW__API__SECRET_KEY"] = environ["AIRFLOW_API_SECRET_KEY"]
    with pytest.raises(ExposedWithPlaceholders) as refused:
        refuse_placeholders(environ)
    message = str(refused.value)
    for name in ("AIRFLOW_ADMIN_PASSWORD", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert name in message
    assert "openssl rand -hex 32" in message
    refuse_placeholders({**environ, **STRONG})  # with real values it starts


def test_the_default_admin_password_and_known_defaults_are_refused_beyond_loopback(tmp_path):
    beyond = {"AIRFLOW__API__HOST": "0.0.0.0", **STRONG}  # noqa: S104
    assert problems(beyond) == []
    assert "admin / admin" in " ".join(problems({**beyond, "AIRFLOW_ADMIN_PASSWORD": ""}))
    assert problems({**beyond, "AIRFLOW_ADMIN_PASSWORD": "admin"})
    assert problems({**beyond, "POSTGRES_PASSWORD": "spark123"})
    assert problems({**beyond, "AIRFLOW__API_AUTH__JWT_SECRET": "short-but-mine"})  # guessable
    # the api-server has no AIRFLOW_ADMIN_PASSWORD: the login's file says it
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"admin": "admin"}))
    api_server = {k: v for k, v in beyond.items() if k != "AIRFLOW_ADMIN_PASSWORD"}
    assert problems({**api_server, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)})
    passwords.write_text(json.dumps({"admin": "a-long-Passw0rd-of-mine"}))
    assert not problems({**api_server, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)})


def test_start_up_stops_before_starting_anything(tmp_path):
    """`python -m scripts.pipeline run` with the UI on 0.0.0.0 and no admin password: one clear message, exit 1,
    and nothing started (no database, no Airflow home written beyond its secrets)."""
    env = {"PATH": "/usr/bin:/bin", "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW_API_HOST": "0.0.0.0",  # noqa: S104
           "POSTGRES_PORT": "1", "PGDATA_DIR": str(tmp_path / "pg")}
    done = subprocess.run([sys.executable, "-m", "scripts.pipeline", "run"], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "refusing to start" in done.stderr and "AIRFLOW_ADMIN_PASSWORD" in done.stderr
    assert not (tmp_path / "pg").exists()
