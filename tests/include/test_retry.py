"""The database retry policy: exponential backoff on transient errors only, timings injected."""

from __future__ import annotations

import psycopg
import pytest

from include.settings import Settings
from include.storage.connections import db_retrying, is_transient

pytestmark = pytest.mark.unit

SETTINGS = Settings.from_env({"MAX_RETRIES": "3", "INITIAL_RETRY_DELAY": "1.0", "RETRY_BACKOFF_FACTOR": "2.0"})


def test_transient_errors_are_retried_with_1_2_4_second_waits_then_raised():
    sleeps: list[float] = []
    calls = []

    def flaky():
        calls.append(1)
        raise psycopg.OperationalError("connection refused")

    with pytest.raises(psycopg.OperationalError, match="connection refused"):
        db_retrying(SETTINGS, sleep=sleeps.append)(flaky)
    assert len(calls) == 4  # the first attempt + MAX_RETRIES
    assert sleeps == [1.0, 2.0, 4.0]


def test_success_after_a_restart_returns_the_result():
    sleeps: list[float] = []
    outcomes = iter([psycopg.OperationalError("server closed the connection"), "ok"])

    def recovering():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert db_retrying(SETTINGS, sleep=sleeps.append)(recovering) == "ok"
    assert sleeps == [1.0]


def test_settings_shape_the_policy():
    sleeps: list[float] = []
    fast = Settings.from_env({"MAX_RETRIES": "2", "INITIAL_RETRY_DELAY": "0.5", "RETRY_BACKOFF_FACTOR": "3"})
    with pytest.raises(psycopg.OperationalError):
        db_retrying(fast, sleep=sleeps.append)(lambda: (_ for _ in ()).throw(psycopg.OperationalError("x")))
    assert sleeps == [0.5, 1.5]


def test_bugs_and_bad_data_are_not_retried():
    sleeps: list[float] = []
    with pytest.raises(psycopg.errors.UndefinedTable):
        db_retrying(SETTINGS, sleep=sleeps.append)(
            lambda: (_ for _ in ()).throw(psycopg.errors.UndefinedTable("no such table")))
    assert sleeps == []
    assert is_transient(psycopg.errors.DeadlockDetected("deadlock"))
    assert not is_transient(ValueError("bad"))


def test_the_staging_copys_adbc_errors_are_judged_as_psycopgs_are():
    """The executors' binary COPY goes through ADBC, whose errors carry the server's SQLSTATE: retried exactly
    when psycopg would retry the same state; an ADBC error without one is the connection itself."""
    import adbc_driver_manager as adbc

    def error(cls, sqlstate):
        return cls("message", status_code=adbc.AdbcStatusCode.IO, sqlstate=sqlstate)

    assert is_transient(error(adbc.OperationalError, None))  # connection refused or cut
    assert is_transient(error(adbc.OperationalError, "40001"))  # serialization failure
    assert is_transient(error(adbc.DatabaseError, "40P01"))  # deadlock, whatever class ADBC files it under
    assert is_transient(error(adbc.OperationalError, "57P01"))  # administrator shutdown
    assert not is_transient(error(adbc.IntegrityError, "23505"))
    assert not is_transient(error(adbc.OperationalError, "57014"))  # canceled: not retried, as with psycopg
    assert not is_transient(error(adbc.ProgrammingError, "22P03"))  # bad binary data: a bug, surfaces at once
    assert not is_transient(error(adbc.DatabaseError, None))
    sleeps: list[float] = []
    with pytest.raises(adbc.OperationalError):
        db_retrying(SETTINGS, sleep=sleeps.append)(lambda: (_ for _ in ()).throw(error(adbc.OperationalError, None)))
    assert sleeps == [1.0, 2.0, 4.0]
