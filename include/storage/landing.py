"""LANDING_DIR as the pipeline sees it: which entries are complete deliveries, which wait and why, and which
are not ours to read. Producers we do not control write here (README "Use your own feed").

Each entry is judged by ``judge`` (pure: the entry's ``stat``, the markers beside it, what an earlier look saw,
the time) into one of:

* **claim**: a complete feed file (``*.csv``, ``*.csv.gz``, ``*.csv.bz2``). Complete means its marker
  ``<name><LANDING_MARKER_SUFFIX>`` (``orders.csv.done``) exists, or, unless LANDING_REQUIRE_MARKER, the file
  has not changed for LANDING_SETTLE_SECONDS: its last change (the later of its modification and status-change
  times; a rename into place or ``cp -p`` moves the latter) is that long ago, or, when its times lie in the
  future, an earlier look saw it exactly as it is that long ago. A modification time is never used for
  anything else: an old one (``cp -p``, ``rsync -t``) or a future one changes nothing;
* **quarantine** (claimed too, straight into QUARANTINE_DIR with the reason): anything that is not a regular
  file (a symbolic link, never followed; a directory, pipe, socket, device), a file that is not a feed file by
  its name, an empty file, a file over MAX_FILE_BYTES. All but the last are quarantined once their modification
  time is ``QUARANTINE_GRACE_SECONDS`` old, as a producer may still be creating them;
* **wait**, with the reason (still changing, waiting for its marker, not readable): recorded in
  ``landing_waits`` with the time it was first seen, so a file waiting longer than LANDING_STUCK_MINUTES raises
  a WARNING naming it and why;
* **ignore**: names tools use while writing (``.name``, ``_name``, ``*.tmp``, ``*.part``, ``*.crdownload``, ...,
  ``IN_FLIGHT_SUFFIXES``) and markers: never read, never quarantined; in-flight names that stay too long are
  named by the same WARNING.

``include.storage.deliveries`` claims what ``take_stock`` finds ready.
"""

from __future__ import annotations

import os
import stat as stat_module
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from include.settings import Settings

# What the ingest reads from LANDING_DIR (compressed files are read like plain ones).
FEED_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".csv.bz2")
# Names that file transfer tools, browsers and editors give a file while they write it (rsync, scp and curl
# temporaries, WinSCP's .filepart, Chrome's .crdownload, Firefox's .part, vim's .swp, ...): never read.
IN_FLIGHT_SUFFIXES: tuple[str, ...] = (".tmp", ".temp", ".part", ".partial", ".filepart", ".crdownload",
                                       ".download", ".opdownload", ".swp", ".lock", "~")
IN_FLIGHT_PREFIXES: tuple[str, ...] = (".", "_", "~$")
# Empty files, files that are not feed files and entries that are not regular files are quarantined only once
# they have been left alone this long: a producer may be about to write into the empty file it just created,
# or still be moving a batch of files in.
QUARANTINE_GRACE_SECONDS = 30
EMPTY_FILE_REASON = "empty file: no header and no rows"

CLAIM, QUARANTINE, WAIT, IGNORE = "claim", "quarantine", "wait", "ignore"


def feed_suffix(name: str) -> str | None:
    """The feed suffix ``name`` ends with (the longest), or None if it is not a feed file."""
    return next((suffix for suffix in sorted(FEED_SUFFIXES, key=len, reverse=True) if name.endswith(suffix)), None)


def split_name(name: str) -> tuple[str, str]:
    """(stem, suffix) with a feed file's whole suffix: ``a.csv.gz`` -> (``a``, ``.csv.gz``)."""
    suffix = feed_suffix(name) or Path(name).suffix
    return name[: len(name) - len(suffix)] if suffix else name, suffix


def in_flight(name: str) -> bool:
    """A name a tool gives a file while it writes it (never read, never quarantined)."""
    lowered = name.lower()
    return lowered.startswith(IN_FLIGHT_PREFIXES) or lowered.endswith(IN_FLIGHT_SUFFIXES)


def foreign_file_reason(name: str) -> str:
    return (f"not a feed file: LANDING_DIR takes {', '.join('*' + s for s in FEED_SUFFIXES)} "
            f"(this one is named {name!r})")


@dataclass(frozen=True)
class Entry:
    """One entry of LANDING_DIR as ``os.lstat`` saw it (a symbolic link is never followed)."""

    name: str
    kind: str            # file | symlink | directory | other
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    readable: bool = True

    @property
    def last_change_ns(self) -> int:
        return max(self.mtime_ns, self.ctime_ns)

    def same_as(self, seen: Seen | None) -> bool:
        return seen is not None and (seen.inode, seen.size, seen.mtime_ns, seen.ctime_ns) == (
            self.inode, self.size, self.mtime_ns, self.ctime_ns)


@dataclass(frozen=True)
class Seen:
    """What an earlier look recorded of an entry that waited (a row of ``landing_waits``)."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    first_seen_at: datetime
    unchanged_since: datetime


@dataclass(frozen=True)
class Verdict:
    action: str                 # claim | quarantine | wait | ignore
    reason: str = ""
    completed_by: str = ""      # claim and quarantine: marker | settled | grace


def scan(landing_dir: Path) -> list[Entry]:
    """Every entry of ``landing_dir`` (the pipeline's own ``.claimed`` directory included: ``judge`` ignores it,
    as it ignores every name starting with a dot)."""
    entries = []
    try:
        listing = list(os.scandir(landing_dir))
    except FileNotFoundError:
        return []
    for item in listing:
        try:
            st = item.stat(follow_symlinks=False)
        except FileNotFoundError:  # gone between the listing and the look (a producer renamed it)
            continue
        mode = st.st_mode
        kind = ("file" if stat_module.S_ISREG(mode) else "symlink" if stat_module.S_ISLNK(mode)
                else "directory" if stat_module.S_ISDIR(mode) else "other")
        readable = kind != "file" or os.access(item.path, os.R_OK)
        entries.append(Entry(item.name, kind, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, readable))
    return sorted(entries, key=lambda e: e.name)


def judge(entry: Entry, *, markers: set[str], seen: Seen | None, now: datetime, settings: Settings) -> Verdict:
    """What to do with ``entry`` now (module docstring). ``markers`` are the names present that end in the
    marker suffix; ``seen`` what the last look recorded of this entry, if it waited then."""
    suffix = settings.landing_marker_suffix
    name = entry.name
    if in_flight(name):
        return Verdict(IGNORE, f"has a name tools use while writing ({name!r}); renamed, it will be read")
    if name.endswith(suffix) and len(name) > len(suffix):
        return Verdict(IGNORE, f"a marker without its file {name[:-len(suffix)]!r}")
    marked = name + suffix in markers
    idle = _idle_seconds(entry, seen, now)
    if entry.kind != "file" or feed_suffix(name) is None or entry.size == 0:
        reason = (f"not a regular file but a {'symbolic link (never followed)' if entry.kind == 'symlink' else entry.kind}"
                  if entry.kind != "file" else foreign_file_reason(name) if feed_suffix(name) is None
                  else EMPTY_FILE_REASON)
        # nothing of these is read, so a copy's preserved (old) modification time is as good as any: the grace
        # is for a producer still writing, which moves it
        unwritten = max(now.timestamp() - entry.mtime_ns / 1e9, _idle_seconds(entry, seen, now, by_times=False))
        if marked or unwritten >= max(QUARANTINE_GRACE_SECONDS, settings.landing_settle_seconds):
            return Verdict(QUARANTINE, reason, "marker" if marked else "grace")
        return Verdict(WAIT, f"will be quarantined ({reason}) once left alone for {QUARANTINE_GRACE_SECONDS} s")
    if not entry.readable:
        return Verdict(WAIT, "not readable by the pipeline's user (permission denied)")
    if marked:
        completed = Verdict(CLAIM, completed_by="marker")
    elif settings.landing_require_marker:
        return Verdict(WAIT, f"waiting for its marker {name + suffix!r} (LANDING_REQUIRE_MARKER)")
    elif idle >= settings.landing_settle_seconds:
        completed = Verdict(CLAIM, completed_by="settled")
    else:
        return Verdict(WAIT, f"still changing: changed {max(idle, 0):.0f} s ago "
                             f"(LANDING_SETTLE_SECONDS={settings.landing_settle_seconds:g})")
    if entry.size > settings.max_file_bytes:
        return Verdict(QUARANTINE, f"file of {entry.size} bytes is over MAX_FILE_BYTES={int(settings.max_file_bytes)}; "
                                   "not read", completed.completed_by)
    return completed


def _idle_seconds(entry: Entry, seen: Seen | None, now: datetime, by_times: bool = True) -> float:
    """How long ``entry`` has been left alone: since its last change by its own times, or, where those lie in
    the future (a clock step, a producer's clock), since an earlier look first saw it exactly as it is."""
    by_looks = (now - seen.unchanged_since).total_seconds() if entry.same_as(seen) else 0.0
    return max(now.timestamp() - entry.last_change_ns / 1e9, by_looks) if by_times else by_looks


@dataclass
class Stock:
    """What one look at LANDING_DIR found."""

    claim: list[tuple[Entry, Verdict]]
    quarantine: list[tuple[Entry, Verdict]]
    waiting: list[tuple[Entry, Verdict, datetime]]      # with the time each was first seen

    def stuck(self, now: datetime, minutes: int) -> list[tuple[str, str, datetime]]:
        """(name, why it waits, first seen) of the entries waiting longer than ``minutes``."""
        since = now - timedelta(minutes=minutes)
        return [(entry.name, verdict.reason, first) for entry, verdict, first in self.waiting if first <= since]


def take_stock(settings: Settings, conn: psycopg.Connection, now: datetime | None = None) -> Stock:
    """Look at LANDING_DIR, judge every entry, and record in ``landing_waits`` what waits (first seen, unchanged
    since), so the next look can tell how long each has waited. Call it inside the claim's transaction."""
    now = now or datetime.now(UTC)
    entries = [e for e in scan(settings.landing_dir) if e.name != CLAIMED_DIRNAME]
    suffix = settings.landing_marker_suffix
    markers = {e.name for e in entries if e.name.endswith(suffix)}
    seen = {name: Seen(*row) for name, *row in conn.execute(
        "SELECT name, inode, size_bytes, mtime_ns, ctime_ns, first_seen_at, unchanged_since FROM landing_waits")}
    names = {e.name for e in entries}
    stock = Stock([], [], [])
    waits = []
    for entry in entries:
        earlier = seen.get(entry.name)
        verdict = judge(entry, markers=markers, seen=earlier, now=now, settings=settings)
        if verdict.action == CLAIM:
            stock.claim.append((entry, verdict))
        elif verdict.action == QUARANTINE:
            stock.quarantine.append((entry, verdict))
        elif verdict.action == IGNORE and entry.name.endswith(suffix) and entry.name[:-len(suffix)] in names:
            continue  # the marker of a file that is here: it goes with its file
        else:
            same_file = earlier is not None and earlier.inode == entry.inode
            first = earlier.first_seen_at if same_file else now
            unchanged = earlier.unchanged_since if entry.same_as(earlier) else now
            stock.waiting.append((entry, verdict, first))
            waits.append((entry.name, entry.inode, entry.size, entry.mtime_ns, entry.ctime_ns, first, unchanged,
                          verdict.reason))
    conn.execute("DELETE FROM landing_waits")
    if waits:
        with conn.cursor().copy("COPY landing_waits (name, inode, size_bytes, mtime_ns, ctime_ns, first_seen_at, "
                                "unchanged_since, reason) FROM STDIN") as copy:
            for row in waits:
                copy.write_row(row)
    return stock


# The directory inside LANDING_DIR that holds the claimed deliveries until the ingest has staged them: inside,
# so a claim is a rename on the same file system (atomic), and hidden, so no listing of the producer's mistakes
# it for a file to write or read.
CLAIMED_DIRNAME = ".claimed"
