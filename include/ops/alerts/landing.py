"""The alerts about LANDING_DIR, raised by ``detect_work`` every minute: files quarantined (one WARNING each, at
most ALERT_MAX_PER_RUN a run, one more for the rest) and files waiting longer than LANDING_STUCK_MINUTES (one
WARNING naming them and why, a recovery once none waits that long)."""

from __future__ import annotations

import hashlib
from datetime import datetime

from include.ops.alerts import queries
from include.ops.alerts.conditions import airflow_base_url, more_alert
from include.ops.alerts.message import WARNING, Alert, links, shorten
from include.ops.alerts.state import clear_alerts, raise_alert, raise_alerts
from include.settings import Settings

QUARANTINED_FILE = "quarantined_file"   # + ":" + the quarantine record's id: one alert per file
LANDING_WAITING = "landing_waiting"     # files waiting in LANDING_DIR longer than LANDING_STUCK_MINUTES
LISTED = 10


def quarantined_file_alert(record_id: int, delivery_id: int | None, source_file: str, path: str, reason: str,
                           run_id: str | None, base_url: str) -> Alert:
    name = source_file.rsplit("/", 1)[-1]
    return Alert(WARNING, f"{QUARANTINED_FILE}:{record_id}", reason[:200],
                 f"file {name!r} from the landing directory quarantined", run_id=run_id,
                 details=(reason, f"delivery {delivery_id}, now at {path}; nothing of it was stored"),
                 links=links(base_url, run_id), queries={"its record": queries.quarantined_file(record_id)})


def alert_quarantined(settings: Settings, conn, run_id: str | None) -> int:
    """The files quarantined since the last look (by the detect task or the ingest), each alerted once; returns
    how many there were."""
    rows = conn.execute("SELECT id, delivery_id, source_file, quarantine_path, reason FROM quarantined_files "
                        "WHERE alerted_at IS NULL ORDER BY id").fetchall()
    if not rows:
        return 0
    base_url = airflow_base_url()
    raise_alerts(settings, [quarantined_file_alert(*row, run_id, base_url) for row in rows],
                 lambda others: more_alert(others, "files quarantined from the landing directory",
                                           {"all of them": queries.quarantined_between(rows[0][0], rows[-1][0])}, run_id, base_url),
                 conn)
    conn.execute("UPDATE quarantined_files SET alerted_at = now() WHERE id = ANY(%s)", ([r[0] for r in rows],))
    return len(rows)


def landing_waiting_alert(stuck: list[tuple[str, str, datetime]], minutes: int, run_id: str | None,
                          base_url: str) -> Alert:
    """Files waiting in LANDING_DIR longer than ``minutes``: (name, why, first seen) each, at most ``LISTED``."""
    names = sorted(name for name, _, _ in stuck)
    details = [f"{name}: {shorten(reason, 200)} (first seen {first:%Y-%m-%d %H:%M} UTC)"
               for name, reason, first in sorted(stuck, key=lambda s: s[2])]
    return Alert(
        WARNING, LANDING_WAITING, hashlib.sha256("\0".join(names).encode()).hexdigest()[:16],
        f"{len(stuck)} file(s) waiting in the landing directory for over {minutes} min", run_id=run_id,
        details=(*details[:LISTED], *([f"and {len(details) - LISTED} more"] if len(details) > LISTED else []),
                 'how a producer makes a file complete: README, "Use your own feed"'),
        links=links(base_url, run_id), queries={"every waiting file and why": queries.LANDING_WAITS})


def alert_waiting(settings: Settings, conn, stuck: list[tuple[str, str, datetime]], run_id: str | None) -> None:
    """One WARNING while files wait in LANDING_DIR longer than LANDING_STUCK_MINUTES (a new one when the set
    changes); a recovery when none waits that long any more."""
    base_url = airflow_base_url()
    if stuck:
        raise_alert(settings, landing_waiting_alert(stuck, settings.landing_stuck_minutes, run_id, base_url), conn)
    else:
        clear_alerts(settings, (LANDING_WAITING,), "no file waits in the landing directory any more", run_id,
                     base_url, conn)
