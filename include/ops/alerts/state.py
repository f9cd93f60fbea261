"""No storms on a per-minute DAG: what was last said about each condition, in PostgreSQL (``pipeline_alerts``).

A condition alerts once; again only when its fingerprint or level changes or ALERT_COOLDOWN_MINUTES have
passed; and once more, as a recovery, when it clears. The decisions (``decide_raise``, ``decide_clear``) are
pure; ``raise_alerts`` (``raise_alert`` for one) and ``clear_alerts`` read and write the state around them and
deliver what is due: at most ALERT_MAX_PER_RUN of what one check found in a run, and a summary of the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from include.ops.alerts.delivery import deliver
from include.ops.alerts.message import INFO, RECOVERED, Alert, links
from include.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertState:
    """What was last said about one condition (a row of ``pipeline_alerts``)."""

    key: str
    level: str
    fingerprint: str
    active: bool
    last_sent_at: datetime
    suppressed: int = 0


# --- the decisions (pure) ------------------------------------------------------------------------------------

def decide_raise(current: AlertState | None, alert: Alert, now: datetime,
                 cooldown: timedelta) -> tuple[str | None, AlertState]:
    """Should ``alert`` be sent? Returns (why it is sent, or None when suppressed; the new state)."""
    fresh = AlertState(alert.key, alert.level, alert.fingerprint, True, now)
    if current is None or not current.active:
        return "new", fresh
    if current.fingerprint != alert.fingerprint or current.level != alert.level:
        return "changed", fresh
    if now - current.last_sent_at >= cooldown:
        return f"still failing after the {cooldown} cool-down ({current.suppressed} repeat(s) suppressed)", fresh
    return None, replace(current, suppressed=current.suppressed + 1)


def decide_clear(current: AlertState | None, now: datetime) -> tuple[bool, AlertState | None]:
    """Is a recovery message due? Only for a condition that is active (it was alerted and not yet cleared)."""
    if current is None or not current.active:
        return False, current
    return True, replace(current, active=False, last_sent_at=now, suppressed=0)


def recovery_alert(cleared: list[AlertState], what: str, run_id: str | None, base_url: str) -> Alert:
    names = ", ".join(f"{state.key} ({state.level}, {state.fingerprint})" for state in cleared)
    return Alert(RECOVERED, "recovery", ",".join(s.key for s in cleared), f"recovered: {what}", run_id=run_id,
                 details=(f"cleared: {names}",), links=links(base_url, run_id))


# --- the state in PostgreSQL ----------------------------------------------------------------------------------

def _load(conn, key: str) -> AlertState | None:
    row = conn.execute("SELECT alert_key, level, fingerprint, active, last_sent_at, suppressed FROM pipeline_alerts "
                       "WHERE alert_key = %s FOR UPDATE", (key,)).fetchone()
    return AlertState(*row) if row else None


def _save(conn, state: AlertState) -> None:
    conn.execute(
        """
        INSERT INTO pipeline_alerts (alert_key, level, fingerprint, active, last_sent_at, suppressed, updated_at)
        VALUES (%s, %s, %s, %s, %s, %s, now())
        ON CONFLICT (alert_key) DO UPDATE SET level = excluded.level, fingerprint = excluded.fingerprint,
            active = excluded.active, last_sent_at = excluded.last_sent_at, suppressed = excluded.suppressed,
            updated_at = now()
        """,
        (state.key, state.level, state.fingerprint, state.active, state.last_sent_at, state.suppressed),
    )


def raise_alert(settings: Settings, alert: Alert, conn=None) -> bool:
    """Raise ``alert`` unless the same condition was already raised within the cool-down. Returns whether it
    was sent. When the state cannot be read (PostgreSQL down: often the very failure) it is sent anyway."""
    with _state(settings, conn) as db:
        return _raise(settings, alert, db, send=True)


def raise_alerts(settings: Settings, alerts: list[Alert], summarise: Callable[[list[Alert]], Alert],
                 conn=None) -> int:
    """Raise ``alerts``, what one check found in one run (one per foreign file, one per new column), each like
    ``raise_alert``, but send at most ALERT_MAX_PER_RUN of them. The others that are due are recorded as if sent
    (a repeat of one stays suppressed; a change of it is new), and one more alert, ``summarise(others)``, says
    how many there are and where to see them. Returns how many alerts were sent."""
    limit = settings.alert_max_per_run
    sent, others = 0, []
    with _state(settings, conn) as db:
        for alert in alerts:
            if sent < limit:
                sent += _raise(settings, alert, db, send=True)
            elif _raise(settings, alert, db, send=False):
                others.append(alert)
    if others:
        deliver(summarise(others), settings, f"{len(others)} more than ALERT_MAX_PER_RUN ({limit})")
        sent += 1
    return sent


@contextmanager
def _state(settings: Settings, conn) -> Iterator:
    """The connection to the alerts' state (``conn``, or one of its own), or None when PostgreSQL cannot be
    reached (often the very failure): then every alert is due."""
    with ExitStack() as stack:
        try:
            db = stack.enter_context(connection(settings, conn))
        except Exception:  # noqa: BLE001 - the alerts matter more than their dedupe
            log.exception("alert state unavailable; alerts go out without dedupe")
            db = None
        yield db


def _raise(settings: Settings, alert: Alert, db, send: bool) -> bool:
    """Is ``alert`` due? Decided on its state in ``db`` and recorded there; delivered when due and ``send``.
    Without the state (no connection, or it cannot be read) it is due: the alert matters more than its dedupe."""
    if alert.level == INFO or db is None:
        if send:
            deliver(alert, settings, "new" if alert.level == INFO else "alert state unavailable")
        return True
    try:
        with db.transaction():
            db.execute("INSERT INTO pipeline_alerts (alert_key, level, fingerprint, active, last_sent_at) "
                       "VALUES (%s, %s, %s, false, now()) ON CONFLICT DO NOTHING",
                       (alert.key, alert.level, alert.fingerprint))
            current = _load(db, alert.key)
            current = current if current and current.active else None
            reason, new = decide_raise(current, alert, datetime.now(UTC),
                                       timedelta(minutes=settings.alert_cooldown_minutes))
            if reason and send:
                deliver(alert, settings, reason)
            elif not reason:
                log.info("alert %r (%r) already raised at %s; repeat suppressed until the cool-down",
                         alert.key, alert.fingerprint, current.last_sent_at)
            _save(db, new)
            return bool(reason)
    except Exception:  # noqa: BLE001 - the alert matters more than its dedupe
        log.exception("alert state unavailable; %r goes out without dedupe", alert.key)
        if send:
            deliver(alert, settings, "alert state unavailable")
        return True


def clear_alerts(settings: Settings, keys: tuple[str, ...], what: str, run_id: str | None, base_url: str,
                 conn=None) -> bool:
    """Mark the conditions ``keys`` as over; one recovery message for all that were active. Never raises."""
    try:
        with connection(settings, conn) as db, db.transaction():
            active = [AlertState(*row) for row in db.execute(
                "SELECT alert_key, level, fingerprint, active, last_sent_at, suppressed FROM pipeline_alerts "
                "WHERE alert_key = ANY(%s) AND active ORDER BY alert_key FOR UPDATE", (list(keys),))]
            if not active:
                return False
            now = datetime.now(UTC)
            for state in active:
                _save(db, decide_clear(state, now)[1])
            deliver(recovery_alert(active, what, run_id, base_url), settings, "recovery")
            return True
    except Exception:  # noqa: BLE001 - a recovery message is never worth failing a run
        log.exception("could not clear alerts %s", keys)
        return False


@contextmanager
def connection(settings: Settings, conn=None) -> Iterator:
    """The caller's connection ``conn``, or one of its own (autocommit), closed when the block ends."""
    if conn is not None:
        yield conn
        return
    import psycopg

    with closing(psycopg.connect(settings.postgres_conninfo, autocommit=True, connect_timeout=10)) as owned:
        yield owned
