"""LANDING_DIR as producers we do not control fill it: which entries are complete, which wait and why, what is
quarantined, and the claim that makes each complete file exactly one delivery."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from include.settings import Settings
from include.storage import deliveries
from include.storage.landing import (
    CLAIM,
    IGNORE,
    QUARANTINE,
    WAIT,
    Entry,
    Seen,
    feed_suffix,
    in_flight,
    judge,
    split_name,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SETTINGS = Settings.from_env({"LANDING_SETTLE_SECONDS": "10", "MAX_FILE_BYTES": "1m"})


def entry(name: str = "orders.csv", *, age: float = 60, size: int = 100, kind: str = "file", mtime_age: float | None = None,
          readable: bool = True, inode: int = 7) -> Entry:
    """An entry last changed ``age`` seconds before NOW (its modification time ``mtime_age`` ago if given: a
    producer's own time, old or in the future)."""
    ns = lambda seconds: int((NOW.timestamp() - seconds) * 1e9)  # noqa: E731
    return Entry(name, kind, size, ns(age if mtime_age is None else mtime_age), ns(age), inode, readable)


def verdict(e: Entry, *, markers=(), seen: Seen | None = None, settings: Settings = SETTINGS):
    return judge(e, markers=set(markers), seen=seen, now=NOW, settings=settings)


@pytest.mark.unit
def test_feed_names_and_the_names_tools_use_while_writing():
    assert [feed_suffix(n) for n in ("a.csv", "a.csv.gz", "a.csv.bz2", "a.gz", "a.CSV", "a.txt")] == [
        ".csv", ".csv.gz", ".csv.bz2", None, None, None]
    assert split_name("events.csv.gz") == ("events", ".csv.gz")
    assert all(in_flight(n) for n in (".orders.csv", "_orders.csv", "orders.csv.tmp", "orders.csv.part",
                                      "orders.csv.crdownload", "orders.csv.filepart", "orders.csv~", "~$orders.csv"))
    assert not any(in_flight(n) for n in ("orders.csv", "orders.csv.gz", "a_b.csv"))


@pytest.mark.unit
def test_a_file_left_alone_for_the_settle_time_is_claimed_whatever_its_modification_time():
    assert verdict(entry(age=10)) .action == CLAIM
    # cp -p / rsync -t: a modification time of last year, but the copy changed the file 20 s ago
    assert verdict(entry(age=20, mtime_age=365 * 86400)).action == CLAIM
    assert verdict(entry(age=20, mtime_age=365 * 86400)).completed_by == "settled"


@pytest.mark.unit
def test_a_file_still_changing_waits_and_says_so():
    waits = verdict(entry(age=3))
    assert waits.action == WAIT and "still changing" in waits.reason and "LANDING_SETTLE_SECONDS=10" in waits.reason


@pytest.mark.unit
def test_a_future_modification_time_is_claimed_once_seen_unchanged_for_the_settle_time():
    future = entry(age=-3600)  # its times lie an hour ahead of our clock (a clock step, a producer's clock)
    assert verdict(future).action == WAIT
    seen = Seen(future.inode, future.size, future.mtime_ns, future.ctime_ns, NOW - timedelta(seconds=30),
                NOW - timedelta(seconds=11))
    assert verdict(future, seen=seen).action == CLAIM
    grew = replace(future, size=future.size + 1)  # changed since that look: the wait starts again
    assert verdict(grew, seen=seen).action == WAIT


@pytest.mark.unit
def test_a_marker_completes_its_file_at_once_and_a_required_marker_is_waited_for():
    assert verdict(entry(age=0), markers={"orders.csv.done"}).completed_by == "marker"
    strict = replace(SETTINGS, landing_require_marker=True)
    waits = verdict(entry(age=600), settings=strict)
    assert waits.action == WAIT and "orders.csv.done" in waits.reason
    assert verdict(entry(age=0), markers={"orders.csv.done"}, settings=strict).action == CLAIM
    assert verdict(entry("orders.csv.done", size=0)).action == IGNORE


@pytest.mark.unit
def test_names_in_flight_are_never_read_nor_quarantined():
    for name in (".orders.csv", "orders.csv.part", "orders.csv.tmp", "_copying.csv"):
        assert verdict(entry(name, age=3600)).action == IGNORE


@pytest.mark.unit
def test_what_is_not_a_file_to_read_is_quarantined_after_the_grace_time_with_its_reason():
    cases = {entry("passwd.csv", kind="symlink"): "symbolic link (never followed)",
             entry("2026-12-07", kind="directory"): "directory",
             entry("report.xlsx"): "not a feed file",
             entry("empty.csv", size=0): "empty file"}
    for e, reason in cases.items():
        assert verdict(e).action == QUARANTINE and reason in verdict(e).reason, e
        just_written = int(NOW.timestamp() * 1e9)
        assert verdict(replace(e, mtime_ns=just_written, ctime_ns=just_written)).action == WAIT  # wait: still written?
    big = verdict(entry(size=2 * 2**20))
    assert big.action == QUARANTINE and "over MAX_FILE_BYTES=1048576" in big.reason
    assert verdict(entry(readable=False)).action == WAIT


# --------------------------------------------------------------------------------------------- the claim, real

@pytest.fixture
def landing(pipeline, tmp_path):
    pipeline.reset()
    settings = replace(pipeline.settings, landing_dir=tmp_path / "landing", archive_dir=tmp_path / "archive",
                       quarantine_dir=tmp_path / "quarantine", landing_settle_seconds=1.0)
    settings.landing_dir.mkdir()
    return settings


def claim(settings: Settings, **kwargs) -> deliveries.Claimed:
    with psycopg.connect(settings.postgres_conninfo) as conn:
        return deliveries.claim(settings, conn, "run-1", **kwargs)


def backdate(path, seconds: float = 60) -> None:
    """As if the file had been written ``seconds`` ago (a status change can only be moved by waiting, so the
    tests that need an old one wait instead)."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


@pytest.mark.integration
@pytest.mark.db
def test_a_name_delivered_again_is_a_new_delivery_each_time(pipeline, landing):
    ids = []
    for content in ("h\n1\n", "h\n1\n2\n", "h\n1\n2\n3\n"):
        (landing.landing_dir / "orders.csv").write_text(content)
        time.sleep(1.1)
        [delivery] = claim(landing).deliveries
        ids.append(delivery.delivery_id)
        assert delivery.file_name == "orders.csv" and delivery.size_bytes == len(content)
        assert delivery.source_file == str(landing.landing_dir / "orders.csv")
        assert os.path.basename(delivery.path) == f"{delivery.delivery_id}__orders.csv"
    assert len(set(ids)) == 3 and ids == sorted(ids)
    assert sorted(os.listdir(deliveries.claimed_dir(landing))) == sorted(f"{i}__orders.csv" for i in ids)
    assert [p.name for p in landing.landing_dir.iterdir()] == [".claimed"]


@pytest.mark.integration
@pytest.mark.db
def test_the_claim_quarantines_what_is_not_a_file_to_read_and_never_follows_a_link(pipeline, landing, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret\n")
    (landing.landing_dir / "passwd.csv").symlink_to(secret)
    (landing.landing_dir / "report.xlsx").write_bytes(b"PK")
    (landing.landing_dir / "subdir").mkdir()
    (landing.landing_dir / "orders.csv.part").write_text("h\n1\n")
    (landing.landing_dir / "good.csv").write_text("h\n1\n")
    for name in ("passwd.csv", "report.xlsx", "subdir"):
        backdate(landing.landing_dir / name)  # left alone for a minute: past the grace time
    time.sleep(1.1)
    claimed = claim(landing)
    assert [d.file_name for d in claimed.deliveries] == ["good.csv"]
    reasons = {d.file_name: reason for d, reason in claimed.quarantined}
    assert set(reasons) == {"passwd.csv", "report.xlsx", "subdir"}
    assert "symbolic link" in reasons["passwd.csv"] and "directory" in reasons["subdir"]
    with psycopg.connect(landing.postgres_conninfo) as conn:
        rows = conn.execute("SELECT q.reason, q.quarantine_path, d.status FROM quarantined_files q "
                            "JOIN deliveries d USING (delivery_id) ORDER BY q.id").fetchall()
    assert len(rows) == 3 and {status for _, _, status in rows} == {"quarantined"}
    assert not any("root:x" in reason for reason, _, _ in rows)  # nothing of the link's target is read
    link = next(path for _, path, _ in rows if path.endswith("passwd.csv"))
    assert os.path.islink(link) and secret.read_text() == "root:x:0:0:secret\n"
    assert sorted(p.name for p in landing.landing_dir.iterdir()) == [".claimed", "orders.csv.part"]
    assert [name for name, *_ in claimed.stock.stuck(datetime.now(UTC) + timedelta(hours=1), 15)] == ["orders.csv.part"]


@pytest.mark.integration
@pytest.mark.db
def test_a_marker_claims_its_file_at_once_and_is_removed(pipeline, landing):
    (landing.landing_dir / "orders.csv").write_text("h\n1\n")
    (landing.landing_dir / "orders.csv.done").write_text("")
    [delivery] = claim(landing).deliveries  # no settle wait
    assert delivery.file_name == "orders.csv"
    assert [p.name for p in landing.landing_dir.iterdir()] == [".claimed"]


@pytest.mark.integration
@pytest.mark.db
def test_a_file_growing_between_two_looks_waits_and_its_wait_is_recorded(pipeline, landing):
    path = landing.landing_dir / "slow.csv"
    path.write_text("h\n")
    first = claim(landing)
    assert first.deliveries == [] and [e.name for e, _, _ in first.stock.waiting] == ["slow.csv"]
    with psycopg.connect(landing.postgres_conninfo) as conn:
        [(name, reason)] = conn.execute("SELECT name, reason FROM landing_waits").fetchall()
    assert name == "slow.csv" and "still changing" in reason
    with path.open("a") as out:
        out.write("1\n")
    assert claim(landing).deliveries == []
    time.sleep(1.1)
    [delivery] = claim(landing).deliveries
    assert delivery.size_bytes == len("h\n1\n")
    with psycopg.connect(landing.postgres_conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM landing_waits").fetchone()[0] == 0


@pytest.mark.integration
@pytest.mark.db
def test_a_claim_that_died_before_its_commit_is_registered_once_by_the_next(pipeline, landing):
    """The rename happened, the transaction did not commit (the process died): the next claim registers the
    file under the id its name carries, before it hands out any new one."""
    with psycopg.connect(landing.postgres_conninfo) as conn:
        orphan_id = conn.execute("SELECT nextval('deliveries_delivery_id_seq')").fetchone()[0]
    deliveries.claimed_dir(landing).mkdir(parents=True, exist_ok=True)
    (deliveries.claimed_dir(landing) / f"{orphan_id}__orders.csv").write_text("h\n1\n")
    (landing.landing_dir / "later.csv").write_text("h\n2\n")
    time.sleep(1.1)
    claimed = claim(landing)
    assert [(d.delivery_id, d.file_name, d.status) for d in claimed.recovered] == [(orphan_id, "orders.csv", "claimed")]
    assert [d.delivery_id for d in claimed.deliveries] == [orphan_id + 1]
    assert claim(landing).recovered == []  # once
