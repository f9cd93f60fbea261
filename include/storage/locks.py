"""PostgreSQL advisory locks: the one way this project keeps two writers apart.

Two kinds, both keyed by ``hashtext(name)`` with the names in ``include.names``:

* ``xact_lock(conn, name)``: held until the current transaction ends (publish, schema); every writer of
  ``ecommerce_events`` takes it through ``publish_lock``, which also moves the events' write generation on;
* ``session_lock(settings, name, ...)``: held by a dedicated connection for the life of a ``with`` block
  (the ingest's checkpoint, backfills and replays). It dies with its session, so a killed process never
  leaves a lock behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from include.names import PUBLISH_LOCK, REVALIDATION_LOCK
from include.settings import Settings
from include.storage.connections import open_connection

log = logging.getLogger(__name__)


def xact_lock(conn: psycopg.Connection, name: str) -> None:
    """Wait for the transaction-level lock ``name``; it is released when the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))


def publish_lock(conn: psycopg.Connection) -> int:
    """Take the publish lock (held to the end of the transaction); return the events' write generation the
    transaction starts from, and move it on.

    ``ecommerce_events_generation`` counts the transactions that held this lock, so may have stored events.
    The bump commits or rolls back with the caller's writes. An audit that read generation ``g``
    (``events_generation``) before it left out the event_ids already stored knows, when its publish finds ``g``
    here, that no event has been stored since: its candidates cannot conflict, and they are inserted without
    ``ON CONFLICT``."""
    xact_lock(conn, PUBLISH_LOCK)
    return conn.execute(
        "UPDATE ecommerce_events_generation SET generation = generation + 1 RETURNING generation - 1").fetchone()[0]


def events_generation(conn: psycopg.Connection) -> int:
    """How many transactions have held the publish lock, as committed (``publish_lock``): the audit reads it
    before it leaves out the stored event_ids, the publish compares."""
    return conn.execute("SELECT generation FROM ecommerce_events_generation").fetchone()[0]


@contextmanager
def session_lock(settings: Settings, name: str, *, wait_seconds: float | None = None,
                 on_wait: Callable[[float], None] | None = None, poll_seconds: float = 1.0) -> Iterator[bool]:
    """Hold the session lock ``name`` for the ``with`` block; yields whether it was acquired.

    Waits for it forever unless ``wait_seconds`` is given (then yields ``False`` once that has passed);
    ``on_wait(seconds_waited)`` is called at each poll while waiting.
    """
    conn = open_connection(settings, autocommit=True)
    try:
        started = time.monotonic()
        while not conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (name,)).fetchone()[0]:
            waited = time.monotonic() - started
            if wait_seconds is not None and waited >= wait_seconds:
                yield False
                return
            if on_wait is not None:
                on_wait(waited)
            time.sleep(poll_seconds)
        yield True
    finally:
        conn.close()


def revalidation_lock(settings: Settings, wait_seconds: float | None = None):
    """The session lock that owns ``revalidation_candidates`` (backfills, replays) and the archive's
    deletion (retention never pulls a file from under a running backfill)."""

    def note(waited: float) -> None:
        if int(waited) % 10 == 0:
            log.info("another backfill or replay is validating; waiting (%.0f s so far)", waited)

    return session_lock(settings, REVALIDATION_LOCK, wait_seconds=wait_seconds, on_wait=note)
