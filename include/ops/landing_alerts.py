"""The WARNINGs about LANDING_DIR: files quarantined, and files that wait too long (and why).

Both are raised by ``detect_work`` every minute, bounded: one alert names at most ``LISTED`` files and counts
the rest, with the SQL that lists them all.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from include.ops.alerts import WARNING, Alert, airflow_base_url, clear_alerts, links, raise_alert, shorten
from include.settings import Settings

QUARANTINED = "quarantined_files"   # files quarantined since the last alert
LANDING_WAITING = "landing_waiting"  # files waiting in LANDING_DIR longer than LANDING_STUCK_MINUTES
LISTED = 10


def alert_quarantined(settings: Settings, conn, run_id: str | None) -> int:
    """One WARNING naming the files quarantined since the last one (by the detect task or the ingest), with
    their reasons; returns how many it covered."""
    rows = conn.execute(
        "SELECT id, delivery_id, source_file, quarantine_path, reason FROM quarantined_files "
        "WHERE alerted_at IS NULL ORDER BY id").fetchall()
    if not rows:
        return 0
    names = [f"{_name(source)}: {shorten(reason, 200)}" for _, _, source, _, reason in rows]
    first, last = rows[0][0], rows[-1][0]
    raise_alert(settings, Alert(
        WARNING, QUARANTINED, f"{first}-{last}",
        f"{len(rows)} file(s) from the landing directory quarantined", run_id=run_id,
        details=(*names[:LISTED], *([f"and {len(rows) - LISTED} more"] if len(rows) > LISTED else []),
                 "nothing of them was stored; each reason and where the file is: SELECT delivery_id, source_file, "
                 f"reason, quarantine_path FROM quarantined_files WHERE id BETWEEN {first} AND {last} ORDER BY id;"),
        links=links(airflow_base_url(), run_id)), conn)
    conn.execute("UPDATE quarantined_files SET alerted_at = now() WHERE id = ANY(%s)", ([r[0] for r in rows],))
    return len(rows)


def alert_waiting(settings: Settings, conn, stuck: list[tuple[str, str, datetime]], run_id: str | None) -> None:
    """One WARNING while files wait in LANDING_DIR longer than LANDING_STUCK_MINUTES, naming them and why (a new
    one when the set changes); a recovery when none waits that long any more."""
    base_url = airflow_base_url()
    if not stuck:
        clear_alerts(settings, (LANDING_WAITING,), "no file waits in the landing directory any more", run_id,
                     base_url, conn)
        return
    names = sorted(name for name, _, _ in stuck)
    fingerprint = hashlib.sha256("\0".join(names).encode()).hexdigest()[:16]
    details = [f"{name}: {reason} (first seen {first:%Y-%m-%d %H:%M} UTC)" for name, reason, first in
               sorted(stuck, key=lambda s: s[2])]
    raise_alert(settings, Alert(
        WARNING, LANDING_WAITING, fingerprint,
        f"{len(stuck)} file(s) waiting in the landing directory for over {settings.landing_stuck_minutes} min",
        run_id=run_id,
        details=(*details[:LISTED], *([f"and {len(details) - LISTED} more"] if len(details) > LISTED else []),
                 "every waiting file and why: SELECT name, reason, first_seen_at FROM landing_waits ORDER BY "
                 "first_seen_at;", "how a producer makes a file complete: README, \"Use your own feed\""),
        links=links(base_url, run_id)), conn)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]
