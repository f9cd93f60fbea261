"""Producers we do not control, through the real DAG (`airflow dags test`, a real spark-submit, PostgreSQL):
a name delivered again (also while a run is in progress), an old and a future modification time, a file
written slowly in place across runs, a file announced by its marker, a temporary name, a decompression bomb, an
oversized file and a symbolic link. Every source row is stored exactly once; what cannot be read is quarantined
with its reason and a WARNING; what waits too long is named by a WARNING, and its recovery follows."""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from pathlib import Path

import psutil
import psycopg
import pytest

from include.storage.deliveries import split_stored_name
from scripts.generator import EventGenerator, write_events_csv

pytestmark = pytest.mark.integration

# the settings of this module's runs: a settle time to test, small bounds to cross cheaply
RUN_ENV = {"LANDING_SETTLE_SECONDS": "3", "MAX_FILE_BYTES": "4m", "MAX_DECOMPRESSED_BYTES": "8m"}
BOMB_BYTES = 2**30  # what the bomb (1 MB on disk) expands to: far past what a worker could spare
SETTLED = 3.5  # seconds: files written before this wait are complete by LANDING_SETTLE_SECONDS


class Feed:
    """Writes event files as a producer would, and remembers every event id it delivered."""

    def __init__(self, landing: Path, seed: int) -> None:
        self.landing, self.generator, self.event_ids = landing, EventGenerator(seed, invalid_ratio=0.0,
                                                                               duplicate_ratio=0.0), set()

    def rows(self, count: int) -> list:
        rows = self.generator.generate_batch(count, "v3")
        self.event_ids |= {row["event_id"] for row in rows}
        return rows

    def write(self, name: str, count: int, *, mtime: float | None = None, delivered: bool = True) -> Path:
        """Write in place (no rename), as a producer that writes straight into LANDING_DIR (``delivered``: its
        rows count as delivered, a temporary file's do not)."""
        path = self.landing / name
        rows = self.rows(count) if delivered else self.generator.generate_batch(count, "v3")
        write_events_csv(path, rows, "v3")
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def write_slowly(self, name: str, lines: int, every: float) -> threading.Thread:
        """Append one event every ``every`` seconds to a file opened in place: never complete until the end."""
        rows = self.rows(lines)
        scratch = self.landing.parent / f"{name}.whole"
        write_events_csv(scratch, rows, "v3")
        header, *body = scratch.read_text().splitlines(keepends=True)
        scratch.unlink()

        def write() -> None:
            with open(self.landing / name, "w") as out:
                out.write(header)
                for line in body:
                    out.write(line)
                    out.flush()
                    time.sleep(every)

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        return thread


def bomb(path: Path) -> None:
    """A .csv.gz of a header and zeros that expands to BOMB_BYTES."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"0" * (1 << 24)
    with open(path, "wb") as out:
        out.write(compressor.compress(b"event_id,user_id,event_type,product_id,price,event_time\n"))
        for _ in range(BOMB_BYTES // len(block)):
            out.write(compressor.compress(block))
        out.write(compressor.flush())


class PeakMemory:
    """The largest resident set any process under ``root`` reached while it ran, and any of the Spark job's
    Python processes (sampled every 0.2 s)."""

    def __init__(self, root: int) -> None:
        self.root, self.peak, self.python_peak, self._stop = psutil.Process(root), 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                children = self.root.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                try:
                    rss, command = child.memory_info().rss, " ".join(child.cmdline())
                except psutil.Error:
                    continue
                self.peak = max(self.peak, rss)
                if "pyspark" in command or "spark_jobs" in command:  # the Spark job's Python processes
                    self.python_peak = max(self.python_peak, rss)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def alerts(pipeline) -> list[dict]:
    path = pipeline.settings.alert_file
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_delivery_is_read_whole_and_exactly_once_however_its_producer_delivers_it(pipeline, tmp_path):
    pipeline.reset()
    landing = pipeline.landing_dir
    feed = Feed(landing, seed=35)
    day = 86400
    feed.write("orders.csv", 100)
    feed.write("old_export.csv", 100, mtime=time.time() - 30 * day)   # cp -p of last month's export
    feed.write("future.csv", 100, mtime=time.time() + day)            # a producer's clock a day ahead
    feed.write("upload.csv.part", 50, delivered=False)                # a transfer tool's temporary name
    write_events_csv(tmp_path / "target.csv", feed.generator.generate_batch(5, "v3"), "v3")
    (landing / "link.csv").symlink_to(tmp_path / "target.csv")       # never followed
    bomb(landing / "bomb.csv.gz")
    (landing / "big.csv").write_text("event_id,user_id,event_type,product_id,price,event_time\n"
                                     + "x,1,view,1,1.00,2026-01-01T00:00:00Z\n" * 160_000)  # 6 MB > MAX_FILE_BYTES
    slow = feed.write_slowly("slow.csv", lines=12, every=2.0)         # written in place for ~24 s
    time.sleep(SETTLED)
    feed.write("marked.csv", 100)                                     # just written, but announced complete
    (landing / "marked.csv.done").write_text("")

    def deliver_again_while_running() -> None:  # once the run has claimed orders.csv, the producer sends it again
        deadline = time.monotonic() + 120
        while (landing / "orders.csv").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        feed.write("orders.csv", 100)

    again = threading.Thread(target=deliver_again_while_running, daemon=True)
    again.start()
    pipeline.runner.run(["version"], {}, 60)  # the runner is up, so its process tree can be watched
    with PeakMemory(pipeline.runner._process.pid) as memory:
        first = pipeline.once(**RUN_ENV)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-4000:]
    assert "waiting in landing/: slow.csv: still changing" in output
    assert "waiting in landing/: upload.csv.part: has a name tools use while writing" in output
    again.join(timeout=120)
    slow.join(timeout=120)
    # the bomb was stopped at MAX_DECOMPRESSED_BYTES: no process came near its 1 GiB
    assert memory.python_peak < 600 * 2**20, f"a Python process of the run reached {memory.python_peak >> 20} MB"
    assert memory.peak < 1500 * 2**20, f"a process of the run reached {memory.peak >> 20} MB"

    feed.write("orders.csv", 100)  # and a third time, before the next run
    time.sleep(SETTLED)
    second = pipeline.once(**RUN_ENV)  # over 30 s after the link landed: its quarantine grace has passed
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]

    # every row of every readable delivery stored exactly once (event_id is the key), nothing dead-lettered
    stored = {event_id for (event_id,) in pipeline.query("SELECT event_id FROM ecommerce_events")}
    assert stored == feed.event_ids and len(stored) == 100 * 6 + 12
    assert pipeline.scalar("SELECT count(*) FROM dead_letter_events") == 0
    total, valid, duplicates = pipeline.query("SELECT sum(total_records), sum(valid_records), "
                                              "sum(duplicate_records) FROM data_quality_metrics")[0]
    assert (total, valid, duplicates) == (len(stored), len(stored), 0)
    # one delivery per file as it landed: orders.csv three times, each with its own rows and archived file
    deliveries = pipeline.query("SELECT file_name, status, rows_staged, completed_by FROM deliveries ORDER BY delivery_id")
    assert [(name, status, rows) for name, status, rows, _ in deliveries if name == "orders.csv"] == [
        ("orders.csv", "archived", 100)] * 3
    by_name = {name: (status, rows, how) for name, status, rows, how in deliveries}
    assert by_name["slow.csv"] == ("archived", 12, "settled") and by_name["marked.csv"][2] == "marker"
    assert by_name["old_export.csv"][:2] == by_name["future.csv"][:2] == ("archived", 100)
    assert pipeline.scalar("SELECT count(DISTINCT delivery_id) FROM ecommerce_events WHERE source_file LIKE "
                           "'%%/orders.csv'") == 3
    # what could not be read: quarantined with its reason, nothing of it stored
    reasons = dict(pipeline.query("SELECT d.file_name, q.reason FROM quarantined_files q JOIN deliveries d "
                                  "USING (delivery_id)"))
    assert set(reasons) == {"bomb.csv.gz", "big.csv", "link.csv"}
    assert "expands past MAX_DECOMPRESSED_BYTES=8388608" in reasons["bomb.csv.gz"]
    assert "over MAX_FILE_BYTES=4194304" in reasons["big.csv"]
    assert "symbolic link (never followed)" in reasons["link.csv"]
    archived = sorted(split_stored_name(p.name)[1] for p in pipeline.archive_dir.rglob("*.csv"))
    assert archived == sorted(["future.csv", "marked.csv", "old_export.csv", "slow.csv"] + ["orders.csv"] * 3)
    # nothing left in LANDING_DIR but the temporary name; nothing claimed and unread
    assert sorted(p.name for p in landing.iterdir()) == [".claimed", "upload.csv.part"]
    assert list((landing / ".claimed").iterdir()) == []
    # one WARNING per quarantined file, each with its reason (the ingest's by the next run's detect_work)
    said = {a["title"]: a["details"][0] for a in alerts(pipeline) if a["key"].startswith("quarantined_file:")}
    assert said == {f"file {name!r} from the landing directory quarantined": reasons[name] for name in reasons}
    # the checkpoint holds delivery offsets, not a list of every file it saw
    checkpoint = pipeline.settings.checkpoint_dir
    assert not any("orders.csv" in p.read_text(errors="replace") for p in checkpoint.rglob("*") if p.is_file())
    offsets = sorted((p for p in (checkpoint / "offsets").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert set(json.loads(offsets[-1].read_text().splitlines()[-1])) == {"delivery", "sweep"}

    # the temporary file has waited too long: one WARNING naming it and why; a recovery once it is gone
    with psycopg.connect(pipeline.settings.postgres_conninfo) as conn:
        conn.execute("UPDATE landing_waits SET first_seen_at = first_seen_at - interval '20 minutes'")
    waiting = pipeline.once(**RUN_ENV)
    assert waiting.returncode == 0, (waiting.stdout + waiting.stderr)[-3000:]
    [warning] = [a for a in alerts(pipeline) if a["key"] == "landing_waiting"]
    assert warning["level"] == "WARNING" and "upload.csv.part" in warning["details"][0]
    assert "name tools use while writing" in warning["details"][0]
    (landing / "upload.csv.part").unlink()
    cleared = pipeline.once(**RUN_ENV)
    assert cleared.returncode == 0
    assert [a["key"] for a in alerts(pipeline)][-1] == "recovery"
    assert "landing_waiting" in alerts(pipeline)[-1]["fingerprint"]
