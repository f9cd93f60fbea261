"""Retries with exponential backoff for PostgreSQL work (tenacity), per the original system's policy.

MAX_RETRIES retries after the first attempt, waiting INITIAL_RETRY_DELAY × RETRY_BACKOFF_FACTOR^(n-1)
seconds before retry n (1 s, 2 s, 4 s by default). Only transient errors are retried: the connection
failed or was cut (PostgreSQL down or restarting), or the server rolled the transaction back
(serialization failure, deadlock). Anything else is a bug or bad data and surfaces at once. When the
retries are used up the error propagates, the task fails, and Airflow's own retries take over.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
import tenacity

from include.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_transient(error: BaseException) -> bool:
    # psycopg 3 files connection failures, SerializationFailure and DeadlockDetected under OperationalError
    if isinstance(error, psycopg.OperationalError):
        return not isinstance(error, psycopg.errors.QueryCanceled)
    adbc = sys.modules.get("adbc_driver_manager")  # loaded only where the staging COPY runs (the executors)
    if adbc is not None and isinstance(error, adbc.Error):
        # an ADBC error carries the server's SQLSTATE: judged by the class psycopg files that state under, so
        # both drivers retry the same errors; without one it is the connection itself (refused, cut)
        if not error.sqlstate:
            return isinstance(error, adbc.OperationalError)
        try:
            cls = psycopg.errors.lookup(error.sqlstate)
        except KeyError:
            return False
        return issubclass(cls, psycopg.OperationalError) and not issubclass(cls, psycopg.errors.QueryCanceled)
    return False


def _log_retry(state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "database operation failed (attempt %d): %s; retrying in %.1f s",
        state.attempt_number, str(error).strip().splitlines()[0] if error else "?", state.next_action.sleep,
    )


def db_retrying(settings: Settings, sleep: Callable[[float], None] = time.sleep) -> tenacity.Retrying:
    """A tenacity ``Retrying`` for database work; ``sleep`` is injectable so tests need not wait."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(settings.max_retries + 1),
        wait=tenacity.wait_exponential(multiplier=settings.initial_retry_delay, exp_base=settings.retry_backoff_factor),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=_log_retry,
        sleep=sleep,
        reraise=True,
    )


def with_connection(settings: Settings, work: Callable[[psycopg.Connection], T], *, autocommit: bool = False,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``work(conn)`` on a fresh connection, retried as a whole on transient errors.

    ``work`` must be safe to repeat: each attempt starts from what the database committed.
    """
    for attempt in db_retrying(settings, sleep):
        with attempt, psycopg.connect(settings.postgres_conninfo, connect_timeout=10, autocommit=autocommit) as conn:
            return work(conn)
    raise AssertionError("unreachable: tenacity re-raises the last error")


def with_arrow_connection(settings: Settings, work: Callable, *, sleep: Callable[[float], None] = time.sleep):
    """``with_connection`` for an ADBC connection (``adbc_driver_postgresql``: Arrow in, binary COPY out), which
    the executors' staging COPY uses. The connection is not in autocommit mode: ``work`` commits."""
    import adbc_driver_postgresql.dbapi as adbc

    conninfo = psycopg.conninfo.make_conninfo(settings.postgres_conninfo, connect_timeout=10)
    for attempt in db_retrying(settings, sleep):
        with attempt, adbc.connect(conninfo) as conn:
            return work(conn)
    raise AssertionError("unreachable: tenacity re-raises the last error")


def open_connection(settings: Settings, *, autocommit: bool = False,
                    sleep: Callable[[float], None] = time.sleep) -> psycopg.Connection:
    """A connection the caller keeps open and closes (e.g. to hold a session lock); connecting is retried."""
    for attempt in db_retrying(settings, sleep):
        with attempt:
            return psycopg.connect(settings.postgres_conninfo, connect_timeout=10, autocommit=autocommit)
    raise AssertionError("unreachable: tenacity re-raises the last error")
