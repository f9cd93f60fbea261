"""The delivery ledger: every file that lands in LANDING_DIR is one delivery, from its claim to its archive.

A delivery is a file, not a path: a name delivered again is a new delivery, whatever its modification time.
Its row in ``deliveries`` (id, the name it landed under, its size, when it was claimed) is written in the same
transaction that renames the file out of LANDING_DIR into ``LANDING_DIR/.claimed/<id>__<name>``; the rename
is atomic (same directory tree, same file system). A crash between the rename and the commit leaves a claimed
file without a row, which the next claim registers before it claims anything else (``_register_orphans``), so
each file becomes exactly one delivery. Only then does the ingest see it: the Spark stream's source is this
table (``spark_jobs.delivery_source``), not a directory listing, so Spark's own file tracking (paths seen,
``maxFileAge``) never decides what is new.

``deliveries.status``, in order:

| status | the file is | set by |
| --- | --- | --- |
| ``claimed`` | in ``.claimed/``, waiting for the ingest | ``claim`` |
| ``staged`` | in ``.claimed/``; its rows are in ``staging_events`` | the ingest's ledger record (``include.storage.staging_table``) |
| ``archived`` | in ``ARCHIVE_DIR/YYYY-MM-DD/HH/<id>__<name>`` (by claim time) | ``finalize`` |
| ``quarantined`` | in ``QUARANTINE_DIR/YYYY-MM-DD/<id>__<name>``; why in ``quarantined_files`` | ``claim`` (not a file to read) or the ingest (unreadable) |
| ``expired`` | deleted by archive retention | ``include.ops.retention`` |

Every move out of ``.claimed/`` happens after the status that asks for it is committed, and ``finalize``
repeats any move a crash interrupted; the path a delivery goes to is a function of its row, so a repeat finds
it there.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from include.names import CLAIM_LOCK
from include.settings import Settings
from include.storage.landing import CLAIMED_DIRNAME, Entry, Stock, Verdict, take_stock
from include.storage.locks import xact_lock

_SEPARATOR = "__"


@dataclass(frozen=True)
class Delivery:
    delivery_id: int
    file_name: str       # the name it landed under
    source_file: str     # its landing path: the lineage its rows carry
    size_bytes: int      # what the ingest reads of it: its size when it was claimed
    claimed_at: datetime
    status: str
    path: str            # where the file is now
    attempts: int = 0    # ingest attempts that crashed while it was being read (poison files)


_COLUMNS = "delivery_id, file_name, source_file, size_bytes, claimed_at, status, path, attempts"


def claimed_dir(settings: Settings) -> Path:
    return settings.landing_dir / CLAIMED_DIRNAME


def stored_name(delivery_id: int, file_name: str) -> str:
    """The name a delivery's file has in ``.claimed/``, the archive and the quarantine: unique by its id, and
    still the producer's name for people (``42__orders.csv``)."""
    return f"{delivery_id}{_SEPARATOR}{file_name}"


def split_stored_name(name: str) -> tuple[int, str] | None:
    head, separator, file_name = name.partition(_SEPARATOR)
    return (int(head), file_name) if separator and head.isdigit() and file_name else None


def archive_path(settings: Settings, delivery: Delivery) -> Path:
    """Where a staged delivery's file goes: by the hour it was claimed, so a time window maps to a few folders."""
    at = delivery.claimed_at.astimezone(UTC)
    return settings.archive_dir / f"{at:%Y-%m-%d}" / f"{at:%H}" / stored_name(delivery.delivery_id, delivery.file_name)


def quarantine_path(settings: Settings, delivery: Delivery) -> Path:
    at = delivery.claimed_at.astimezone(UTC)
    return settings.quarantine_dir / f"{at:%Y-%m-%d}" / stored_name(delivery.delivery_id, delivery.file_name)


@dataclass
class Claimed:
    """What one claim did."""

    deliveries: list[Delivery]                 # claimed for the ingest
    quarantined: list[tuple[Delivery, str]]    # with the reason
    recovered: list[Delivery]                  # claimed files a crash left without a row
    stock: Stock                               # the look at LANDING_DIR it acted on


def claim(settings: Settings, conn: psycopg.Connection, run_id: str | None = None,
          now: datetime | None = None) -> Claimed:
    """Look at LANDING_DIR and claim every complete entry (``include.storage.landing``), in one transaction
    under the claim lock: a feed file becomes a ``claimed`` delivery, anything to quarantine a ``quarantined``
    one with its reason. Then move the quarantined ones to QUARANTINE_DIR (``finalize``)."""
    folder = claimed_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with conn.transaction():
        xact_lock(conn, CLAIM_LOCK)
        recovered = _register_orphans(settings, conn)
        stock = take_stock(settings, conn, now)
        claimed = [d for entry, verdict in stock.claim if (d := _claim(settings, conn, entry, verdict))]
        quarantined = []
        for entry, verdict in stock.quarantine:
            delivery = _claim(settings, conn, entry, verdict, status="quarantined")
            if delivery:
                conn.execute(
                    "INSERT INTO quarantined_files (source_file, quarantine_path, reason, airflow_run_id, delivery_id) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (delivery.source_file, str(quarantine_path(settings, delivery)), verdict.reason, run_id,
                     delivery.delivery_id))
                quarantined.append((delivery, verdict.reason))
    if quarantined:
        finalize(settings, conn, [d for d, _ in quarantined])
    return Claimed(claimed, quarantined, recovered, stock)


def _claim(settings: Settings, conn: psycopg.Connection, entry: Entry, verdict: Verdict,
           status: str = "claimed") -> Delivery | None:
    """Rename one entry into ``.claimed/`` under a new delivery id and record it (the caller's transaction).
    None when the entry is gone, or changed between the look and the rename (then it is put back)."""
    delivery_id = conn.execute("SELECT nextval('deliveries_delivery_id_seq')").fetchone()[0]
    source = settings.landing_dir / entry.name
    target = claimed_dir(settings) / stored_name(delivery_id, entry.name)
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return None
    now = os.lstat(target)
    if (now.st_ino, now.st_size, now.st_mtime_ns) != (entry.inode, entry.size, entry.mtime_ns):
        # written to between the look and the rename: still being written, so not complete; back it goes
        if not source.exists():
            os.rename(target, source)
        return None
    row = conn.execute(
        f"""INSERT INTO deliveries (delivery_id, file_name, source_file, size_bytes, modified_at, completed_by,
                                    status, path)
            VALUES (%s, %s, %s, %s, to_timestamp(%s), %s, %s, %s) RETURNING {_COLUMNS}""",
        (delivery_id, entry.name, str(source), now.st_size, now.st_mtime_ns / 1e9, verdict.completed_by, status,
         str(target))).fetchone()
    marker = settings.landing_dir / (entry.name + settings.landing_marker_suffix)
    if verdict.completed_by == "marker":
        marker.unlink(missing_ok=True)
    return Delivery(*row)


def _register_orphans(settings: Settings, conn: psycopg.Connection) -> list[Delivery]:
    """Files in ``.claimed/`` without a row: a claim that renamed them and died before its commit. Each is
    registered under the id its name carries (never handed out again: it came from the sequence), before any
    new id is: so the stream, which reads ids in order, cannot have passed it."""
    folder = claimed_dir(settings)
    found = {ids: name for name in os.listdir(folder) if (ids := split_stored_name(name))}
    if not found:
        return []
    known = {i for (i,) in conn.execute("SELECT delivery_id FROM deliveries WHERE delivery_id = ANY(%s)",
                                        ([i for i, _ in found],))}
    recovered = []
    for (delivery_id, file_name), name in sorted(found.items()):
        if delivery_id in known:
            continue
        st = os.lstat(folder / name)
        row = conn.execute(
            f"""INSERT INTO deliveries (delivery_id, file_name, source_file, size_bytes, modified_at, completed_by,
                                        status, path)
                VALUES (%s, %s, %s, %s, to_timestamp(%s), 'recovered', 'claimed', %s) RETURNING {_COLUMNS}""",
            (delivery_id, file_name, str(settings.landing_dir / file_name), st.st_size, st.st_mtime_ns / 1e9,
             str(folder / name))).fetchone()
        recovered.append(Delivery(*row))
    return recovered


def finalize(settings: Settings, conn: psycopg.Connection, deliveries: list[Delivery] | None = None) -> list[Delivery]:
    """Move staged deliveries' files to the archive and quarantined ones' to QUARANTINE_DIR, and record where
    they are (staged -> archived). ``None``: every delivery whose file a crash left in ``.claimed/``. Safe to
    repeat and to run twice at once: a move already done is found done."""
    if deliveries is None:
        deliveries = [Delivery(*row) for row in conn.execute(
            f"SELECT {_COLUMNS} FROM deliveries WHERE status IN ('staged', 'quarantined') AND path LIKE %s",
            (str(claimed_dir(settings)) + "/%",))]
    moved = []
    for delivery in deliveries:
        quarantined = delivery.status == "quarantined"
        target = quarantine_path(settings, delivery) if quarantined else archive_path(settings, delivery)
        source = Path(delivery.path)
        grown = 0
        if source != target:
            grown = _size(source) - delivery.size_bytes
            _move(source, target)
        with conn.transaction():
            if grown > 0 and not quarantined:
                _record_growth(conn, delivery, target, grown)
            conn.execute("UPDATE deliveries SET path = %s, status = CASE WHEN status = 'staged' THEN 'archived' "
                         "ELSE status END, finalized_at = now() WHERE delivery_id = %s",
                         (str(target), delivery.delivery_id))
        moved.append(delivery)
    return moved


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


def _record_growth(conn: psycopg.Connection, delivery: Delivery, target: Path, grown: int) -> None:
    """A producer kept writing into a file after it was claimed (it was idle for LANDING_SETTLE_SECONDS, then
    wrote on): only the bytes it had when claimed were read. The rest is kept in the archived file and said in
    ``quarantined_files`` (the detect task's WARNING names it), never silently dropped."""
    conn.execute(
        "INSERT INTO quarantined_files (source_file, quarantine_path, reason, delivery_id) VALUES (%s, %s, %s, %s)",
        (delivery.source_file, str(target),
         f"written to after it was claimed: {grown} byte(s) after byte {delivery.size_bytes} were not read (the "
         "producer paused longer than LANDING_SETTLE_SECONDS, then wrote on); the archived file holds them all: "
         "deliver the rest as a new file, or announce complete files with a marker", delivery.delivery_id))


def _move(source: Path, target: Path) -> None:
    """Move a file (or, from a quarantine claim, a link or a directory, never followed) to ``target``; nothing
    to do if it is there already (a repeat). Across file systems: a copy under a temporary name, renamed into
    place, then the source removed, so a crash never leaves a half-copied file under the final name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
        return
    except FileNotFoundError:
        if os.path.lexists(target):
            return
        raise
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    partial = target.with_name(f".{target.name}.partial")
    if source.is_symlink():
        os.symlink(os.readlink(source), partial)
    elif source.is_dir():
        shutil.copytree(source, partial, symlinks=True)
    else:
        shutil.copy2(source, partial, follow_symlinks=False)
    os.replace(partial, target)
    shutil.rmtree(source) if source.is_dir() and not source.is_symlink() else source.unlink()


# ------------------------------------------------------------------------------------------- the ingest's view

def waiting(conn: psycopg.Connection, through: int | None, limit: int) -> list[Delivery]:
    """Claimed deliveries the ingest has not staged, oldest id first (at most ``limit``; only ids up to
    ``through`` when given)."""
    return [Delivery(*row) for row in conn.execute(
        f"SELECT {_COLUMNS} FROM deliveries WHERE status = 'claimed' AND (%s::bigint IS NULL OR delivery_id <= %s) "
        "ORDER BY delivery_id LIMIT %s", (through, through, limit))]


def newest_claimed(conn: psycopg.Connection) -> int | None:
    return conn.execute("SELECT max(delivery_id) FROM deliveries WHERE status = 'claimed'").fetchone()[0]


def count_attempts(conn: psycopg.Connection, delivery_ids: list[int]) -> None:
    """An ingest is about to read these deliveries: count the attempt. A successful staging clears it
    (``clear_attempts``, or the ledger record); a delivery whose reading keeps crashing the job is quarantined
    after POISON_FILE_MAX_ATTEMPTS (``spark_jobs.delivery_source``)."""
    with conn.transaction():
        conn.execute("UPDATE deliveries SET attempts = attempts + 1 WHERE delivery_id = ANY(%s)", (delivery_ids,))


def clear_attempts(conn: psycopg.Connection, delivery_ids: list[int]) -> None:
    with conn.transaction():
        conn.execute("UPDATE deliveries SET attempts = 0 WHERE delivery_id = ANY(%s)", (delivery_ids,))


def claimed_in(conn: psycopg.Connection, start: datetime, end: datetime) -> list[Delivery]:
    """The deliveries claimed in [start, end) whose files are still archived: what a backfill of that window
    re-reads."""
    return [Delivery(*row) for row in conn.execute(
        f"SELECT {_COLUMNS} FROM deliveries WHERE claimed_at >= %s AND claimed_at < %s AND status = 'archived' "
        "ORDER BY delivery_id", (start, end))]


def by_ids(conn: psycopg.Connection, delivery_ids: list[int]) -> list[Delivery]:
    return [Delivery(*row) for row in conn.execute(
        f"SELECT {_COLUMNS} FROM deliveries WHERE delivery_id = ANY(%s) ORDER BY delivery_id", (delivery_ids,))]


# The DAG's schedule period: the window of a run whose data interval is empty (a manual run, or one made before
# the DAG's timetable carried an interval) is the period that ends at its logical date.
DEFAULT_WINDOW = timedelta(minutes=1)


def window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The claim-time window [start, end) of a run's data interval (see ``DEFAULT_WINDOW``)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    return (end - DEFAULT_WINDOW, end) if start >= end else (start, end)
