"""Housekeeping: what grows with every run and is only history once it is old enough.

Called daily by the ``ecommerce_housekeeping`` DAG, one function per kind (each returns what it pruned):

* ``prune_airflow_metadata``: Airflow's runs, task instances, XComs, audit log, jobs and asset events older
  than AIRFLOW_METADATA_RETENTION_DAYS, through ``airflow db clean``;
* ``delete_expired_task_logs``: Airflow's task log files older than the same retention;
* ``rotate_component_logs``: ``make run``'s component logs (and ALERT_FILE) above COMPONENT_LOG_MAX_BYTES;
* ``prune_pipeline_tables``: the pipeline's own history tables older than PIPELINE_HISTORY_RETENTION_DAYS
  and replayed / resolved dead letters older than RESOLVED_DEAD_LETTER_RETENTION_DAYS.

A retention of 0 days keeps everything of its kind. Nothing here deletes state a running pipeline still
needs: open dead letters, unpublished ledger rows, the ledger row the streaming checkpoint could replay,
active alert conditions, and Airflow's latest scheduled run of each DAG all stay.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from include.names import PUBLISH_LOCK
from include.settings import Settings
from include.storage.connections import open_connection
from include.storage.locks import revalidation_lock, xact_lock

# The metadata tables that grow with every run. `airflow db clean` adds the tables that depend on them
# (dag_run brings task_instance, task_state_store and deadline; task_instance brings task_instance_history and
# xcom) and keeps the latest scheduled run of each DAG, which the scheduler continues from. Left out on purpose:
# `dag` and `dag_version` (a DAG not parsed for a month is not necessarily gone; the dag-processor owns them),
# `trigger` (the triggerer deletes finished triggers itself), `import_error`, `callback` and the session table.
METADATA_TABLES = ("dag_run", "task_instance", "task_instance_history", "task_reschedule", "xcom", "log", "job",
                   "asset_event")
# rows per DELETE transaction in `airflow db clean` and in prune_pipeline_tables: a first run after months
# deletes in many short transactions instead of one that holds its locks for minutes
BATCH_SIZE = 10_000


class MetadataCleanupFailed(RuntimeError):
    """`airflow db clean` exited non-zero; the message carries the end of its output. Nothing is half-deleted:
    each batch is its own transaction, so the task's retry (or tomorrow's run) continues where it stopped."""


@dataclass
class Pruned:
    """What one housekeeping step did: rows or files deleted per table or kind (rotated logs: their size), the
    cut-offs it used (setting -> timestamp), or why it did nothing."""

    deleted: dict[str, int] = field(default_factory=dict)
    cutoffs: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cutoff(days: int, now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)) - timedelta(days=days)


# ------------------------------------------------------------------------------------------ Airflow metadata

def prune_airflow_metadata(settings: Settings, metadata_url: str | None, now: datetime | None = None,
                           env: Mapping[str, str] | None = None, timeout_seconds: float = 3600) -> Pruned:
    """Delete Airflow metadata older than AIRFLOW_METADATA_RETENTION_DAYS (0 keeps all) with ``airflow db clean``
    against the database at ``metadata_url`` (``None``: the one configured in ``env``, default ``os.environ``).

    A subprocess, not ``airflow.utils.db_cleanup.run_cleanup`` in this process: in Airflow 3 a task process has
    no metadata database. Before the task runs, the Task SDK's supervisor removes the ORM session and sets
    ``sql_alchemy_conn`` to ``airflow-db-not-allowed:///``, in the configuration and in the process environment
    (so a child inherits the blocked URL too: hence ``metadata_url``, which the DAG reads from the connection
    ``airflow_metadata``). ``--skip-archive``: the deleted rows are not copied into ``_airflow_deleted__*``
    tables, which would grow instead.
    """
    days = settings.airflow_metadata_retention_days
    if days <= 0:
        return Pruned(skipped="AIRFLOW_METADATA_RETENTION_DAYS=0 keeps all")
    cutoff = _cutoff(days, now)
    command = [sys.executable, "-m", "airflow", "db", "clean", "--clean-before-timestamp", cutoff.isoformat(),
               "--tables", ",".join(METADATA_TABLES), "--batch-size", str(BATCH_SIZE), "--skip-archive", "--yes",
               "--error-on-cleanup-failure"]
    child_env = dict(os.environ if env is None else env)
    if metadata_url:
        child_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = metadata_url
        child_env.pop("AIRFLOW__CORE__SQL_ALCHEMY_CONN", None)  # the deprecated name, blocked as well
    done = subprocess.run(command, env=child_env, capture_output=True, text=True, timeout=timeout_seconds,
                          check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        password = urlsplit(metadata_url).password if metadata_url else None
        tail = output[-4000:].replace(password, "***") if password else output[-4000:]
        raise MetadataCleanupFailed(f"`airflow db clean` exited with {done.returncode}:\n{tail}")
    return Pruned(rows_found(output), {"AIRFLOW_METADATA_RETENTION_DAYS": cutoff.isoformat()})


_CHECKING = re.compile(r"^Checking table (\S+)$", re.M)
_FOUND = re.compile(r"^Found (\d+) rows meeting deletion criteria\.$", re.M)


def rows_found(output: str) -> dict[str, int]:
    """Rows deleted per table, read from ``airflow db clean``'s output ("Checking table t" is followed by
    "Found n rows meeting deletion criteria."; run_cleanup returns nothing)."""
    found: dict[str, int] = {}
    table = None
    for match in sorted([*_CHECKING.finditer(output), *_FOUND.finditer(output)], key=lambda m: m.start()):
        if match.re is _CHECKING:
            table = match.group(1)
        elif table is not None:
            found[table] = int(match.group(1))
            table = None
    return found


# ---------------------------------------------------------------------------------------------------- logs

def delete_expired_task_logs(log_folder: Path, settings: Settings, now: datetime | None = None) -> Pruned:
    """Delete the files under Airflow's ``log_folder`` (``[logging] base_log_folder``: task, dag-processor and
    scheduler logs) last written before AIRFLOW_METADATA_RETENTION_DAYS ago, then the directories left empty.

    Same retention as the metadata: the UI reaches a task log only through its task instance, which
    ``prune_airflow_metadata`` deletes after that long. Symbolic links (the dag-processor's ``latest``) are
    left alone; a log still being written has a fresh modification time and stays.
    """
    days = settings.airflow_metadata_retention_days
    if days <= 0:
        return Pruned(skipped="AIRFLOW_METADATA_RETENTION_DAYS=0 keeps all")
    cutoff = _cutoff(days, now)
    files = size = 0
    if log_folder.is_dir():
        limit = cutoff.timestamp()
        for path in log_folder.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < limit:
                size += path.stat().st_size
                path.unlink()
                files += 1
        # deepest first, so a directory emptied by removing its empty children goes too
        for directory in sorted((p for p in log_folder.rglob("*") if p.is_dir() and not p.is_symlink()),
                                key=lambda p: len(p.parts), reverse=True):
            if not any(directory.iterdir()):
                directory.rmdir()
    return Pruned({"files": files, "bytes": size}, {"AIRFLOW_METADATA_RETENTION_DAYS": cutoff.isoformat()})


def rotate_component_logs(settings: Settings) -> Pruned:
    """Rotate each ``PIPELINE_LOG_DIR/*.log`` and ALERT_FILE larger than COMPONENT_LOG_MAX_BYTES (0 never
    rotates): ``x.log`` is copied to ``x.log.1`` (older copies move up, up to COMPONENT_LOG_BACKUPS) and then
    truncated in place.

    Copy-and-truncate, not rename: ``make run``'s supervisor opens each component's log once, in append mode,
    and the component writes to that descriptor for its whole life. After a rename it would go on writing
    into ``x.log.1`` and the new ``x.log`` would stay empty: nothing would shrink. Truncating the file itself
    works because an append-mode descriptor writes at the current end of the file, so the component continues
    at offset 0 (no hole of zeros up to its old position). The cost: lines written between the copy and the
    truncation (a few milliseconds) are lost, as with logrotate's ``copytruncate``.
    """
    limit, backups = settings.component_log_max_bytes, settings.component_log_backups
    if limit <= 0:
        return Pruned(skipped="COMPONENT_LOG_MAX_BYTES=0 never rotates")
    candidates = sorted(settings.pipeline_log_dir.glob("*.log")) if settings.pipeline_log_dir.is_dir() else []
    if settings.alert_file.is_file() and settings.alert_file not in candidates:
        candidates.append(settings.alert_file)
    rotated: dict[str, int] = {}
    for path in candidates:
        size = path.stat().st_size
        if size <= limit:
            continue
        rotate_by_copy_truncate(path, backups)
        rotated[path.name] = size
    return Pruned(rotated)


def rotate_by_copy_truncate(path: Path, backups: int) -> None:
    """``path`` → ``path.1`` → ... → ``path.<backups>`` (the oldest copy is dropped), then truncate ``path``."""
    if backups > 0:
        path.with_name(f"{path.name}.{backups}").unlink(missing_ok=True)
        for number in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{number}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{number + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)


# ------------------------------------------------------------------------------------------ pipeline tables

# table -> the rows of it that are history. %(history)s / %(dead_letters)s are the two cut-offs.
HISTORY_RULES: dict[str, str] = {
    "data_quality_metrics": "recorded_at < %(history)s",
    # Only published batches. Also kept: the newest batch of each streaming query, whatever its age. After a
    # crash between the ledger row and Spark's commit, the checkpoint replays its last batch id, and the ledger
    # row is what stops that replay from being staged (and published) twice; Spark plans batch n + 1 only
    # after committing batch n, so no older batch can come back.
    "pipeline_batch_ledger": (
        "published_at < %(history)s AND (spark_query_id, spark_batch_id) NOT IN "
        "(SELECT spark_query_id, max(spark_batch_id) FROM pipeline_batch_ledger GROUP BY spark_query_id)"),
    # only published backfill batches: an unpublished one still owns its rows in staging_events
    "pipeline_backfill_ledger": "published_at < %(history)s",
    "rule_violations": "recorded_at < %(history)s",
    "dead_letter_moves": "moved_at < %(history)s",
    # deliveries whose file is gone from the archive (retention) or sits in the quarantine: no backfill can
    # re-read them; the archived ones stay as long as their files (ARCHIVE_RETENTION_DAYS)
    "deliveries": "status IN ('expired', 'quarantined') AND claimed_at < %(history)s",
    # only conditions that recovered: a missing row and an inactive one mean the same to the de-duplication
    # (include/ops/alerts/state.py decide_raise), while an active one must stay to be neither repeated early nor
    # left without its recovery message
    "pipeline_alerts": "NOT active AND updated_at < %(history)s",
    # never 'open' ones: those are the live dead letters
    "dead_letter_events": ("status IN ('replayed', 'resolved') "
                           "AND coalesce(status_changed_at, failed_at) < %(dead_letters)s"),
}


def prune_pipeline_tables(settings: Settings, now: datetime | None = None, batch_size: int = BATCH_SIZE,
                          lock_wait_seconds: float = 60) -> Pruned:
    """Delete the history rows of ``HISTORY_RULES`` older than PIPELINE_HISTORY_RETENTION_DAYS (dead letters:
    RESOLVED_DEAD_LETTER_RETENTION_DAYS); a retention of 0 keeps its tables whole.

    Holds the revalidation lock for the whole pruning (it skips, as archive retention does, when a backfill
    or replay holds it longer than ``lock_wait_seconds``): backfills and replays read and change dead letters,
    moves and their ledger over several transactions. Each batch of at most ``batch_size`` rows is its own
    transaction under the publish lock, the lock of every writer of these tables, so no publish ever sees a
    half-pruned table and a publish waits for one short batch at most.
    """
    days = {"history": settings.pipeline_history_retention_days,
            "dead_letters": settings.resolved_dead_letter_retention_days}
    setting = {"history": "PIPELINE_HISTORY_RETENTION_DAYS", "dead_letters": "RESOLVED_DEAD_LETTER_RETENTION_DAYS"}
    cutoffs = {kind: _cutoff(days[kind], now) for kind in days}
    result = Pruned(cutoffs={setting[kind]: cutoffs[kind].isoformat() for kind in days if days[kind] > 0})
    tables = [table for table, rule in HISTORY_RULES.items()
              if days["dead_letters" if "%(dead_letters)s" in rule else "history"] > 0]
    if not tables:
        result.skipped = "PIPELINE_HISTORY_RETENTION_DAYS=0 and RESOLVED_DEAD_LETTER_RETENTION_DAYS=0 keep all"
        return result
    with revalidation_lock(settings, wait_seconds=lock_wait_seconds) as acquired:
        if not acquired:
            result.skipped = "a backfill or replay is running"
            return result
        conn = open_connection(settings, autocommit=True)
        try:
            for table in tables:
                result.deleted[table] = _delete_in_batches(conn, table, HISTORY_RULES[table], cutoffs, batch_size)
        finally:
            conn.close()
    return result


def _delete_in_batches(conn, table: str, rule: str, cutoffs: dict[str, datetime], batch_size: int) -> int:
    deleted = 0
    while True:
        with conn.transaction():
            xact_lock(conn, PUBLISH_LOCK)
            # by ctid: one statement for every table, whatever its key; the rule is checked again on the row
            # being deleted, so a row changed since the sub-select (an alert raised again) is left alone
            count = conn.execute(
                f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {rule} LIMIT %(limit)s))"
                f" AND {rule}", {**cutoffs, "limit": batch_size}).rowcount
        deleted += count
        if count < batch_size:
            return deleted
