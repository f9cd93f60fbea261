"""The local Airflow environment: connection airflow_metadata carries the metadata database the components use
(a task process cannot read sql_alchemy_conn in Airflow 3; the housekeeping DAG's `airflow db clean` needs it)."""

from __future__ import annotations

import json

import pytest

from include.settings import Settings
from scripts.airflow_env import airflow_environment

pytestmark = pytest.mark.unit


def _metadata_url(env: dict[str, str]) -> str:
    return json.loads(env["AIRFLOW_CONN_AIRFLOW_METADATA"])["extra"]["sql_alchemy_conn"]


def test_the_metadata_connection_is_the_configured_database(tmp_path):
    env = airflow_environment(Settings(postgres_port=6543), {"AIRFLOW_HOME": str(tmp_path)})
    assert _metadata_url(env) == env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert _metadata_url(env).endswith(":6543/airflow")


def test_a_metadata_database_the_user_configured_is_the_one_cleaned(tmp_path):
    mine = "postgresql+psycopg2://me:secret@db.example:5432/meta"
    env = airflow_environment(Settings(), {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": mine})
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env  # kept as the user set it
    assert _metadata_url(env) == mine
    own = airflow_environment(Settings(), {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW_CONN_AIRFLOW_METADATA": "{}"})
    assert "AIRFLOW_CONN_AIRFLOW_METADATA" not in own  # a connection the user defined wins
