"""Settings: the original system's variables and defaults, the new directories, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.settings import PROJECT_ROOT, Settings, SettingsError

pytestmark = pytest.mark.unit


def test_defaults_are_those_of_the_original_system():
    """Except MAX_FILES_PER_TRIGGER (10 there): batches are sized in bytes now, and it is their upper bound."""
    s = Settings.from_env({})
    assert (s.postgres_host, s.postgres_port, s.postgres_db, s.postgres_user) == ("localhost", 5433, "ecommerce", "spark")
    assert s.max_bytes_per_trigger == 32 * 2**20 and s.max_files_per_trigger == 1000
    assert s.min_validity_rate == 95.0 and s.max_price == 10000.0
    assert s.late_arrival_minutes == 5 and s.max_retries == 3 and s.circuit_breaker_threshold == 5
    assert s.landing_dir == PROJECT_ROOT / "data" / "landing"


def test_environment_overrides_and_relative_dirs_resolve_to_the_project(tmp_path):
    s = Settings.from_env({"MAX_PRICE": "500", "POSTGRES_PORT": "6543", "LANDING_DIR": "in",
                           "ARCHIVE_DIR": str(tmp_path), "MAX_FILES_PER_TRIGGER": " 3 "})
    assert s.max_price == 500.0 and s.postgres_port == 6543 and s.max_files_per_trigger == 3
    assert s.landing_dir == PROJECT_ROOT / "in"
    assert s.archive_dir == tmp_path


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"POSTGRES_PORT": "fivefour"}, "POSTGRES_PORT='fivefour' is not a valid int"),
        ({"MIN_VALIDITY_RATE": "120"}, "MIN_VALIDITY_RATE is a percentage"),
        ({"MAX_FILES_PER_TRIGGER": "0"}, "MAX_FILES_PER_TRIGGER must be at least 1"),
        ({"MAX_BYTES_PER_TRIGGER": "lots"}, r"MAX_BYTES_PER_TRIGGER='lots' is not a valid size in bytes \(e.g. 33554432 or 32m\)"),
        ({"MAX_BYTES_PER_TRIGGER": "-1"}, "MAX_BYTES_PER_TRIGGER must not be negative"),
        ({"AIRFLOW_METADATA_RETENTION_DAYS": "-1"}, r"AIRFLOW_METADATA_RETENTION_DAYS must not be negative \(0 keeps"),
        ({"PIPELINE_HISTORY_RETENTION_DAYS": "90d"}, "PIPELINE_HISTORY_RETENTION_DAYS='90d' is not a valid int"),
        ({"RESOLVED_DEAD_LETTER_RETENTION_DAYS": "-7"}, "RESOLVED_DEAD_LETTER_RETENTION_DAYS must not be negative"),
        ({"COMPONENT_LOG_MAX_BYTES": "big"}, "COMPONENT_LOG_MAX_BYTES='big' is not a valid size in bytes"),
        ({"COMPONENT_LOG_MAX_BYTES": "-1"}, "COMPONENT_LOG_MAX_BYTES must not be negative"),
        ({"COMPONENT_LOG_BACKUPS": "-1"}, "COMPONENT_LOG_BACKUPS must not be negative"),
        ({"ALERT_MAX_PER_RUN": "0"}, "ALERT_MAX_PER_RUN must be at least 1"),
    ],
)
def test_bad_values_fail_with_the_variable_named(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


FLOAT_VARIABLES = ("MIN_VALIDITY_RATE", "MAX_PRICE", "INITIAL_RETRY_DELAY", "RETRY_BACKOFF_FACTOR",
                   "ALERT_DEAD_LETTERS_PER_MINUTE", "LANDING_SETTLE_SECONDS")


def test_the_float_variables_are_all_there_are():
    floats = {name.upper() for name, value in vars(Settings()).items() if isinstance(value, float)}
    assert floats == set(FLOAT_VARIABLES)


@pytest.mark.parametrize("name", FLOAT_VARIABLES)
@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "Infinity", "1e999"])
def test_a_float_setting_must_be_finite(name, raw):
    """float() accepts these, and nan passes every comparison: MAX_PRICE=inf would reach the publish SQL."""
    with pytest.raises(SettingsError, match=rf"{name} must be a finite number, not (-?inf|nan)"):
        Settings.from_env({name: raw})


@pytest.mark.parametrize(("raw", "size"), [("32m", 32 * 2**20), ("512K", 512 * 1024), ("1gb", 2**30),
                                           ("200000", 200_000), ("0", 0)])
def test_batch_size_is_read_as_bytes_with_an_optional_unit(raw, size):
    assert Settings.from_env({"MAX_BYTES_PER_TRIGGER": raw}).max_bytes_per_trigger == size


def test_housekeeping_defaults_and_overrides():
    s = Settings.from_env({})
    assert (s.airflow_metadata_retention_days, s.pipeline_history_retention_days,
            s.resolved_dead_letter_retention_days) == (30, 90, 30)
    assert s.component_log_max_bytes == 50 * 2**20 and s.component_log_backups == 3
    assert s.pipeline_log_dir == PROJECT_ROOT / "data" / "logs"
    s = Settings.from_env({"COMPONENT_LOG_MAX_BYTES": "1k", "PIPELINE_LOG_DIR": "elsewhere",
                           "PIPELINE_HISTORY_RETENTION_DAYS": "0"})
    assert s.component_log_max_bytes == 1024 and s.pipeline_log_dir == PROJECT_ROOT / "elsewhere"
    assert s.pipeline_history_retention_days == 0  # 0 is valid: keep everything


def test_conninfo_survives_awkward_passwords():
    import psycopg

    info = Settings.from_env({"POSTGRES_PASSWORD": "p@ss w'rd:/%"}).postgres_conninfo
    assert psycopg.conninfo.conninfo_to_dict(info)["password"] == "p@ss w'rd:/%"
    assert isinstance(PROJECT_ROOT, Path)


def test_the_original_systems_streaming_knobs_are_accepted_and_ignored():
    """A .env from the original system still starts the pipeline; the two knobs change nothing."""
    given = Settings.from_env({"TRIGGER_INTERVAL": "anything at all", "WATERMARK_DELAY": "-3 hours"})
    assert given == Settings.from_env({})


def test_the_connections_extra_reaches_libpq_and_only_its_libpq_parameters():
    """An extra as Airflow stores it: libpq's keys are honoured (sslmode, options, ...), the postgres provider's
    own keys are not libpq's and are left out, and the connection's own fields cannot be overridden by it."""
    from psycopg.conninfo import conninfo_to_dict

    extra = ('{"sslmode": "disable", "options": "-c search_path=shop,public", "connect_timeout": 7, '
             '"cursor": "dictcursor", "sqlalchemy_scheme": "postgresql", "host": "elsewhere", "keepalives": true}')
    s = Settings.from_env({"POSTGRES_EXTRA": extra, "POSTGRES_HOST": "db.internal"})
    params = conninfo_to_dict(s.postgres_conninfo)
    assert params["sslmode"] == "disable" and params["options"] == "-c search_path=shop,public"
    assert params["connect_timeout"] == "7" and params["keepalives"] == "true"
    assert params["host"] == "db.internal" and "cursor" not in params and "sqlalchemy_scheme" not in params
    assert s.postgres_parameters == {"sslmode": "disable", "options": "-c search_path=shop,public",
                                     "connect_timeout": "7", "keepalives": "true"}
    with pytest.raises(SettingsError, match="POSTGRES_EXTRA must be a JSON object"):
        Settings.from_env({"POSTGRES_EXTRA": "sslmode=require"})


def test_a_task_takes_every_field_of_the_connection_and_its_extra():
    from include.airflow.settings_resolution import with_connection_fields

    s = with_connection_fields(Settings.from_env({}), host="pg.example", port=6432, schema="shop", login="writer",
                               password="pw", extra={"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem"})
    assert (s.postgres_host, s.postgres_port, s.postgres_db, s.postgres_user) == ("pg.example", 6432, "shop", "writer")
    assert "sslmode=verify-full" in s.postgres_conninfo and "sslrootcert=/etc/ca.pem" in s.postgres_conninfo
    plain = with_connection_fields(Settings.from_env({"POSTGRES_EXTRA": '{"sslmode": "require"}'}), host=None,
                                   port=None, schema=None, login=None, password=None, extra=None)
    assert plain.postgres_extra == "" and plain.postgres_port == 5432  # the connection's, not the environment's
