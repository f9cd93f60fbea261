"""The landing directory as the DAG sees it, before any Spark job: what waits, and empty files.

Spark's file scan skips zero-byte files, so an empty ``*.csv`` would never be read, archived or explained.
The DAG's first task quarantines such files itself once they are old enough not to be a file someone is
still writing (the generator renames complete files into place, but other producers may not).
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from include.settings import Settings

EMPTY_FILE_REASON = "empty file: no header and no rows"
EMPTY_FILE_GRACE_SECONDS = 30


def archive_path(archive_dir: Path, source: Path, landed_at: datetime) -> Path:
    """Where a processed file goes: partitioned by landing hour so a time window maps to a few folders."""
    return archive_dir / f"{landed_at:%Y-%m-%d}" / f"{landed_at:%H}" / source.name


def quarantine_path(quarantine_dir: Path, source: Path | str, at: datetime) -> Path:
    """Where an unreadable file goes: a folder per day it was quarantined."""
    return quarantine_dir / f"{at:%Y-%m-%d}" / Path(source).name


def move_file(source: Path, target: Path) -> Path | None:
    """Move ``source`` to ``target`` (a free name next to it if taken); ``None`` if it is already gone."""
    if not source.exists():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = target, 0
    while candidate.exists():
        n += 1
        candidate = target.with_name(f"{target.stem}__{n}{target.suffix}")
    shutil.move(str(source), str(candidate))
    return candidate


def _candidates(landing_dir: Path) -> list[Path]:
    if not landing_dir.is_dir():
        return []
    return sorted(p for p in landing_dir.glob("*.csv") if p.is_file() and not p.name.startswith((".", "_")))


def waiting_files(landing_dir: Path) -> list[Path]:
    """Non-empty CSV files waiting for the Spark job (names starting with '.' or '_' are in-flight)."""
    return [p for p in _candidates(landing_dir) if p.stat().st_size > 0]


def quarantine_empty_files(
    settings: Settings, conn: psycopg.Connection, airflow_run_id: str | None, now: float | None = None
) -> list[Path]:
    """Move zero-byte CSV files older than the grace period to QUARANTINE_DIR and record why."""
    now = time.time() if now is None else now
    moved = []
    for path in _candidates(settings.landing_dir):
        stat = path.stat()
        if stat.st_size > 0 or now - stat.st_mtime < EMPTY_FILE_GRACE_SECONDS:
            continue
        target = quarantine_path(settings.quarantine_dir, path, datetime.fromtimestamp(now, UTC))
        with conn.transaction():
            final = move_file(path, target)
            if final is None:
                continue
            conn.execute(
                "INSERT INTO quarantined_files (source_file, quarantine_path, reason, airflow_run_id) "
                "VALUES (%s, %s, %s, %s)",
                (str(path), str(final), EMPTY_FILE_REASON, airflow_run_id),
            )
        moved.append(final)
    return moved
