"""The landing directory as the DAG sees it, before any Spark job: what waits, and what Spark would never read.

Spark's file scan skips zero-byte files, and it reads only feed files (``*.csv``, ``*.csv.gz``,
``*.csv.bz2``), so an empty file or a ``report.xlsx`` would never be read, archived or explained. The DAG's
first task quarantines such files itself once they are old enough not to be a file someone is still writing
(the generator renames complete files into place, but other producers may not). Names starting with ``.``
or ``_`` are in-flight by convention (Spark skips them too) and are left alone.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from include.settings import Settings

EMPTY_FILE_REASON = "empty file: no header and no rows"
EMPTY_FILE_GRACE_SECONDS = 30
# What the ingest reads from LANDING_DIR (compressed files are read like plain ones). The Spark stream's
# glob (``SPARK_GLOB``) says the same. Any other file is quarantined, never left waiting unseen.
FEED_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".csv.bz2")
SPARK_GLOB = "*.{csv,csv.gz,csv.bz2}"


def feed_suffix(name: str) -> str | None:
    """The feed suffix ``name`` ends with (the longest), or None if it is not a feed file."""
    return next((suffix for suffix in sorted(FEED_SUFFIXES, key=len, reverse=True) if name.endswith(suffix)), None)


def split_name(name: str) -> tuple[str, str]:
    """(stem, suffix) with a feed file's whole suffix: ``a.csv.gz`` -> (``a``, ``.csv.gz``)."""
    suffix = feed_suffix(name) or Path(name).suffix
    return name[: len(name) - len(suffix)] if suffix else name, suffix


def foreign_file_reason(name: str) -> str:
    return (f"not a feed file: LANDING_DIR takes {', '.join('*' + s for s in FEED_SUFFIXES)} "
            f"(this one is named {name!r})")
# The DAG's schedule period: the window of a run whose data interval is empty (runs made before the DAG's
# timetable carried an interval) is the period that ends at its logical date.


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
    stem, suffix = split_name(target.name)
    while candidate.exists():
        n += 1
        candidate = target.with_name(f"{stem}__{n}{suffix}")
    shutil.move(str(source), str(candidate))
    return candidate


def _landed(landing_dir: Path) -> list[Path]:
    """The files of LANDING_DIR, feed files or not (names starting with '.' or '_' are in-flight)."""
    if not landing_dir.is_dir():
        return []
    return sorted(p for p in landing_dir.iterdir() if p.is_file() and not p.name.startswith((".", "_")))


def waiting_files(landing_dir: Path) -> list[Path]:
    """Non-empty CSV files waiting for the Spark job (names starting with '.' or '_' are in-flight)."""
    return [p for p in _landed(landing_dir) if feed_suffix(p.name) and p.stat().st_size > 0]


def quarantine_unreadable_files(
    settings: Settings, conn: psycopg.Connection, airflow_run_id: str | None, now: float | None = None
) -> list[tuple[Path, str]]:
    """Move to QUARANTINE_DIR, and record why, the files of LANDING_DIR Spark would never read: zero-byte
    feed files (its scan skips them) and files that are not feed files at all (``FEED_SUFFIXES``), once
    they are older than the grace period (a producer may still be writing them). Returns (new path, reason)."""
    now = time.time() if now is None else now
    moved = []
    for path in _landed(settings.landing_dir):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        foreign = feed_suffix(path.name) is None
        if (stat.st_size > 0 and not foreign) or now - stat.st_mtime < EMPTY_FILE_GRACE_SECONDS:
            continue
        reason = foreign_file_reason(path.name) if foreign else EMPTY_FILE_REASON
        target = quarantine_path(settings.quarantine_dir, path, datetime.fromtimestamp(now, UTC))
        with conn.transaction():
            final = move_file(path, target)
            if final is None:
                continue
            conn.execute(
                "INSERT INTO quarantined_files (source_file, quarantine_path, reason, airflow_run_id) "
                "VALUES (%s, %s, %s, %s)",
                (str(path), str(final), reason, airflow_run_id),
            )
        moved.append((final, reason))
    return moved


# --------------------------------------------------------------------- the archive, by landing time
# A file's landing time is its modification time: Spark's binaryFile source reports it, the ingest files it
# under ARCHIVE_DIR/YYYY-MM-DD/HH/ by it, and the move into the archive preserves it, so a time window maps
# to a few hour folders and no table needs to be kept in sync with the archive.

DEFAULT_WINDOW = timedelta(minutes=1)
_COLLISION_SUFFIX = re.compile(r"^(?P<stem>.+)__\d+$")


@dataclass(frozen=True)
class ArchivedFile:
    path: Path          # where it is now, under ARCHIVE_DIR
    source_file: str    # its lineage name: the landing path recorded on its rows
    landed_at: datetime


def window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The landing-time window [start, end) of a run's data interval (see ``DEFAULT_WINDOW``)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    return (end - DEFAULT_WINDOW, end) if start >= end else (start, end)


def landed_at(path: Path) -> datetime:
    """The landing time of a file: its mtime, at the millisecond precision Spark reports and files it by."""
    milliseconds = path.stat().st_mtime_ns // 1_000_000
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


def lineage_name(settings: Settings, archived: Path) -> str:
    """The landing path its rows carry as ``source_file`` (the archive keeps the name; ``x__1.csv`` is the
    second file named ``x.csv`` in one hour folder)."""
    stem, suffix = split_name(archived.name)
    match = _COLLISION_SUFFIX.match(stem)
    name = f"{match['stem']}{suffix}" if match else archived.name
    return str(settings.landing_dir / name)


def archived_files(settings: Settings, start: datetime, end: datetime) -> list[ArchivedFile]:
    """The archived CSV files that landed in [start, end), reading only the hour folders of the window."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    found = []
    hour = start.replace(minute=0, second=0, microsecond=0)
    while hour < end:
        folder = settings.archive_dir / f"{hour:%Y-%m-%d}" / f"{hour:%H}"
        for path in sorted(p for p in folder.iterdir() if feed_suffix(p.name)) if folder.is_dir() else []:
            moment = landed_at(path)
            if start <= moment < end:
                found.append(ArchivedFile(path, lineage_name(settings, path), moment))
        hour += timedelta(hours=1)
    return found
