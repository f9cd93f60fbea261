"""The backfill path of ``ecommerce_events`` as its tasks run it: which request a run belongs to, which chunk it
covers or waits for, and, once its chunk is re-derived, the notes and states of the runs the chunk covered.

Airflow's backfill makes one run per minute of history. The first run of a backfill (or the first whose
minute no chunk holds yet) claims a chunk: from its own minute up to BACKFILL_CHUNK_MINUTES of history, never
past the backfill's end (include/publish/coverage.py), and re-derives it in one Spark job and one transaction.
Then, through Airflow's REST API (connection ``airflow_api``, include/airflow/api.py), it writes its own note
(what it re-derived, the backfill's progress) and closes every queued run of the backfill whose minute its chunk
holds: state success, its tasks skipped, a note naming the covering run. No task of those runs is ever started,
let alone a JVM; the next run the scheduler starts is the first minute past the chunk, which claims the next.

A run that finds its minute in a published chunk (a retry, a run already started when the chunk was
published, or no REST API) ends in its ``detect_work`` and says which run covered it; one whose minute is in a
chunk another run is still re-deriving waits for it (or takes it over when that run ended without publishing).

Without the ``airflow_api`` connection a backfill still works: each run covers its own minute, as before.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from include.airflow.api import AirflowApi
from include.publish import coverage
from include.publish.coverage import Chunk, Request
from include.settings import Settings
from include.storage.connections import with_connection
from include.storage.deliveries import claimed_in, window

log = logging.getLogger(__name__)
WAIT_POLL_SECONDS = 10
WAIT_LIMIT = timedelta(hours=2)  # how long a run waits for another that covers its minute before it takes over


class ReprocessParamsInvalid(ValueError):
    """The Trigger form's window is not a window that can be re-derived."""


@dataclass(frozen=True)
class Run:
    """What the backfill path needs to know of the task's DAG run."""

    dag_id: str
    run_id: str
    run_type: str
    logical_date: datetime | None
    interval_start: datetime | None
    interval_end: datetime | None
    params: dict
    run_after: datetime | None = None

    @classmethod
    def of(cls, dag_run, params: dict | None) -> Run:
        kind = dag_run.run_type
        return cls(dag_run.dag_id, dag_run.run_id, str(getattr(kind, "value", kind)), dag_run.logical_date,
                   dag_run.data_interval_start, dag_run.data_interval_end, dict(params or {}),
                   getattr(dag_run, "run_after", None))

    @property
    def reprocess(self) -> tuple[datetime, datetime] | None:
        """The window named on the Trigger form, if any (``window_start`` / ``window_end`` params)."""
        start, end = self.params.get("window_start"), self.params.get("window_end")
        if not start and not end:
            return None
        if not (start and end):
            raise ReprocessParamsInvalid("give both window_start and window_end to reprocess a window")
        first, last = _utc(start), _utc(end)
        if first >= last:
            raise ReprocessParamsInvalid(f"window_start {first} is not before window_end {last}")
        return first, last

    @property
    def minute(self) -> tuple[datetime, datetime]:
        """This run's own window of claim times: its data interval."""
        return window(self.interval_start or self.logical_date, self.interval_end or self.logical_date)


def _utc(value: datetime | str) -> datetime:
    """A Trigger-form moment: its date-time fields send local-looking times without a zone, which are UTC (the
    form says so); a zone given is honoured."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def takes_backfill_path(run: Run) -> bool:
    return run.run_type == "backfill" or run.reprocess is not None


def request_of(run: Run, api: AirflowApi | None) -> Request:
    """The request a backfill-path run belongs to: its Trigger-form window, the Airflow backfill of its minute
    (with the REST API), or else just its own minute."""
    if (window_asked := run.reprocess) is not None:
        return Request(f"reprocess {run.run_id}", *window_asked, str(run.params.get("reason") or "")
                       or f"reprocess requested by {run.run_id}")
    if api is not None and (run.run_after or run.logical_date) is not None:
        backfill = api.backfill_of(run.dag_id, run.run_after or run.logical_date)
        if backfill is not None:
            ends = api.runs(run.dag_id, run_type="backfill", run_after_from=backfill.from_date,
                            run_after_to=backfill.to_date)
            if ends:
                start = min(datetime.fromisoformat(r["data_interval_start"]) for r in ends)
                end = max(datetime.fromisoformat(r["data_interval_end"]) for r in ends)
                return Request(f"backfill {backfill.id}", start, end, f"backfill {backfill.id}")
    start, end = run.minute
    return Request(f"run {run.run_id}", start, end, f"backfill run {run.run_id}")


def detect(settings: Settings, run: Run) -> bool:
    """``detect_work`` of a backfill-path run: True when this run re-derives a chunk (its Spark job follows)."""
    api = AirflowApi.from_connection()
    request = request_of(run, api)
    start, end = (request.start, request.end) if run.reprocess else run.minute
    chunk_minutes = None if run.reprocess else settings.backfill_chunk_minutes
    print(f"{request.describe()}: this run's window [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC")
    waited_since = time.monotonic()
    while True:
        chunk, mine = with_connection(settings, lambda conn: coverage.claim(conn, request, start, end, run.run_id,
                                                                           chunk_minutes))
        if mine:
            return _start_chunk(settings, api, run, chunk)
        if chunk.published:
            print(f"covered: run {chunk.airflow_run_id} re-derived [{chunk.start:%Y-%m-%d %H:%M}, "
                  f"{chunk.end:%Y-%m-%d %H:%M}) UTC, which holds this run's window; nothing left to do")
            _note(api, run.dag_id, {run.run_id: covered_note(chunk)})
            return False
        if _ended(api, run.dag_id, chunk.airflow_run_id) or time.monotonic() - waited_since > WAIT_LIMIT.total_seconds():
            print(f"run {chunk.airflow_run_id} claimed this window and ended without re-deriving it: this run takes over")
            chunk = with_connection(settings, lambda conn, c=chunk: coverage.take_over(conn, c, run.run_id))
            return _start_chunk(settings, api, run, chunk)
        print(f"run {chunk.airflow_run_id} is re-deriving this window; waiting for it")
        time.sleep(WAIT_POLL_SECONDS)


def _start_chunk(settings: Settings, api: AirflowApi | None, run: Run, chunk: Chunk) -> bool:
    found = with_connection(settings, lambda conn: claimed_in(conn, chunk.start, chunk.end))
    print(f"this run re-derives [{chunk.start:%Y-%m-%d %H:%M}, {chunk.end:%Y-%m-%d %H:%M}) UTC of "
          f"{chunk.request_key}: {len(found)} archived delivery(ies), {sum(d.size_bytes for d in found)} bytes")
    if found:
        return True
    print(f"nothing to re-read: no file landed then, or it is older than ARCHIVE_RETENTION_DAYS="
          f"{settings.archive_retention_days}; rows stored for that window stay as they are")
    with_connection(settings, lambda conn: _publish_empty(conn, chunk))
    close_covered(settings, api, run, chunk, {"input_files": 0, "rows": 0})
    return False


def _publish_empty(conn, chunk: Chunk) -> None:
    with conn.transaction():
        conn.execute("UPDATE pipeline_backfill_ledger SET staged_at = now(), published_at = now(), summary = '{}' "
                     "WHERE backfill_batch_id = %s::uuid", (chunk.backfill_batch_id,))


def _ended(api: AirflowApi | None, dag_id: str, run_id: str) -> bool:
    """Whether ``run_id`` has finished (without the REST API: unknown, so not)."""
    return api is not None and api.run_state(dag_id, run_id) in ("success", "failed")


def published_chunk(settings: Settings, run_id: str) -> Chunk | None:
    """The chunk this run re-derived and published last."""
    return with_connection(settings, lambda conn: coverage.published_by(conn, run_id))


def covered_note(chunk: Chunk) -> str:
    return (f"Covered by run {chunk.airflow_run_id}, which re-derived [{chunk.start:%Y-%m-%d %H:%M}, "
            f"{chunk.end:%Y-%m-%d %H:%M}) UTC of {chunk.request_key} in one Spark job.")


def progress_note(chunk: Chunk, counts: dict, done: dict) -> str:
    return (f"Re-derived [{chunk.start:%Y-%m-%d %H:%M}, {chunk.end:%Y-%m-%d %H:%M}) UTC of {chunk.request_key}"
            f"{f' ({chunk.reason})' if chunk.reason and chunk.reason != chunk.request_key else ''}: "
            f"{counts.get('input_files', 0)} file(s), {counts.get('rows', 0)} row(s); "
            f"{counts.get('moved_to_events', 0)} moved into ecommerce_events, {counts.get('moved_to_dead_letter', 0)} "
            f"into dead_letter_events. Progress: {done['covered_minutes']} of {done['requested_minutes']} minute(s) "
            f"in {done['chunks']} chunk(s), {done['rows']} row(s), {done['moved_to_events']} + "
            f"{done['moved_to_dead_letter']} moves so far.")


def close_covered(settings: Settings, api: AirflowApi | None, run: Run, chunk: Chunk, counts: dict) -> None:
    """After a chunk is published: this run's note says what it did and how far the request has got, and every
    queued run of the backfill whose minute the chunk holds is closed (success, a note naming this run)."""
    done = with_connection(settings, lambda conn: coverage.progress(conn, chunk.request_key))
    note = progress_note(chunk, counts, done)
    print(note)
    if api is None:
        return
    updates = {run.run_id: {"note": note}}
    if run.run_type == "backfill":
        queued = api.runs(run.dag_id, run_type="backfill", run_after_from=chunk.start, run_after_to=chunk.end,
                          states=("queued",))
        covered = [r for r in queued if r["dag_run_id"] != run.run_id
                   and datetime.fromisoformat(r["data_interval_start"]) >= chunk.start
                   and datetime.fromisoformat(r["data_interval_end"]) <= chunk.end]
        updates |= {r["dag_run_id"]: {"state": "success", "note": covered_note(chunk)} for r in covered}
        print(f"closing {len(covered)} queued run(s) of {chunk.request_key} that this chunk covers")
    _note(api, run.dag_id, updates)


def _note(api: AirflowApi | None, dag_id: str, updates: dict[str, dict | str]) -> None:
    """Write notes (and states) of runs; a failure is logged, never fails the task (the rows are published)."""
    if api is None:
        return
    entities = [{"dag_run_id": run_id, **(update if isinstance(update, dict) else {"note": update})}
                for run_id, update in updates.items()]
    try:
        api.update_runs(dag_id, entities)
    except Exception as error:  # noqa: BLE001 - notes and closing are a convenience; covered runs end by themselves
        log.warning("could not update the notes or states of %d run(s) through the REST API: %s", len(entities), error)
