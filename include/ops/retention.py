"""Retention of the archive: delete whole hour folders older than ARCHIVE_RETENTION_DAYS (0 keeps all).

Called daily by the ``ecommerce_archive_retention`` DAG. A backfill can only re-read windows still archived.
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from typing import Any

from include.settings import Settings
from include.storage.locks import revalidation_lock

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HOUR = re.compile(r"^\d{2}$")


def delete_expired_archive(settings: Settings, now: datetime | None = None,
                           lock_wait_seconds: float = 60) -> dict[str, Any]:
    """Delete archived files older than ARCHIVE_RETENTION_DAYS (0 keeps everything).

    Safe by construction: only whole ``YYYY-MM-DD/HH`` hour folders of the archive layout whose hour ended
    before the cut-off are touched (nothing else under ARCHIVE_DIR, nothing in the landing or quarantine
    directories); an archived file has been read whole by definition (a file is archived only after its rows
    are staged and its batch is in the ledger; the publish works from ``staging_events``, never from the
    file); and the deletion holds the revalidation lock, so it never pulls a file from under a running
    backfill (it skips this time if one is running).
    """
    from include.storage.connections import with_connection

    days = settings.archive_retention_days
    if days <= 0:
        return {"retention_days": days, "deleted_files": 0, "deleted_folders": 0, "skipped": "retention disabled"}
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    files = folders = 0
    with revalidation_lock(settings, wait_seconds=lock_wait_seconds) as acquired:
        if not acquired:
            return {"retention_days": days, "deleted_files": 0, "deleted_folders": 0,
                    "skipped": "a backfill or replay is running"}
        for day in sorted(p for p in settings.archive_dir.glob("*") if p.is_dir() and _DAY.match(p.name)):
            for hour in sorted(p for p in day.glob("*") if p.is_dir() and _HOUR.match(p.name)):
                ends = datetime.strptime(f"{day.name} {hour.name}", "%Y-%m-%d %H").replace(tzinfo=UTC) + timedelta(hours=1)
                if ends > cutoff:
                    continue
                files += sum(1 for p in hour.rglob("*") if p.is_file())
                shutil.rmtree(hour)
                folders += 1
            if not any(day.iterdir()):
                day.rmdir()
        # every hour folder that ended before the cut-off is gone: so are the files of the deliveries claimed then
        expired = with_connection(settings, lambda conn: conn.execute(
            "UPDATE deliveries SET status = 'expired' WHERE status = 'archived' "
            "AND claimed_at < date_trunc('hour', %s::timestamptz)", (cutoff,)).rowcount)
    return {"retention_days": days, "cutoff": cutoff.isoformat(), "deleted_files": files, "deleted_folders": folders,
            "expired_deliveries": expired}
