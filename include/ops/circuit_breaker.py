"""A circuit breaker that survives across DAG runs (each run is a new process): CLOSED → OPEN → HALF-OPEN.

* CLOSED: runs do their work. Each run whose ingest, audit or publish fails for good (retries used up)
  adds one to ``consecutive_failures``; a successful publish resets it.
* OPEN: after CIRCUIT_BREAKER_THRESHOLD consecutive failures. Runs skip the expensive work (no
  spark-submit) and say so, until CIRCUIT_BREAKER_COOLDOWN_SECONDS have passed since it opened.
* HALF-OPEN: the first run after the cool-down is a trial. Success closes the breaker; failure opens it
  again for another cool-down.

The state machine is pure (``CircuitBreaker``, clock injected); the state lives in PostgreSQL
(``pipeline_circuit_breaker``, one row), next to the data it protects.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import psycopg

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerState:
    state: str = CLOSED
    consecutive_failures: int = 0
    opened_at: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    state: BreakerState
    message: str


@dataclass(frozen=True)
class CircuitBreaker:
    threshold: int
    cooldown: timedelta

    def decide(self, current: BreakerState, now: datetime) -> Decision:
        """May this run do the expensive work? (An OPEN breaker past its cool-down lets one trial through.)"""
        if current.state == CLOSED:
            return Decision(True, current, "circuit breaker closed")
        if current.state == HALF_OPEN:
            # a trial is already under way (or died without reporting): let this run be the trial too
            return Decision(True, current, "circuit breaker half-open: trial run")
        reopen_at = (current.opened_at or now) + self.cooldown
        if now >= reopen_at:
            return Decision(True, replace(current, state=HALF_OPEN),
                            f"circuit breaker half-open after its cool-down: this run is the trial "
                            f"({current.consecutive_failures} consecutive failures so far)")
        return Decision(False, current,
                        f"circuit breaker OPEN since {current.opened_at:%Y-%m-%d %H:%M:%S} UTC after "
                        f"{current.consecutive_failures} consecutive failed runs (last error: "
                        f"{current.last_error or 'unknown'}); skipping the ingest until the trial run at "
                        f"{reopen_at:%H:%M:%S} UTC")

    def on_success(self, current: BreakerState) -> BreakerState:
        return BreakerState()

    def on_failure(self, current: BreakerState, now: datetime, error: str | None) -> BreakerState:
        failures = current.consecutive_failures + 1
        if current.state == HALF_OPEN or failures >= self.threshold:
            return BreakerState(OPEN, failures, now, error)
        return BreakerState(current.state, failures, current.opened_at, error)


def breaker_from_settings(settings) -> CircuitBreaker:
    return CircuitBreaker(settings.circuit_breaker_threshold, timedelta(seconds=settings.circuit_breaker_cooldown_seconds))


def load(conn: psycopg.Connection, *, for_update: bool = False) -> BreakerState:
    row = conn.execute(
        "SELECT state, consecutive_failures, opened_at, last_error FROM pipeline_circuit_breaker WHERE id = 1"
        + (" FOR UPDATE" if for_update else "")
    ).fetchone()
    return BreakerState(*row) if row else BreakerState()


def save(conn: psycopg.Connection, state: BreakerState) -> None:
    conn.execute(
        """
        INSERT INTO pipeline_circuit_breaker (id, state, consecutive_failures, opened_at, last_error, updated_at)
        VALUES (1, %s, %s, %s, %s, now())
        ON CONFLICT (id) DO UPDATE SET state = excluded.state, consecutive_failures = excluded.consecutive_failures,
            opened_at = excluded.opened_at, last_error = excluded.last_error, updated_at = now()
        """,
        (state.state, state.consecutive_failures, state.opened_at, state.last_error),
    )


def transition(conn: psycopg.Connection, change) -> tuple[BreakerState, BreakerState]:
    """Apply ``change(old) -> new`` under a row lock; return (old, new)."""
    with conn.transaction():
        conn.execute("INSERT INTO pipeline_circuit_breaker (id) VALUES (1) ON CONFLICT DO NOTHING")
        old = load(conn, for_update=True)
        new = change(old)
        if new != old:
            save(conn, new)
    return old, new


def record_published_run(settings) -> None:
    """A run got through publish: the breaker closes (or stays closed)."""
    from include.storage.connections import with_connection

    breaker = breaker_from_settings(settings)
    with_connection(settings, lambda conn: transition(conn, breaker.on_success))
