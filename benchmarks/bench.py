"""`make bench`: the pipeline's throughput next to raw COPY, the empty minute, freshness and memory.

Everything runs in a throw-away root (its own PostgreSQL on a free port, its own Airflow home and
directories), like the integration tests' ``pipeline`` fixture. The phases:

1. **data**: ``BENCH_ROWS`` rows (default 1,000,000) in files of ``BENCH_FILE_ROWS`` (5,000) rows from
   ``scripts.generator`` with ~2 % invalid rows (``BENCH_INVALID_RATIO``) and the default version mix.
2. **copy**: the baseline. The same files are parsed in Python (not timed) and their storable rows (typed,
   one per event_id) are COPYed by psycopg into ``bench_copy_events``, a table shaped like
   ``ecommerce_events`` with its primary key; one transaction per file, one session. Timed: the COPYs.
   Untimed, the rows of that table that pass the contract's drop rules are counted (``rule_passing_rows``,
   the rules' own routing SQL): what the pipeline and the DuckDB peer must store.
3. **peers** (``BENCH_PEERS``, default ``seed_style,duckdb``; empty skips them): the same files, each peer
   into its own table like ``bench_copy_events``, timed as a whole process (``benchmarks/peers.py``): a
   naive PySpark job appending through JDBC (``seed_style``, JVM start included; needs Debian's
   ``libpostgresql-jdbc-java``, which ``make bench`` installs when run as root) and a DuckDB script doing
   the pipeline's work (``duckdb``). The stored rows are checked against ``copy_rows`` and
   ``rule_passing_rows``; rows/s is input rows / seconds, as for the pipeline.
4. **marginal** (``BENCH_MARGINAL_ROWS``, default 200,000; 0 skips it): the pipeline drains the first files
   of the same set (that many rows) as in phase 5, then the events database is dropped and re-created and
   the pipeline's directories emptied, so phase 5 starts from the state it always started from.
   ``marginal_rows_per_s`` = (BENCH_ROWS - those rows) / (phase 5's seconds - this drain's seconds): the
   throughput without the per-run fixed costs (CLI, JVM, warm-up), and ``marginal_ratio_to_copy`` its ratio.
5. **pipeline**: the files are hard-linked into LANDING_DIR and the DAG is run with ``airflow dags test``
   (what ``make once`` does) until nothing waits and nothing is unpublished; timed: every run, CLI start
   included. Task durations come from the metadata database; RSS of the spark-submit process tree (JVM,
   Python driver, Python workers) is sampled every ``BENCH_RSS_INTERVAL`` s.
6. **empty**: one more ``airflow dags test`` with nothing to do: its DAG-run duration and whether a JVM
   appeared.
7. **scheduler** (``BENCH_SCHEDULER_MINUTES`` > 0, default 3): a real scheduler, dag-processor and
   api-server; first empty minutes (their DAG-run durations, JVMs), then the generator at its default rate
   (100 rows / 5 s) and at 100x (10,000 rows / 5 s), each for that many minutes. Freshness of a file = end
   of the ``publish`` task of the DAG run that published it - the file's modification time (the generator
   renames a complete file into place, so that is its landing time). ``BENCH_RATES`` (``default,x100``)
   picks the rates. Each rate also reports the median seconds per task and of the waits between tasks.
   Files that land in the first minute of each rate (the feed starting after idle minutes) are reported
   apart (``first_minute_*``); p50/p95/max are the files of the steady feed after it.
8. **backfill** (``BENCH_BACKFILL_MINUTES``, default 180; 0 skips it): that many minutes of history at the
   generator's default rate (12 files of 100 rows a minute) are first drained by the every-minute path as in
   phase 5 (its rows/s is the reference), their claim times then spread over that many minutes ending two
   hours ago; ``airflow backfill create --reprocess-behavior completed --max-active-runs 1`` over them, run by
   a real scheduler and api-server under ``MAX_PRICE`` = ``BENCH_BACKFILL_MAX_PRICE`` (500, so rows move),
   is timed from its creation to its completion: ``backfill_seconds_per_minute``, ``backfill_rows_per_s``,
   ``backfill_ratio_to_every_minute``, how many runs started a task and how many chunks were re-derived.
9. **deployments** (``BENCH_DEPLOYMENT_ROWS``, default 200,000; 0 skips it): the first files of the set
   (that many rows) drained by ``python -m scripts.pipeline run --no-generator`` (`make run`, local mode)
   and then by ``... cluster --no-generator`` (`make cluster`: CeleryExecutor, a Spark standalone cluster),
   each started after the backlog landed and from the same reset state, the DAG on its schedule. Per
   deployment: ``<name>_drain_seconds`` from the start of the first DAG run to the end of the last one that
   published (``<name>_start_seconds`` before it: the processes starting and the first tick), ``<name>_rows_per_s``,
   stored and dead-lettered rows; ``cluster_ratio_to_local``.

The last line of output is one JSON object; it is also written to ``benchmarks/results/``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

import psutil
import psycopg

from benchmarks.peers import PEERS, jdbc_jar_problem, measure_peer, rule_passing_count
from include.names import DAG_ID
from include.settings import PROJECT_ROOT, Settings
from include.storage.landing import scan

RESULTS_DIR = PROJECT_ROOT / "benchmarks" / "results"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
EMPTY_RUNS = 3  # scheduled runs with nothing to do; the first one is a cold start


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def knob(name: str, default: str, *, allow_empty: bool = False) -> str:
    """An environment knob: ``default`` when unset, and when empty unless ``allow_empty`` (``BENCH_PEERS=``)."""
    value = os.environ.get(name)
    return value if value is not None and (value or allow_empty) else default


# ----------------------------------------------------------------------------------------- environment
@dataclass
class Bench:
    root: Path
    env: dict[str, str]
    cluster: object

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def connect(self, dbname: str | None = None) -> psycopg.Connection:
        info = self.settings.postgres_conninfo
        if dbname:
            info = psycopg.conninfo.make_conninfo(info, dbname=dbname)
        return psycopg.connect(info, autocommit=True)

    def scalar(self, sql: str, params: tuple = ()):
        with self.connect() as conn:
            return conn.execute(sql, params).fetchone()[0]


def start_environment() -> Bench:
    from scripts.airflow_env import airflow_environment
    from scripts.local_postgres import LocalPostgres

    root = Path(tempfile.mkdtemp(prefix="ecom-bench-"))
    root.chmod(0o755)  # the postgres system user must reach its data directory
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "POSTGRES_"))}
    env.update(
        POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(port), POSTGRES_DB="ecommerce", POSTGRES_USER="spark",
        POSTGRES_PASSWORD=secrets.token_hex(12), PGDATA_DIR=str(root / "postgres"),
        LANDING_DIR=str(root / "landing"), ARCHIVE_DIR=str(root / "archive"),
        CHECKPOINT_DIR=str(root / "checkpoints" / "ecommerce_events"), QUARANTINE_DIR=str(root / "quarantine"),
        GREAT_EXPECTATIONS_DIR=str(root / "great_expectations"),
        AIRFLOW_HOME=str(root / "airflow"), AIRFLOW_API_PORT=str(free_port()), PIPELINE_LOG_DIR=str(root / "logs"),
    )
    settings = Settings.from_env(env)
    cluster = LocalPostgres(root / "postgres", port, settings.postgres_user, settings.postgres_password)
    cluster.ensure()
    env.update(airflow_environment(settings, env))
    started = time.monotonic()
    init = subprocess.run([sys.executable, "-m", "scripts.pipeline", "init"], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=900)
    if init.returncode != 0:
        raise SystemExit(init.stdout + init.stderr)
    say(f"PostgreSQL on port {port}, Airflow metadata ready in {time.monotonic() - started:.0f} s; root {root}")
    return Bench(root, env, cluster)


# ------------------------------------------------------------------------------------------------ data
def generate(directory: Path, rows: int, file_rows: int, invalid_ratio: float, seed: int) -> list[Path]:
    from scripts.generator import EventGenerator

    directory.mkdir(parents=True, exist_ok=True)
    generator = EventGenerator(seed, invalid_ratio=invalid_ratio)
    mix = {"v1": 0.1, "v2": 0.3, "v3": 0.6}
    files = []
    for _ in range((rows + file_rows - 1) // file_rows):
        version = generator.pick_version(mix)
        batch = generator.generate_batch(min(file_rows, rows - len(files) * file_rows), version)
        files.append(generator.write_batch(batch, version, directory))
    return files


# ------------------------------------------------------------------------------------------- raw COPY
_TYPES = {"user_id": int, "product_id": int, "quantity": int, "price": Decimal}


def storable_csv(files: list[Path]) -> tuple[list[bytes], int]:
    """Per file, CSV text of its storable rows in ``EVENT_COLUMNS`` order (typed, first per event_id)."""
    from include.contract.columns import EVENT_COLUMNS
    from include.contract.parser import FileRejected, parse_file

    seen: set[str] = set()
    chunks, total = [], 0
    for delivery_id, path in enumerate(files, 1):  # each file one delivery, numbered as the peers number them
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        try:
            records = list(parse_file(path.read_bytes(), str(path), delivery_id))
        except FileRejected:
            continue
        for record in records:
            if record["parse_errors"] or not record["event_id"] or record["event_id"] in seen:
                continue
            try:
                for column, kind in _TYPES.items():
                    if record[column] is not None:
                        record[column] = kind(record[column])
                datetime.fromisoformat(str(record["event_time"]))
            except (ValueError, InvalidOperation, TypeError):
                continue
            if abs(record["price"] or 0) >= 10**10 or not record["event_type"]:
                continue
            seen.add(record["event_id"])
            price, quantity = record["price"], record["quantity"]
            record["total_amount"] = price * quantity if price is not None and quantity is not None else None
            record["is_late_arrival"] = False
            writer.writerow(["" if record[c] is None else record[c] for c in EVENT_COLUMNS])
            total += 1
        chunks.append(buffer.getvalue().encode())
    return chunks, total


def log_slow_statements(bench: Bench, milliseconds: int) -> None:
    """Profiling aid (BENCH_PG_LOG_MS): PostgreSQL logs every statement slower than this, with its time."""
    with bench.connect() as conn:
        conn.execute(f"ALTER SYSTEM SET log_min_duration_statement = {int(milliseconds)}")
        conn.execute("SELECT pg_reload_conf()")


def slow_statements(bench: Bench, top: int = 12) -> list[tuple[float, str]]:
    """The slowest statements of the pipeline phase from the server log: (seconds, first 160 characters)."""
    found = []
    text = bench.cluster.log_file.read_text(errors="replace")
    for match in re.finditer(r"duration: ([0-9.]+) ms\s+(?:statement|execute [^:]*): (.*?)(?=\n\S|\Z)", text, re.S):
        found.append((round(float(match[1]) / 1000, 2), " ".join(match[2].split())[:160]))
    return sorted(found, reverse=True)[:top]


def measure_copy(bench: Bench, files: list[Path]) -> dict:
    """The COPY baseline; also ``rule_passing_rows``, untimed: its stored rows that pass the rules that keep a
    row out of ecommerce_events (``peers.rule_passing_count``), the count the DuckDB peer must store."""
    from include.contract.columns import EVENT_COLUMNS

    chunks, rows = storable_csv(files)
    with bench.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy_events")
        conn.execute("CREATE TABLE bench_copy_events (LIKE ecommerce_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        conn.execute("ALTER TABLE bench_copy_events ADD PRIMARY KEY (event_id)")
        conn.execute("CHECKPOINT")
        statement = f"COPY bench_copy_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN WITH (FORMAT csv)"
        started = time.monotonic()
        for chunk in chunks:
            with conn.transaction(), conn.cursor().copy(statement) as copy:
                copy.write(chunk)
        seconds = time.monotonic() - started
        stored = conn.execute("SELECT count(*) FROM bench_copy_events").fetchone()[0]
        passing = rule_passing_count(conn, "bench_copy_events", bench.settings)
        conn.execute("DROP TABLE bench_copy_events")
        conn.execute("CHECKPOINT")
    assert stored == rows, (stored, rows)
    return {"copy_rows": rows, "copy_seconds": round(seconds, 2), "copy_rows_per_s": round(rows / seconds),
            "rule_passing_rows": passing}


# ------------------------------------------------------------------------------------- process sampling
def _kind(process: psutil.Process) -> str | None:
    try:
        cmdline = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "java" in process.name() or cmdline.startswith(("/usr/lib/jvm", "java ")):
        return "jvm"
    if "ingest_events.py" in cmdline:
        return "python_driver"
    if "pyspark" in cmdline and ("daemon" in cmdline or "worker" in cmdline):
        return "python_workers"
    return None


@dataclass
class TreeSampler:
    """Samples RSS of the JVM / Python driver / Python workers below some root processes, in a thread."""

    interval: float = 0.25
    roots: list[int] = field(default_factory=list)
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    jvm_seen_at: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            sums: dict[str, float] = {}
            for root in list(self.roots):
                with contextlib.suppress(psutil.NoSuchProcess):
                    for child in psutil.Process(root).children(recursive=True):
                        kind = _kind(child)
                        if kind is None:
                            continue
                        with contextlib.suppress(psutil.NoSuchProcess):
                            sums[kind] = sums.get(kind, 0.0) + child.memory_info().rss / 2**20
            now = time.time()
            if sums:
                self.samples.append((now, sums))
            if "jvm" in sums:
                self.jvm_seen_at.append(now)
            self._stop.wait(self.interval)

    def peaks(self, since: float = 0.0, until: float = float("inf")) -> dict[str, float]:
        window = [s for t, s in self.samples if since <= t <= until]
        kinds = ("jvm", "python_driver", "python_workers")
        peak = {f"peak_rss_{k}_mb": round(max((s.get(k, 0.0) for s in window), default=0.0)) for k in kinds}
        peak["peak_rss_mb"] = round(max((sum(s.values()) for s in window), default=0.0))
        return peak


# ---------------------------------------------------------------------------------------- DAG runs
def run_times(bench: Bench, run_id: str | None = None, since: datetime | None = None) -> list[dict]:
    """DAG runs (newest last) with their duration and each task's duration, from the metadata database."""
    with bench.connect("airflow") as conn:
        where, params = "dag_id = %s", [DAG_ID]
        if run_id:
            where += " AND run_id = %s"
            params.append(run_id)
        if since:
            where += " AND start_date >= %s"
            params.append(since)
        runs = conn.execute(
            f"SELECT run_id, run_type, state, start_date, end_date, run_after FROM dag_run WHERE {where} "
            "ORDER BY start_date",
            params,
        ).fetchall()
        result = []
        for rid, run_type, state, start, end, run_after in runs:
            tasks = conn.execute(
                "SELECT task_id, state, start_date, end_date FROM task_instance WHERE dag_id = %s AND run_id = %s",
                (DAG_ID, rid),
            ).fetchall()
            result.append({
                "run_id": rid, "run_type": run_type, "state": state, "start": start, "end": end,
                "seconds": (end - start).total_seconds() if start and end else None,
                "since_tick": (end - run_after).total_seconds() if run_after and end else None,
                "tasks": {t: {"state": s, "seconds": round((e - b).total_seconds(), 2) if b and e else None,
                              "start": b, "end": e} for t, s, b, e in tasks},
            })
    return result


def dags_test(bench: Bench, sampler: TreeSampler, log_name: str) -> tuple[float, int]:
    log = bench.root / "logs" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen([AIRFLOW, "dags", "test", DAG_ID], env=bench.env, cwd=PROJECT_ROOT,
                                   stdout=out, stderr=subprocess.STDOUT)
        sampler.roots.append(process.pid)
        code = process.wait(timeout=3600)
        sampler.roots.remove(process.pid)
    return time.monotonic() - started, code


def backlog_left(bench: Bench) -> tuple[int, int]:
    """Files not yet through: still in the landing directory or claimed and not yet staged; batches staged and
    not yet published."""
    landed = sum(1 for entry in scan(bench.settings.landing_dir) if entry.kind == "file" and not entry.name.startswith("."))
    claimed = bench.scalar("SELECT count(*) FROM deliveries WHERE status = 'claimed'")
    unpublished = bench.scalar("SELECT count(*) FROM pipeline_batch_ledger WHERE published_at IS NULL")
    return landed + claimed, unpublished


def measure_pipeline(bench: Bench, files: list[Path], input_rows: int, sampler: TreeSampler,
                     label: str = "pipeline") -> dict:
    landing = bench.settings.landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    for path in files:
        os.link(path, landing / path.name)
    since = datetime.now(UTC)
    started, walls = time.time(), []
    for attempt in range(int(knob("BENCH_MAX_RUNS", "20"))):
        wall, code = dags_test(bench, sampler, f"{label}-{attempt}")
        walls.append(round(wall, 2))
        waiting, unpublished = backlog_left(bench)
        say(f"{label} run {attempt + 1}: {wall:.1f} s, exit {code}; {waiting} files waiting, {unpublished} unpublished")
        if not waiting and not unpublished:
            break
    seconds = time.time() - started
    runs = run_times(bench, since=since)
    tasks: dict[str, float] = {}
    for run in runs:
        for task, info in run["tasks"].items():
            tasks[task] = round(tasks.get(task, 0.0) + (info["seconds"] or 0.0), 2)
    with bench.connect() as conn:
        stored, dlq, metrics, quarantined = conn.execute(
            "SELECT (SELECT count(*) FROM ecommerce_events), (SELECT count(*) FROM dead_letter_events), "
            "(SELECT coalesce(sum(total_records), 0) FROM data_quality_metrics), "
            "(SELECT count(*) FROM quarantined_files)"
        ).fetchone()
        batches = conn.execute("SELECT count(*) FROM pipeline_batch_ledger").fetchone()[0]
    return {
        "rows": input_rows, "files": len(files), "pipeline_seconds": round(seconds, 2),
        "pipeline_rows_per_s": round(input_rows / seconds), "dag_runs": len(walls), "dag_run_walls_s": walls,
        "dag_runs_ok": all(r["state"] == "success" for r in runs), "task_seconds": tasks,
        "stored_rows": stored, "dlq_rows": dlq, "metric_rows": int(metrics), "quarantined_files": quarantined,
        "spark_batches": batches, "window": (started, started + seconds),
    }


def reset_pipeline(bench: Bench) -> None:
    """Back to the state ``start_environment`` left: the events database dropped and re-created at the schema's
    head revision (empty tables, no statistics: as after ``scripts.pipeline init``), and LANDING_DIR, the archive,
    the checkpoint, the quarantine and the Great Expectations directory removed. Airflow's metadata is kept, and so
    is ALERT_FILE (the bench does not set its own: it is the checkout's)."""
    from psycopg import sql

    from scripts.database_roles import logins, provision_with_schema

    settings = bench.settings
    admin = psycopg.conninfo.make_conninfo(settings.postgres_conninfo, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(settings.postgres_db)))
    # as `scripts.pipeline init` leaves it: owned by the owner role, the writer's and reader's grants in place
    provision_with_schema(admin, settings.postgres_db, *logins(bench.env, settings))
    for directory in (settings.landing_dir, settings.archive_dir, settings.checkpoint_dir, settings.quarantine_dir,
                      settings.great_expectations_dir):
        shutil.rmtree(directory, ignore_errors=True)


def measure_marginal_backlog(bench: Bench, files: list[Path], rows: int, file_rows: int, marginal_rows: int,
                             sampler: TreeSampler) -> dict:
    """Phase 4: drain the first files of ``files`` (``marginal_rows`` rows, whole files) through the pipeline,
    exactly as ``measure_pipeline`` drains them all, then ``reset_pipeline``. Returns the small backlog's rows and
    seconds; ``marginal`` turns them into the marginal rate once the full drain is measured."""
    count = math.ceil(marginal_rows / file_rows)
    small_rows = min(count * file_rows, rows)
    if marginal_rows <= 0 or small_rows >= rows:
        return {}
    small = measure_pipeline(bench, files[:count], small_rows, sampler, label="marginal")
    reset_pipeline(bench)
    return {"marginal_backlog_rows": small_rows, "marginal_backlog_seconds": small["pipeline_seconds"],
            "marginal_backlog_ok": small["dag_runs_ok"] and small["metric_rows"] == small_rows}


def marginal(result: dict) -> dict:
    """(rows_big - rows_small) / (seconds_big - seconds_small) and its ratio to COPY's rows/s."""
    if "marginal_backlog_rows" not in result:
        return {"marginal_rows_per_s": None, "marginal_ratio_to_copy": None}
    extra_seconds = result["pipeline_seconds"] - result["marginal_backlog_seconds"]
    if extra_seconds <= 0:
        return {"marginal_rows_per_s": None, "marginal_ratio_to_copy": None}
    rate = (result["rows"] - result["marginal_backlog_rows"]) / extra_seconds
    return {"marginal_rows_per_s": round(rate), "marginal_ratio_to_copy": round(rate / result["copy_rows_per_s"], 3)}


def rss_flatness(sampler: TreeSampler, window: tuple[float, float]) -> dict:
    """Peak RSS in the first and the last third of the time the Spark job ran within the pipeline phase
    (batches are bounded, so: similar). Audit and publish run no Spark, so the phase's own end would
    measure nothing."""
    running = [t for t, sums in sampler.samples if window[0] <= t <= window[1] and sum(sums.values()) > 0]
    start, end = (running[0], running[-1]) if running else window
    third = (end - start) / 3
    first, last = sampler.peaks(start, start + third), sampler.peaks(end - third, end)
    return {"peak_rss_first_third_mb": first["peak_rss_mb"], "peak_rss_last_third_mb": last["peak_rss_mb"]}


def measure_empty(bench: Bench, sampler: TreeSampler) -> dict:
    jvms_before = len(sampler.jvm_seen_at)
    since = datetime.now(UTC)
    wall, code = dags_test(bench, sampler, "empty")
    run = run_times(bench, since=since)[-1]
    return {"empty_run_s": round(run["seconds"], 2), "empty_dags_test_run_s": round(run["seconds"], 2),
            "empty_run_cli_wall_s": round(wall, 2),
            "empty_run_tasks_s": {t: i["seconds"] for t, i in run["tasks"].items()},
            "empty_run_jvm": len(sampler.jvm_seen_at) > jvms_before, "empty_run_ok": code == 0}


# ----------------------------------------------------------------------------------------- scheduler
def _airflow(bench: Bench, *args: str) -> None:
    subprocess.run([AIRFLOW, *args], env=bench.env, cwd=PROJECT_ROOT, check=True, capture_output=True)


def _drained(bench: Bench, succeeded_since: datetime | None = None) -> bool:
    """Nothing waits, nothing is unpublished and no DAG run is queued or running (and, with
    ``succeeded_since``, a run that started since then succeeded)."""
    waiting, unpublished = backlog_left(bench)
    with bench.connect("airflow") as conn:
        active, succeeded = conn.execute(
            "SELECT count(*) FILTER (WHERE state IN ('queued', 'running')), "
            "count(*) FILTER (WHERE state = 'success' AND start_date >= %s) FROM dag_run WHERE dag_id = %s",
            (succeeded_since or datetime.min.replace(tzinfo=UTC), DAG_ID)).fetchone()
    return not waiting and not unpublished and not active and (succeeded_since is None or succeeded > 0)


def _wait_drained(bench: Bench, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _drained(bench):
            return
        time.sleep(2)
    say("backlog not drained in time; freshness counts only published files")


def _freshness(bench: Bench, since: datetime) -> list[tuple[float, float]]:
    """(landing time, seconds from landing to the end of the publish task that made the file's rows queryable)
    for each delivery published since ``since``. A generated file's landing time is its modification time (the
    generator renames each file into place as soon as it is written), which its delivery row keeps."""
    publish_end = {run["run_id"]: run["tasks"].get("publish", {}).get("end")
                   for run in run_times(bench, since=since)}
    with bench.connect() as conn:
        rows = conn.execute(
            "SELECT d.delivery_id, d.modified_at, min(l.published_by_run_id) FROM deliveries d "
            "JOIN pipeline_batch_ledger l USING (spark_query_id, spark_batch_id) "
            "WHERE l.published_at >= %s AND d.rows_staged > 0 GROUP BY 1, 2",
            (since,),
        ).fetchall()
    values = []
    for _, landed, run_id in rows:
        end = publish_end.get(run_id)
        if end is not None and landed is not None:
            values.append((landed.timestamp(), end.timestamp() - landed.timestamp()))
    return values


FRESHNESS_FIRST_MINUTE_S = 60


def _task_profile(runs: list[dict]) -> dict:
    """Median seconds per task, and of the waits between tasks (scheduler and task start-up), over the runs
    that ingested something: where a run's time goes (docs/performance.md, freshness)."""
    if not runs:
        return {}
    tasks = {t for run in runs for t in run["tasks"]}
    waits = []
    for run in runs:
        spans = sorted((i["start"], i["end"]) for i in run["tasks"].values() if i["start"] and i["end"])
        waits.append(sum(max((b - prev_end).total_seconds(), 0) for (_, prev_end), (b, _) in zip(spans, spans[1:]))
                     + ((spans[0][0] - run["start"]).total_seconds() if spans else 0))
    return {
        "task_s_p50": {t: round(statistics.median(r["tasks"][t]["seconds"] or 0 for r in runs if t in r["tasks"]), 2)
                       for t in sorted(tasks)},
        "waits_between_tasks_s_p50": round(statistics.median(waits), 2),
    }


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank: the smallest value with at least 95 % of the values at or below it
    return round(ordered[math.ceil(0.95 * len(ordered)) - 1], 1)


def measure_scheduler(bench: Bench, minutes: float) -> dict:
    import scripts.pipeline
    from scripts.pipeline import Supervisor

    scripts.pipeline.LOG_DIR = bench.root / "logs"
    _airflow(bench, "dags", "reserialize")
    supervisor = Supervisor(bench.env)
    sampler = TreeSampler(interval=0.2).start()
    result: dict = {}
    try:
        supervisor.start("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1",
                                        "--port", bench.env["AIRFLOW__API__PORT"]])
        for component in ("scheduler", "dag-processor"):
            supervisor.start(component, [AIRFLOW, component])
        sampler.roots += [p.pid for p in supervisor.processes.values()]
        time.sleep(20)
        since = datetime.now(UTC)
        _airflow(bench, "dags", "unpause", DAG_ID)
        # empty minutes: the runs the scheduler makes while nothing lands
        deadline = time.monotonic() + 60 * (EMPTY_RUNS + 2)
        empty: list[dict] = []
        while time.monotonic() < deadline and len(empty) < EMPTY_RUNS:
            time.sleep(5)
            empty = [r for r in run_times(bench, since=since) if r["state"] == "success"]
        # the first run after unpausing pays the scheduler's and the task process's cold start
        result["scheduled_empty_runs_s"] = [round(r["seconds"], 2) for r in empty]
        result["scheduled_empty_since_tick_s"] = [round(r["since_tick"], 2) for r in empty]
        result["scheduled_empty_tasks_s"] = [{t: i["seconds"] for t, i in r["tasks"].items()} for r in empty]
        result["scheduled_empty_jvm"] = bool(sampler.jvm_seen_at)
        steady = result["scheduled_empty_runs_s"][1:] or result["scheduled_empty_runs_s"]
        result["empty_run_s"] = max(steady) if steady else None
        say(f"scheduled empty runs: {result['scheduled_empty_runs_s']} s (from the cron tick: "
            f"{result['scheduled_empty_since_tick_s']} s), JVM started: {result['scheduled_empty_jvm']}")
        rates = {"default": 100, "x100": 10_000}
        for label in knob("BENCH_RATES", "default,x100").split(","):
            batch_size = rates[label]
            phase_since = datetime.now(UTC)
            supervisor.start(f"generator-{label}", [
                sys.executable, "-m", "scripts.generator", "--output-dir", str(bench.settings.landing_dir),
                "--rate-seconds", "5", "--batch-size", str(batch_size), "--invalid-ratio", "0.02",
            ])
            # The first minute is the feed starting after idle minutes: its files wait for the next run's
            # listing, which comes L s after the tick (spark-submit, JVM) instead of 60 s after the last
            # listing. Reported on its own; p50/p95/max are the steady feed that follows.
            time.sleep(FRESHNESS_FIRST_MINUTE_S)
            steady_since = time.time()
            time.sleep(minutes * 60)
            generator = supervisor.processes.pop(f"generator-{label}")
            generator.terminate()
            generator.wait()
            _wait_drained(bench, float(knob("BENCH_DRAIN_SECONDS", "420")))
            landed_values = _freshness(bench, phase_since)
            values = [v for landed, v in landed_values if landed >= steady_since]
            first = [v for landed, v in landed_values if landed < steady_since]
            runs = [r for r in run_times(bench, since=phase_since) if r["seconds"] is not None]
            result[f"freshness_{label}"] = {
                "files": len(values), "p50_s": round(statistics.median(values), 1) if values else None,
                "p95_s": p95(values), "max_s": round(max(values), 1) if values else None,
                "first_minute_files": len(first), "first_minute_p95_s": p95(first),
                "first_minute_max_s": round(max(first), 1) if first else None,
                "dag_runs": len(runs), "dag_run_s_max": round(max((r["seconds"] for r in runs), default=0), 1),
                **_task_profile([r for r in runs if "ingest" in r["tasks"] and r["tasks"]["ingest"]["seconds"]]),
            }
            say(f"freshness at {label} rate: {result[f'freshness_{label}']}")
    finally:
        sampler.stop()
        supervisor.stop()
    result["freshness_p95_s"] = max((result[k]["p95_s"] or 0) for k in ("freshness_default", "freshness_x100")
                                    if k in result) if "freshness_default" in result else None
    return result


# ------------------------------------------------------------------------------------------ backfill
# Phase 8: BENCH_BACKFILL_MINUTES of history at the generator's default rate (100 rows every 5 s), first drained
# by the every-minute path (the reference rows/s), then their claim times spread over that many minutes two hours
# back, and a backfill of all of it created with `airflow backfill create` and run by the real scheduler under a
# lower MAX_PRICE (so rows move), timed from its creation to its completion.

def measure_backfill(bench: Bench, minutes: int, sampler: TreeSampler) -> dict:
    import scripts.pipeline
    from scripts.airflow_env import admin_password
    from scripts.generator import EventGenerator
    from scripts.pipeline import Supervisor

    reset_pipeline(bench)
    with bench.connect("airflow") as conn:
        conn.execute("UPDATE dag_run SET state = 'failed' WHERE dag_id = %s AND state IN ('running', 'queued')",
                     (DAG_ID,))
    source = bench.root / "backfill-source"
    generator = EventGenerator(int(knob("BENCH_SEED", "8")), invalid_ratio=0.02)
    files = [generator.write_batch(generator.generate_batch(100, "v3"), "v3", source) for _ in range(minutes * 12)]
    rows = 100 * len(files)
    every_minute = measure_pipeline(bench, files, rows, sampler, label="backfill-history")
    every_minute.pop("window")
    first = (datetime.now(UTC) - timedelta(minutes=minutes + 120)).replace(second=0, microsecond=0)
    with bench.connect() as conn:  # 12 deliveries a minute, in the order they were claimed
        conn.execute("UPDATE deliveries d SET claimed_at = %s + (o.n / 12) * interval '1 minute' "
                     "+ (o.n %% 12) * interval '5 seconds' FROM (SELECT delivery_id, row_number() OVER "
                     "(ORDER BY delivery_id) - 1 AS n FROM deliveries) o WHERE o.delivery_id = d.delivery_id",
                     (first,))
    scripts.pipeline.LOG_DIR = bench.root / "logs"
    admin_password(Path(bench.env["AIRFLOW_HOME"]), bench.env)
    _airflow(bench, "dags", "reserialize")
    _airflow(bench, "variables", "set", "ecommerce_max_price", knob("BENCH_BACKFILL_MAX_PRICE", "500"))
    supervisor = Supervisor(bench.env)
    result: dict = {"backfill_minutes": minutes, "backfill_rows": rows,
                    "backfill_every_minute_rows_per_s": every_minute["pipeline_rows_per_s"]}
    try:
        supervisor.start("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1",
                                        "--port", bench.env["AIRFLOW__API__PORT"]])
        supervisor.start("scheduler", [AIRFLOW, "scheduler"])
        time.sleep(20)
        _airflow(bench, "dags", "unpause", DAG_ID)
        started = time.monotonic()
        _airflow(bench, "backfill", "create", "--dag-id", DAG_ID, "--from-date",
                 (first + timedelta(minutes=1)).isoformat(), "--to-date", (first + timedelta(minutes=minutes)).isoformat(),
                 "--reprocess-behavior", "completed", "--max-active-runs", "1")
        with bench.connect("airflow") as conn:
            backfill = conn.execute("SELECT max(id) FROM backfill WHERE dag_id = %s", (DAG_ID,)).fetchone()[0]
            deadline = time.monotonic() + float(knob("BENCH_BACKFILL_TIMEOUT", "3600"))
            while conn.execute("SELECT completed_at FROM backfill WHERE id = %s", (backfill,)).fetchone()[0] is None:
                if time.monotonic() > deadline:
                    say("backfill not completed in time")
                    break
                time.sleep(2)
            seconds = time.monotonic() - started
            runs, ran, states = conn.execute(
                "SELECT count(DISTINCT r.id), count(DISTINCT r.id) FILTER (WHERE coalesce(t.hostname, '') <> ''), "
                "array_agg(DISTINCT r.state) FROM dag_run r JOIN backfill_dag_run b ON b.dag_run_id = r.id "
                "LEFT JOIN task_instance t ON t.dag_id = r.dag_id AND t.run_id = r.run_id WHERE b.backfill_id = %s",
                (backfill,)).fetchone()
    finally:
        supervisor.stop()
        _airflow(bench, "dags", "pause", DAG_ID)
        _airflow(bench, "variables", "delete", "ecommerce_max_price")
    with bench.connect() as conn:
        chunks, moved = conn.execute(
            "SELECT (SELECT count(*) FROM pipeline_backfill_ledger WHERE published_at IS NOT NULL), "
            "(SELECT count(*) FROM dead_letter_moves)").fetchone()
    result.update({
        "backfill_seconds": round(seconds, 1), "backfill_seconds_per_minute": round(seconds / minutes, 3),
        "backfill_rows_per_s": round(rows / seconds), "backfill_runs": runs, "backfill_runs_started": ran,
        "backfill_run_states": states, "backfill_chunks": chunks, "backfill_moves": moved,
        "backfill_ratio_to_every_minute": round(rows / seconds / every_minute["pipeline_rows_per_s"], 3),
    })
    return result


# --------------------------------------------------------------------------------------- deployments
# Phase 9: the same backlog drained by `make run` and by `make cluster`, each the real command against the
# bench's PostgreSQL and Airflow home, started after the backlog landed, the DAG on its schedule.
DEPLOYMENTS = ("local", "cluster")
COMMANDS = {"local": "run", "cluster": "cluster"}


def measure_deployment(bench: Bench, name: str, files: list[Path], rows: int, timeout: float) -> dict:
    reset_pipeline(bench)
    with bench.connect("airflow") as conn:
        conn.execute("UPDATE dag_run SET state = 'failed' WHERE dag_id = %s AND state IN ('running', 'queued')",
                     (DAG_ID,))
    landing = bench.settings.landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    for path in files:
        os.link(path, landing / path.name)
    env = dict(bench.env)
    if name == "cluster":
        env.update(CLUSTER_DIR=str(bench.root / "cluster"), REDIS_PORT=str(free_port()),
                   SPARK_MASTER_PORT=str(free_port()), SPARK_MASTER_UI_PORT=str(free_port()))
    log = bench.root / "logs" / f"deployment-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    since = datetime.now(UTC)
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "scripts.pipeline", COMMANDS[name], "--no-generator"],
                                   env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = started + timeout
        while not _drained(bench, succeeded_since=since):
            if process.poll() is not None:
                raise SystemExit(f"`scripts.pipeline {COMMANDS[name]}` exited ({process.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: backlog not drained within {timeout:.0f} s; see {log}")
            time.sleep(2)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl+C, as a user stops it
        process.wait(timeout=300)
    with bench.connect() as conn:
        stored, dead = conn.execute(
            "SELECT (SELECT count(*) FROM ecommerce_events), (SELECT count(*) FROM dead_letter_events)").fetchone()
        publishers = {run_id for (run_id,) in conn.execute(
            "SELECT DISTINCT published_by_run_id FROM pipeline_batch_ledger").fetchall()}
    # from the first run's start to the end of the last run that published (not a later run that found nothing)
    runs = [run for run in run_times(bench, since=since) if run["end"] is not None]
    first, last = runs[0], max((run for run in runs if run["run_id"] in publishers), key=lambda run: run["end"])
    runs = [run for run in runs if run["start"] <= last["start"]]
    seconds = (last["end"] - first["start"]).total_seconds()
    return {
        f"{name}_drain_seconds": round(seconds, 2), f"{name}_rows_per_s": round(rows / seconds),
        f"{name}_start_seconds": round((first["start"] - since).total_seconds(), 1),
        f"{name}_dag_runs": len(runs), f"{name}_runs_ok": all(run["state"] == "success" for run in runs),
        f"{name}_stored_rows": stored, f"{name}_dlq_rows": dead,
        f"{name}_task_seconds": {task: round(sum((run["tasks"].get(task) or {}).get("seconds") or 0 for run in runs), 2)
                                 for task in ("detect_work", "ingest", "audit", "publish")},
    }


def measure_deployments(bench: Bench, files: list[Path], rows: int, timeout: float) -> dict:
    result: dict = {"deployment_rows": rows, "deployment_files": len(files)}
    for name in DEPLOYMENTS:
        result.update(measure_deployment(bench, name, files, rows, timeout))
    result["cluster_ratio_to_local"] = round(result["cluster_rows_per_s"] / result["local_rows_per_s"], 3)
    return result


# ----------------------------------------------------------------------------------------------- main
def machine() -> dict:
    load = os.getloadavg()
    others = sorted({" ".join(p.info["cmdline"][:3])[:80] for p in psutil.process_iter(["cmdline", "cpu_percent"])
                     if p.info["cmdline"] and "java" in p.info["cmdline"][0]})
    return {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load_avg_1_5_15": [round(x, 2) for x in load], "other_jvms_at_start": len(others)}


def main() -> int:
    rows = int(knob("BENCH_ROWS", "1000000"))
    file_rows = int(knob("BENCH_FILE_ROWS", "5000"))
    invalid = float(knob("BENCH_INVALID_RATIO", "0.02"))
    scheduler_minutes = float(knob("BENCH_SCHEDULER_MINUTES", "3"))
    marginal_rows = int(knob("BENCH_MARGINAL_ROWS", "200000"))
    deployment_rows = int(knob("BENCH_DEPLOYMENT_ROWS", "200000"))
    peers = [name.strip() for name in knob("BENCH_PEERS", ",".join(PEERS), allow_empty=True).split(",") if name.strip()]
    if unknown := sorted(set(peers) - set(PEERS)):
        raise SystemExit(f"BENCH_PEERS: unknown peer(s) {', '.join(unknown)} (peers: {', '.join(PEERS)})")
    if "seed_style" in peers and (problem := jdbc_jar_problem()):
        raise SystemExit(problem)
    result: dict = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    bench = start_environment()
    if os.environ.get("MAX_FILES_PER_TRIGGER"):
        bench.env["MAX_FILES_PER_TRIGGER"] = os.environ["MAX_FILES_PER_TRIGGER"]
    result["max_files_per_trigger"] = bench.settings.max_files_per_trigger
    sampler = TreeSampler(interval=float(knob("BENCH_RSS_INTERVAL", "0.25"))).start()
    try:
        started = time.monotonic()
        files = generate(bench.root / "source", rows, file_rows, invalid, int(knob("BENCH_SEED", "8")))
        say(f"generated {rows} rows in {len(files)} files in {time.monotonic() - started:.0f} s")
        result.update(measure_copy(bench, files))
        say(f"raw COPY: {result['copy_rows']} rows in {result['copy_seconds']} s = {result['copy_rows_per_s']} rows/s "
            f"({result['rule_passing_rows']} of them pass the rules)")
        for name in peers:
            result.update(measure_peer(bench, name, files, rows, result))
            say(f"peer {name}: {rows} rows in {result[f'{name}_seconds']} s = {result[f'{name}_rows_per_s']} rows/s "
                f"({result[f'{name}_ratio_to_copy']} x COPY); stored {result[f'{name}_rows']}")
        result.update(measure_marginal_backlog(bench, files, rows, file_rows, marginal_rows, sampler))
        if "marginal_backlog_rows" in result:
            say(f"marginal: first backlog of {result['marginal_backlog_rows']} rows drained in "
                f"{result['marginal_backlog_seconds']} s; pipeline state reset")
        if os.environ.get("BENCH_PG_LOG_MS"):
            log_slow_statements(bench, int(os.environ["BENCH_PG_LOG_MS"]))
        pipeline = measure_pipeline(bench, files, rows, sampler)
        if os.environ.get("BENCH_PG_LOG_MS"):
            result["pg_slow_statements"] = slow_statements(bench)
        window = pipeline.pop("window")
        result.update(pipeline)
        result.update(sampler.peaks(*window))
        result.update(rss_flatness(sampler, window))
        result["ratio_to_copy"] = round(result["pipeline_rows_per_s"] / result["copy_rows_per_s"], 3)
        say(f"pipeline: {rows} rows in {result['pipeline_seconds']} s = {result['pipeline_rows_per_s']} rows/s "
            f"({result['ratio_to_copy']} x COPY); tasks {result['task_seconds']}")
        result.update(marginal(result))
        if result["marginal_rows_per_s"] is not None:
            say(f"marginal: {result['marginal_rows_per_s']} rows/s between {result['marginal_backlog_rows']} and "
                f"{rows} rows ({result['marginal_ratio_to_copy']} x COPY)")
        result.update(measure_empty(bench, sampler))
        say(f"empty run: {result['empty_run_s']} s (CLI {result['empty_run_cli_wall_s']} s), "
            f"JVM started: {result['empty_run_jvm']}")
        if scheduler_minutes > 0:
            result.update(measure_scheduler(bench, scheduler_minutes))
        else:
            result["freshness_p95_s"] = None
        backfill_minutes = int(knob("BENCH_BACKFILL_MINUTES", "180"))
        if backfill_minutes > 0:
            result.update(measure_backfill(bench, backfill_minutes, sampler))
            say(f"backfill: {backfill_minutes} minutes of history ({result['backfill_rows']} rows) in "
                f"{result['backfill_seconds']} s = {result['backfill_seconds_per_minute']} s per minute, "
                f"{result['backfill_rows_per_s']} rows/s ({result['backfill_ratio_to_every_minute']} x the every-minute "
                f"path's {result['backfill_every_minute_rows_per_s']}); {result['backfill_runs_started']} of "
                f"{result['backfill_runs']} runs started a task, {result['backfill_chunks']} chunk(s)")
        if deployment_rows > 0:
            count = math.ceil(deployment_rows / file_rows)
            result.update(measure_deployments(bench, files[:count], min(count * file_rows, rows),
                                              float(knob("BENCH_DEPLOYMENT_TIMEOUT", "1800"))))
            say("deployments: " + ", ".join(f"{name} {result[f'{name}_rows_per_s']} rows/s (drain "
                                            f"{result[f'{name}_drain_seconds']} s, start {result[f'{name}_start_seconds']} s)"
                                            for name in DEPLOYMENTS)
                + f"; cluster / local = {result['cluster_ratio_to_local']}")
    finally:
        sampler.stop()
        bench.cluster.stop(mode="immediate")
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(bench.root, ignore_errors=True)
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    line = json.dumps(result, default=str, separators=(",", ":"))
    (RESULTS_DIR / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(line + "\n")
    (RESULTS_DIR / "latest.json").write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
