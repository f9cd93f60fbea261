"""``detect_work`` of an every-minute run: is there anything to do, and may the circuit breaker let it run?

Anything to do means feed files (``*.csv``, ``*.csv.gz``, ``*.csv.bz2``) waiting in LANDING_DIR, or batches an
earlier run staged but did not publish. Zero-byte files (which Spark's scan skips) and files that are not
feed files are quarantined here once they are old enough; each of the latter raises a WARNING. The answer costs
a directory listing and one short transaction: no JVM for an empty minute.
"""

from __future__ import annotations

from datetime import UTC, datetime

from include.ops import circuit_breaker
from include.ops.alerts import alert_foreign_files
from include.settings import Settings
from include.storage.connections import with_connection
from include.storage.landing import feed_suffix, quarantine_unreadable_files, waiting_files


def detect_every_minute_work(settings: Settings, run_id: str | None) -> bool:
    breaker = circuit_breaker.breaker_from_settings(settings)

    def look(conn):
        moved = quarantine_unreadable_files(settings, conn, run_id)
        unpublished = conn.execute("SELECT count(*) FROM pipeline_batch_ledger WHERE published_at IS NULL").fetchone()[0]
        now = datetime.now(UTC)  # the decision is pure: the same state and time give the same answer
        before, _ = circuit_breaker.transition(conn, lambda state: breaker.decide(state, now).state)
        return moved, unpublished, breaker.decide(before, now)

    moved, unpublished, decision = with_connection(settings, look)
    for path, reason in moved:
        print(f"quarantined {path}: {reason}")
    alert_foreign_files(settings, [(path, reason) for path, reason in moved if feed_suffix(path.name) is None], run_id)
    waiting = waiting_files(settings.landing_dir)
    print(f"{len(waiting)} file(s) waiting in {settings.landing_dir}; {unpublished} batch(es) staged, unpublished")
    print(decision.message)
    return bool(waiting or unpublished) and decision.allowed


def record_published_run(settings: Settings) -> None:
    """A run got through publish: the circuit breaker closes (or stays closed)."""
    breaker = circuit_breaker.breaker_from_settings(settings)
    with_connection(settings, lambda conn: circuit_breaker.transition(conn, breaker.on_success))
