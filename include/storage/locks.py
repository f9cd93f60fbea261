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
from dataclasses import dataclass

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


class HeldLock:
    """A session lock as held by ``session_lock``: true when it was acquired. ``held()`` asks whether it still
    is: a session lock lives as long as its connection, so a PostgreSQL restart or a cut connection loses it;
    ``retake()`` tries to take it again at once."""

    def __init__(self, conn: psycopg.Connection | None, settings: Settings | None = None, name: str = "") -> None:
        self.conn, self.settings, self.name = conn, settings, name

    def __bool__(self) -> bool:
        return self.conn is not None

    def held(self) -> bool:
        if self.conn is None or self.conn.closed:
            return False
        try:
            self.conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def retake(self) -> bool:
        """Take the lock again on a new session, without waiting; False if another session holds it."""
        if self.conn is not None:
            self.conn.close()
        conn = open_connection(self.settings, autocommit=True)
        if conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (self.name,)).fetchone()[0]:
            self.conn = conn
            return True
        conn.close()
        return False


@contextmanager
def session_lock(settings: Settings, name: str, *, wait_seconds: float | None = None,
                 on_wait: Callable[[float], None] | None = None, poll_seconds: float = 1.0) -> Iterator[HeldLock]:
    """Hold the session lock ``name`` for the ``with`` block; yields a ``HeldLock``, false if not acquired.

    Waits for it forever unless ``wait_seconds`` is given (then yields a false one once that has passed);
    ``on_wait(seconds_waited)`` is called at each poll while waiting.
    """
    conn = open_connection(settings, autocommit=True)
    held = HeldLock(None)
    try:
        started = time.monotonic()
        while not conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (name,)).fetchone()[0]:
            waited = time.monotonic() - started
            if wait_seconds is not None and waited >= wait_seconds:
                yield HeldLock(None)
                return
            if on_wait is not None:
                on_wait(waited)
            time.sleep(poll_seconds)
        held = HeldLock(conn, settings, name)
        yield held
    finally:
        if held.conn is not None and held.conn is not conn:
            held.conn.close()
        conn.close()


class IngestLockLost(RuntimeError):
    """This ingest no longer holds its checkpoint (its lock's session ended: PostgreSQL restarted, the connection
    was cut) and another may hold it now: it stops before its next write; Airflow retries the task."""


@dataclass(frozen=True)
class Fence:
    """A fencing token for the writes of one ingest: the epoch it took (``take_fence``) right after it acquired
    the checkpoint's lock. A later ingest of the same checkpoint takes the next epoch; every write of the
    ingest checks, in its own transaction and holding the fence row (``FOR SHARE``), that the epoch is still
    its own. So a process that lost its lock without knowing it (PostgreSQL restarted between two of its writes
    while another ingest waited) cannot write again: the other one's ``take_fence`` waits for a write in
    flight to commit, and every write after it finds a newer epoch."""

    name: str
    epoch: int

    def _refuse(self, found: int | None) -> None:
        if found != self.epoch:
            raise IngestLockLost(f"the checkpoint {self.name!r} was taken by another ingest (epoch {found}, this "
                                 f"one holds {self.epoch}); this ingest stops before it writes again")

    def check(self, conn: psycopg.Connection) -> None:
        row = conn.execute("SELECT epoch FROM ingest_fence WHERE name = %s FOR SHARE", (self.name,)).fetchone()
        self._refuse(row[0] if row else None)

    def still_ours(self, conn: psycopg.Connection) -> bool:
        """No other ingest took the fence since this one did."""
        row = conn.execute("SELECT epoch FROM ingest_fence WHERE name = %s", (self.name,)).fetchone()
        return bool(row) and row[0] == self.epoch

    def check_adbc(self, cursor) -> None:
        """``check`` on an ADBC cursor (the executors' staging COPY)."""
        cursor.execute("SELECT epoch FROM ingest_fence WHERE name = $1 FOR SHARE", (self.name,))
        row = cursor.fetchone()
        self._refuse(row[0] if row else None)


def take_fence(conn: psycopg.Connection, name: str) -> Fence:
    """The next epoch of ``name``'s fence (committed before it returns)."""
    with conn.transaction():
        epoch = conn.execute(
            "INSERT INTO ingest_fence (name, epoch) VALUES (%s, 1) "
            "ON CONFLICT (name) DO UPDATE SET epoch = ingest_fence.epoch + 1, taken_at = now() RETURNING epoch",
            (name,)).fetchone()[0]
    return Fence(name, epoch)


def revalidation_lock(settings: Settings, wait_seconds: float | None = None):
    """The session lock that owns ``revalidation_candidates`` (backfills, replays) and the archive's
    deletion (retention never pulls a file from under a running backfill)."""

    def note(waited: float) -> None:
        if int(waited) % 10 == 0:
            log.info("another backfill or replay is validating; waiting (%.0f s so far)", waited)

    return session_lock(settings, REVALIDATION_LOCK, wait_seconds=wait_seconds, on_wait=note)
