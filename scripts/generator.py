"""Synthetic e-commerce event feed: one CSV file per batch, dropped atomically into the landing directory.

Usage::

    python -m scripts.generator [--output-dir DIR] [--rate-seconds 5] [--batch-size 100] [--seed N]
        [--version-mix v1=0.1,v2=0.3,v3=0.6] [--invalid-ratio 0.0] [--duplicate-ratio 0.0]
        [--late-ratio 0.0] [--structural-ratio 0.0] [--awkward-ratio 0.0] [--bom-crlf-ratio 0.0]
        [--bad-file-ratio 0.0] [--batches 0]

Every ``--rate-seconds`` a file ``events_<YYYYmmdd_HHMMSS>_<6 hex>.csv`` (UTC stamp) of ``--batch-size``
events is written. Its schema version (see ``include.contract.versions``) is drawn from ``--version-mix`` and
its header is that version's columns. The file is written as a dot-file (``.events_....csv.tmp``, a name the
pipeline never reads: include/storage/landing.py) and then renamed, so no reader sees half a file. ``--batches 0`` runs until SIGINT/SIGTERM,
which stop it after the current file. ``--output-dir`` defaults to LANDING_DIR.

Deliberate defects, as fractions of each batch (stochastically rounded to whole rows): ``--invalid-ratio``
rows carry exactly one defect from ``INVALID_KINDS``; ``--duplicate-ratio`` rows are exact copies of an
earlier valid row (of this batch or the previous one); ``--late-ratio`` rows have an event_time 10-120
minutes old; ``--structural-ratio`` rows are damaged CSV records, one kind from ``STRUCTURAL_KINDS`` each
(too few fields, one field too many, a field over the parser's MAX_FIELD_CHARS, a broken quote), written
verbatim since the csv writer cannot produce them; ``--awkward-ratio`` rows are valid v3 rows whose geo_city
holds a quoted comma, doubled quotes and a line break and whose campaign_id holds an injection string
(v1/v2 files have no free-text column and get none). They must round-trip exactly; a record with a line
break spans two physical lines, so ``tags[i]`` describes the i-th CSV record, not the i-th line.

File-level variants, as probabilities per batch: ``--bom-crlf-ratio`` files start with a UTF-8 BOM and end
their lines with CRLF (still valid); ``--bad-file-ratio`` batches are one unreadable file instead, of a kind
from ``BAD_FILE_KINDS`` (a header without the required columns, bytes that are not UTF-8, zero bytes), written
atomically under a normal name. ``EventGenerator.last_report`` says, row by row and for the file, what was
injected. With every new ratio at 0 the output is byte for byte what it was before they existed.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import logging
import math
import os
import random
import secrets
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from faker import Faker

from include.contract.versions import (
    BROWSERS,
    CATEGORIES,
    DEVICE_TYPES,
    EVENT_TYPES,
    LOGIN_REQUIRED_EVENT_TYPES,
    REFERRERS,
    USER_SEGMENTS,
    VERSIONS,
    SchemaVersion,
)

logger = logging.getLogger(__name__)

Row = dict[str, str | None]
EVENT_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
DEFAULT_VERSION_MIX = "v1=0.1,v2=0.3,v3=0.6"
# view 50 %, search 15 %, add_to_cart 12 %, remove_from_cart 5 %, wishlist 8 %, purchase 10 %
EVENT_TYPE_WEIGHTS: Mapping[str, float] = dict(zip(EVENT_TYPES, (50, 15, 12, 5, 8, 10), strict=True))
SEGMENT_WEIGHTS: Mapping[str, float] = dict(zip(USER_SEGMENTS, (30, 45, 18, 7), strict=True))  # new..vip
QUANTITY_EVENT_TYPES = ("add_to_cart", "remove_from_cart", "purchase")
INVALID_KINDS: tuple[str, ...] = (
    "negative_price", "price_above_max", "zero_quantity", "non_numeric_price", "unparseable_event_time",
    "unknown_event_type", "purchase_without_user", "empty_event_id", "non_uuid_event_id", "zero_product_id",
)
# Damaged CSV records (``--structural-ratio``); the parser dead-letters them, see include.contract.parser.
STRUCTURAL_KINDS: tuple[str, ...] = ("short_row", "extra_field", "oversize_field", "broken_quote")
OVERSIZE_CHARS = 2048  # well over include.contract.parser.MAX_FIELD_CHARS (1024)
EXTRA_FIELD_VALUE = "unexpected"
# Valid but awkward text (``--awkward-ratio``, v3 only): quoted commas, doubled quotes, line breaks, injections.
AWKWARD_COLUMNS: tuple[str, ...] = ("geo_city", "campaign_id")
AWKWARD_CITIES: tuple[str, ...] = (
    'São Paulo, "Centro"\nZona Sul',
    '"Le Marais", Paris 4e\nÎle-de-France',
    'Zürich, "Altstadt"\r\nKreis 1',
)
INJECTION_STRINGS: tuple[str, ...] = ("'); DROP TABLE ecommerce_events; --", '=HYPERLINK("http://example.com","x")')
# Unreadable files (``--bad-file-ratio``); the pipeline quarantines them whole.
BAD_FILE_KINDS: tuple[str, ...] = ("unknown_header", "not_utf8", "empty")
UNKNOWN_HEADER: tuple[str, ...] = ("id", "when", "what")
NOT_UTF8_VALUE = "Besançon"  # written as latin-1: b"Besan\xe7on"
UNKNOWN_EVENT_TYPES = ("click", "share", "compare")
LATE_MINUTES = (10.05, 120.0)
MAX_OPEN_SESSIONS = 30
_LOCALES = {"en_US": 30, "en_GB": 10, "de_DE": 12, "fr_FR": 10, "es_ES": 8, "it_IT": 6, "pl_PL": 6,
            "pt_BR": 10, "ja_JP": 8}


def _version(version: SchemaVersion | str) -> SchemaVersion:
    if isinstance(version, SchemaVersion):
        return version
    try:
        return VERSIONS[version]
    except KeyError:
        raise ValueError(f"unknown schema version {version!r} (known: {', '.join(VERSIONS)})") from None


def _utc_naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def invalid_kinds_for(version: SchemaVersion | str) -> tuple[str, ...]:
    """The defects a file of ``version`` can carry (v1 has no quantity column, hence no zero quantity)."""
    columns = _version(version).columns
    return tuple(kind for kind in INVALID_KINDS if kind != "zero_quantity" or "quantity" in columns)


@dataclass(frozen=True)
class BatchReport:
    """What one generated batch contains: ``tags[i]`` describes data row (CSV record) ``i`` of the batch/file.

    ``bad_file`` is the ``BAD_FILE_KINDS`` kind if the batch is an unreadable file instead (then ``tags`` is
    empty); ``bom_crlf`` says the file is written with a UTF-8 BOM and CRLF line endings.
    """

    version: str
    tags: tuple[str, ...]  # "valid", "late", "duplicate", "awkward" or "invalid:<kind>" (INVALID/STRUCTURAL_KINDS)
    bad_file: str | None = None
    bom_crlf: bool = False

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.tags))

    @property
    def invalid(self) -> dict[str, int]:
        return {tag.split(":", 1)[1]: n for tag, n in self.counts().items() if tag.startswith("invalid:")}

    @property
    def duplicates(self) -> int:
        return self.tags.count("duplicate")

    @property
    def late(self) -> int:
        return self.tags.count("late")

    @property
    def awkward(self) -> int:
        return self.tags.count("awkward")


class StructuralRow(dict[str, str | None]):
    """An event whose CSV record is damaged on purpose (``kind`` from STRUCTURAL_KINDS).

    The dict holds the event's values; ``record(columns)`` is the raw text written in place of a proper
    CSV record, which no csv writer would produce.
    """

    def __init__(self, values: Mapping[str, str | None] = (), kind: str = "short_row") -> None:
        super().__init__(values)
        self.kind = kind

    def record(self, columns: Sequence[str]) -> str:
        fields = [_csv_field(self.get(column)) for column in columns]
        if self.kind == "short_row":
            fields.pop()
        elif self.kind == "extra_field":
            fields.append(EXTRA_FIELD_VALUE)
        elif self.kind == "broken_quote":  # e.g. "bo"oks: text after a closing quote
            column = "category" if "category" in columns else "event_type"
            value = self.get(column) or "books"
            fields[list(columns).index(column)] = f'"{value[:2]}"{value[2:] or "x"}'
        else:
            raise ValueError(f"{self.kind!r} is not a raw structural kind")
        return ",".join(fields)


class Batch(list[Row]):
    """What ``generate_batch`` returns: the rows, with the batch's ``report`` and, for a bad file, ``content``
    (the file's exact bytes). ``EventGenerator.write_batch`` writes the file accordingly."""

    def __init__(self, rows: Iterable[Row] = (), report: BatchReport | None = None,
                 content: bytes | None = None) -> None:
        super().__init__(rows)
        self.report = report
        self.content = content


def _csv_field(value: str | None) -> str:
    """One field as csv.QUOTE_MINIMAL writes it (quoted only if it holds a comma, quote or line break)."""
    text = "" if value is None else value
    return '"' + text.replace('"', '""') + '"' if any(ch in text for ch in ',"\r\n') else text


def _csv_text(rows: Iterable[Sequence[str | None]], terminator: str = "\n") -> str:
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator=terminator).writerows(rows)
    return buffer.getvalue()


@dataclass
class _Session:
    session_id: str
    user_id: int | None
    remaining: int
    device_type: str
    browser: str
    geo_country: str
    geo_city: str
    referrer: str
    campaign_id: str | None
    last_product: int | None = None


class EventGenerator:
    """Seeded, stateful source of events: users, products and sessions persist across batches."""

    def __init__(
        self, seed: int | None = None, *, invalid_ratio: float = 0.0, duplicate_ratio: float = 0.0,
        late_ratio: float = 0.0, max_price: float | None = None, clock: Callable[[], datetime] | None = None,
        n_users: int = 5000, n_products: int = 2000, structural_ratio: float = 0.0, awkward_ratio: float = 0.0,
        bom_crlf_ratio: float = 0.0, bad_file_ratio: float = 0.0,
    ) -> None:
        ratios = {"invalid_ratio": invalid_ratio, "duplicate_ratio": duplicate_ratio, "late_ratio": late_ratio,
                  "structural_ratio": structural_ratio, "awkward_ratio": awkward_ratio}
        for name, ratio in {**ratios, "bom_crlf_ratio": bom_crlf_ratio, "bad_file_ratio": bad_file_ratio}.items():
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {ratio}")
        if sum(ratios.values()) > 1.0 + 1e-9:
            raise ValueError(f"{' + '.join(ratios)} must not exceed 1")
        if max_price is None:
            from include.settings import get_settings

            max_price = get_settings().max_price
        self.seed = seed if seed is not None else secrets.randbits(32)
        self.invalid_ratio, self.duplicate_ratio, self.late_ratio = invalid_ratio, duplicate_ratio, late_ratio
        self.structural_ratio, self.awkward_ratio = structural_ratio, awkward_ratio
        self.bom_crlf_ratio, self.bad_file_ratio = bom_crlf_ratio, bad_file_ratio
        self.max_price = float(max_price)
        self.clock = clock or _utc_now
        self.rng = rng = random.Random(self.seed)
        self._fakers = {}
        for locale in _LOCALES:
            self._fakers[locale] = Faker(locale)
            self._fakers[locale].seed_instance(self.seed)
        self.n_users, self.n_products = n_users, n_products
        segments, weights = list(SEGMENT_WEIGHTS), list(SEGMENT_WEIGHTS.values())
        self.user_segments: list[str] = [""] + rng.choices(segments, weights=weights, k=n_users)  # index = id
        cap = math.floor(min(self.max_price, 10000.0) * 100) / 100
        self.product_categories: list[str] = [""] + [rng.choice(CATEGORIES) for _ in range(n_products)]
        self.product_prices: list[float] = [0.0] + [
            round(min(max(rng.lognormvariate(3.6, 1.3), 0.5), cap), 2) for _ in range(n_products)
        ]
        self._product_cum = list(itertools.accumulate(1 / (i + 1) ** 0.8 for i in range(n_products)))
        self._sessions: list[_Session] = []
        self._previous_valid: list[Row] = []
        self.last_report: BatchReport | None = None

    # ----------------------------------------------------------------- public API
    def pick_version(self, mix: Mapping[str, float]) -> SchemaVersion:
        """Draw a schema version with the (unnormalised) weights of ``mix``, e.g. ``{"v1": 0.1, "v3": 0.9}``."""
        names = list(mix)
        return _version(self.rng.choices(names, weights=[mix[n] for n in names])[0])

    def generate_batch(
        self, size: int, version: SchemaVersion | str = "v3", now: datetime | None = None
    ) -> Batch:
        """``size`` events as canonical (v3-keyed) dicts of strings/None; sets ``last_report``.

        A bad-file batch (``bad_file_ratio``) has no rows, only the bytes of its file (``Batch.content``).
        """
        version = _version(version)
        now = _utc_naive(now or self.clock())
        rng = self.rng
        # every new ratio draws from the rng only when it is non-zero, so old seeds give the old files
        if self.bad_file_ratio and rng.random() < self.bad_file_ratio:
            return self._bad_batch(version, now)
        n_dup = min(self._count(size * self.duplicate_ratio), size)
        n_base = size - n_dup
        n_invalid = min(self._count(size * self.invalid_ratio), n_base)
        n_late = min(self._count(size * self.late_ratio), n_base - n_invalid)
        free = n_base - n_invalid - n_late
        n_structural = min(self._count(size * self.structural_ratio), free) if self.structural_ratio else 0
        free -= n_structural
        awkward = self.awkward_ratio and set(AWKWARD_COLUMNS) <= set(version.columns)
        n_awkward = min(self._count(size * self.awkward_ratio), free) if awkward else 0
        rows: list[Row] = [self._event(now) for _ in range(n_base)]
        tags = ["valid"] * n_base
        positions = rng.sample(range(n_base), n_invalid + n_late + n_structural + n_awkward)
        for pos, kind in zip(positions[:n_invalid], self._kinds(version, n_invalid)):
            self._break(rows[pos], kind)
            tags[pos] = f"invalid:{kind}"
        positions = positions[n_invalid:]
        for pos in positions[:n_late]:
            rows[pos]["event_time"] = (now - timedelta(minutes=rng.uniform(*LATE_MINUTES))).strftime(
                EVENT_TIME_FORMAT)
            tags[pos] = "late"
        positions = positions[n_late:]
        for pos, kind in zip(positions[:n_structural], self._rotation(STRUCTURAL_KINDS, n_structural)):
            rows[pos] = self._damage(rows[pos], kind, version)
            tags[pos] = f"invalid:{kind}"
        for pos in positions[n_structural:]:
            rows[pos].update(geo_city=rng.choice(AWKWARD_CITIES), campaign_id=rng.choice(INJECTION_STRINGS))
            tags[pos] = "awkward"
        valid = [row for row, tag in zip(rows, tags) if tag == "valid"]
        pool = self._previous_valid + valid
        for _ in range(n_dup if pool else 0):
            source = rng.choice(pool)
            index = next((i for i, row in enumerate(rows) if row is source), -1)
            pos = rng.randint(index + 1, len(rows))
            rows.insert(pos, dict(source))
            tags.insert(pos, "duplicate")
        self._previous_valid = valid
        bom_crlf = bool(self.bom_crlf_ratio) and rng.random() < self.bom_crlf_ratio
        self.last_report = BatchReport(version.name, tuple(tags), bom_crlf=bom_crlf)
        return Batch(rows, self.last_report)

    def write_batch(self, rows: Iterable[Mapping[str, str | None]], version: SchemaVersion | str,
                    output_dir: str | os.PathLike[str]) -> Path:
        """Write ``rows`` atomically as a new ``events_*.csv`` file of ``version`` in ``output_dir``.

        A ``Batch`` from ``generate_batch`` is written as its report says: with BOM and CRLF, or as its bad file.
        """
        if isinstance(rows, Batch) and rows.content is not None:
            return write_raw_file(rows.content, output_dir, now=self.clock())
        bom_crlf = isinstance(rows, Batch) and rows.report is not None and rows.report.bom_crlf
        return write_batch_file(rows, version, output_dir, now=self.clock(), bom_crlf=bom_crlf)

    # ----------------------------------------------------------------- internals
    def _count(self, expected: float) -> int:
        expected = round(expected, 9)
        whole = math.floor(expected)
        return whole + (1 if self.rng.random() < expected - whole else 0)

    def _kinds(self, version: SchemaVersion, n: int) -> list[str]:
        return self._rotation(invalid_kinds_for(version), n)

    def _rotation(self, kinds: Sequence[str], n: int) -> list[str]:
        kinds, out = list(kinds), []
        while len(out) < n:  # shuffled rounds: every kind appears before any repeats
            self.rng.shuffle(kinds)
            out.extend(kinds)
        return out[:n]

    def _bad_batch(self, version: SchemaVersion, now: datetime) -> Batch:
        """A batch that is one unreadable file of a random BAD_FILE_KINDS kind."""
        kind = self.rng.choice(BAD_FILE_KINDS)
        content = b""
        if kind != "empty":
            events = [self._event(now) for _ in range(self.rng.randint(2, 5))]
            if kind == "unknown_header":
                content = _csv_text([UNKNOWN_HEADER, *([e["event_id"], e["event_time"], e["event_type"]]
                                                      for e in events)]).encode("utf-8")
            else:  # not_utf8: a valid header and rows, then a row from a latin-1 system
                columns = version.columns
                column = "geo_city" if "geo_city" in columns else "event_type"
                latin1 = dict(events.pop(), **{column: NOT_UTF8_VALUE})
                content = (_csv_text([columns, *([e.get(c) for c in columns] for e in events)]).encode("utf-8")
                           + _csv_text([[latin1.get(c) for c in columns]]).encode("latin-1", errors="replace"))
        self._previous_valid = []  # its rows never land: the next batch must not duplicate them
        self.last_report = BatchReport(version.name, (), bad_file=kind)
        return Batch((), self.last_report, content)

    def _damage(self, row: Row, kind: str, version: SchemaVersion) -> Row:
        """``row`` with a structural defect: an oversize field is real data, the others need raw writing."""
        if kind == "oversize_field":
            column = "geo_city" if "geo_city" in version.columns else "event_type"
            value = row[column] or "x"
            row[column] = ((value + " ") * (OVERSIZE_CHARS // (len(value) + 1) + 1))[:OVERSIZE_CHARS]
            return row
        if kind not in STRUCTURAL_KINDS:
            raise ValueError(f"unknown structural kind {kind!r} (known: {', '.join(STRUCTURAL_KINDS)})")
        return StructuralRow(row, kind)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _session_for(self, needs_user: bool) -> _Session:
        rng = self.rng
        candidates = [s for s in self._sessions if s.user_id is not None or not needs_user]
        if candidates and (len(self._sessions) >= MAX_OPEN_SESSIONS or rng.random() < 0.8):
            session = rng.choice(candidates)
        else:
            user_id = None if not needs_user and rng.random() < 0.3 else rng.randint(1, self.n_users)
            locale = rng.choices(list(_LOCALES), weights=list(_LOCALES.values()))[0]
            fake = self._fakers[locale]
            referrer = rng.choice(REFERRERS)
            campaign = f"CMP-{rng.randint(1000, 9999)}" if referrer != "direct" and rng.random() < 0.4 else None
            session = _Session(
                self._uuid(), user_id, rng.randint(2, 12), rng.choices(DEVICE_TYPES, weights=(45, 45, 10))[0],
                rng.choice(BROWSERS), fake.current_country_code(), fake.city(), referrer, campaign,
            )
            self._sessions.append(session)
        session.remaining -= 1
        if session.remaining <= 0:
            self._sessions.remove(session)
        return session

    def _event(self, now: datetime) -> Row:
        rng = self.rng
        event_type = rng.choices(list(EVENT_TYPE_WEIGHTS), weights=list(EVENT_TYPE_WEIGHTS.values()))[0]
        session = self._session_for(event_type in LOGIN_REQUIRED_EVENT_TYPES)
        if session.last_product is not None and rng.random() < 0.5:
            product = session.last_product
        else:
            product = rng.choices(range(1, self.n_products + 1), cum_weights=self._product_cum)[0]
        session.last_product = product
        user = session.user_id
        return {
            "event_id": self._uuid(),
            "user_id": None if user is None else str(user),
            "session_id": session.session_id,
            "event_type": event_type,
            "product_id": str(product),
            "category": self.product_categories[product],
            "price": f"{self.product_prices[product]:.2f}",
            "quantity": str(rng.randint(1, 5) if event_type in QUANTITY_EVENT_TYPES else 1),
            "user_segment": None if user is None else self.user_segments[user],
            "event_time": (now - timedelta(seconds=rng.uniform(0.0, 5.0))).strftime(EVENT_TIME_FORMAT),
            "device_type": session.device_type,
            "browser": session.browser,
            "geo_country": session.geo_country,
            "geo_city": session.geo_city,
            "referrer": session.referrer,
            "campaign_id": session.campaign_id,
        }

    def _break(self, row: Row, kind: str) -> None:
        rng = self.rng
        if kind == "negative_price":
            row["price"] = f"-{row['price']}"
        elif kind == "price_above_max":
            row["price"] = f"{self.max_price + rng.uniform(1.0, 5000.0):.2f}"
        elif kind == "zero_quantity":
            row["quantity"] = "0"
        elif kind == "non_numeric_price":
            row["price"] = "abc"
        elif kind == "unparseable_event_time":
            row["event_time"] = "not-a-date"
        elif kind == "unknown_event_type":
            row["event_type"] = rng.choice(UNKNOWN_EVENT_TYPES)
        elif kind == "purchase_without_user":
            row.update(event_type="purchase", user_id=None, user_segment=None, quantity=str(rng.randint(1, 5)))
        elif kind == "empty_event_id":
            row["event_id"] = None
        elif kind == "non_uuid_event_id":
            row["event_id"] = f"evt-{rng.getrandbits(32):08x}"
        elif kind == "zero_product_id":
            row["product_id"] = "0"
        else:
            raise ValueError(f"unknown invalid kind {kind!r} (known: {', '.join(INVALID_KINDS)})")


def write_events_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, str | None]],
                     version: SchemaVersion | str, *, bom_crlf: bool = False) -> None:
    """Write ``rows`` (canonical dicts) as a CSV of ``version``: its header, then its columns in order.

    A ``StructuralRow`` is written as its raw damaged record. ``bom_crlf``: UTF-8 BOM and CRLF line endings.
    """
    columns = _version(version).columns
    terminator = "\r\n" if bom_crlf else "\n"
    with open(path, "w", encoding="utf-8-sig" if bom_crlf else "utf-8", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL, lineterminator=terminator)
        writer.writerow(columns)
        for row in rows:
            if isinstance(row, StructuralRow):
                handle.write(row.record(columns) + terminator)
            else:
                writer.writerow([row.get(column) for column in columns])
        handle.flush()
        os.fsync(handle.fileno())


def _create_atomically(output_dir: str | os.PathLike[str], now: datetime | None,
                       write: Callable[[Path], None]) -> Path:
    """Create ``output_dir/events_<UTC stamp>_<6 hex>.csv``: ``write`` fills a dot-prefixed temp file, renamed."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = _utc_naive(now or _utc_now()).strftime("%Y%m%d_%H%M%S")
    final = directory / f"events_{stamp}_{secrets.token_hex(3)}.csv"
    while final.exists():
        final = directory / f"events_{stamp}_{secrets.token_hex(3)}.csv"
    temp = directory / f".{final.name}.tmp"
    try:
        write(temp)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return final


def write_batch_file(rows: Iterable[Mapping[str, str | None]], version: SchemaVersion | str,
                     output_dir: str | os.PathLike[str], now: datetime | None = None, *,
                     bom_crlf: bool = False) -> Path:
    """Atomically create ``output_dir/events_<UTC stamp>_<6 hex>.csv`` (dot-prefixed temp file + rename)."""
    def write(temp: Path) -> None:
        if bom_crlf:
            write_events_csv(temp, rows, version, bom_crlf=True)
        else:
            write_events_csv(temp, rows, version)

    return _create_atomically(output_dir, now, write)


def write_raw_file(content: bytes, output_dir: str | os.PathLike[str], now: datetime | None = None) -> Path:
    """Atomically create a file named like ``write_batch_file``'s holding exactly ``content`` (a bad file)."""
    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())

    return _create_atomically(output_dir, now, write)


def parse_version_mix(text: str) -> dict[str, float]:
    """Parse ``"v1=0.1,v2=0.3,v3=0.6"`` into weights; raise ValueError on unknown versions or bad weights."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in VERSIONS:
            raise ValueError(f"bad version-mix entry {part!r}; expected e.g. {DEFAULT_VERSION_MIX}")
        value = float(weight)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"version-mix weight of {name} must be a non-negative number, got {weight!r}")
        mix[name] = value
    if sum(mix.values()) <= 0:
        raise ValueError(f"version-mix {text!r} gives every version zero weight")
    return mix


def _argument(convert: Callable[[str], object]) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return convert(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text} is not a ratio between 0 and 1")
    return value


ROW_RATIOS = ("invalid", "duplicate", "late", "structural", "awkward")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.generator", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--output-dir", type=Path, default=None, help="default: LANDING_DIR from settings")
    add("--rate-seconds", type=float, default=5.0, help="seconds between files (default 5)")
    add("--batch-size", type=int, default=100, help="events per file (default 100)")
    add("--seed", type=int, default=None, help="seed for reproducible events (default: random)")
    add("--version-mix", type=_argument(parse_version_mix), default=parse_version_mix(DEFAULT_VERSION_MIX),
        help=f"schema version weights (default {DEFAULT_VERSION_MIX})")
    for name in ROW_RATIOS:
        add(f"--{name}-ratio", type=_argument(_ratio), default=0.0, help=f"share of {name} rows (default 0)")
    for name, what in (("bom-crlf", "files written with a UTF-8 BOM and CRLF line endings"),
                       ("bad-file", f"batches that are one unreadable file ({', '.join(BAD_FILE_KINDS)})")):
        add(f"--{name}-ratio", type=_argument(_ratio), default=0.0, help=f"share of {what} (default 0)")
    add("--batches", type=int, default=0, help="number of files to write, 0 = until SIGINT/SIGTERM")
    return parser


def _configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        formatter = logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S")
        formatter.converter = time.gmtime  # same clock as the file names and event times (UTC)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.batches < 0 or args.rate_seconds < 0:
        parser.error("--batch-size must be >= 1, --batches >= 0 and --rate-seconds >= 0")
    if sum(getattr(args, f"{name}_ratio") for name in ROW_RATIOS) > 1.0 + 1e-9:
        parser.error(" + ".join(f"--{name}-ratio" for name in ROW_RATIOS) + " must not exceed 1")
    _configure_logging()
    if args.output_dir is None:
        from include.settings import get_settings

        args.output_dir = get_settings().landing_dir
    generator = EventGenerator(args.seed, invalid_ratio=args.invalid_ratio,
                               duplicate_ratio=args.duplicate_ratio, late_ratio=args.late_ratio,
                               structural_ratio=args.structural_ratio, awkward_ratio=args.awkward_ratio,
                               bom_crlf_ratio=args.bom_crlf_ratio, bad_file_ratio=args.bad_file_ratio)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():  # second signal: give up on the current file too (its temp file is removed)
            raise KeyboardInterrupt
        logger.info("Received %s, stopping after the current file", signal.Signals(signum).name)
        stop.set()

    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[signum] = signal.signal(signum, request_stop)
    logger.info("Writing %d-event batches every %gs to %s (seed %d, version mix %s)", args.batch_size,
                args.rate_seconds, args.output_dir, generator.seed, args.version_mix)
    written = 0
    try:
        next_due = time.monotonic()
        while not stop.is_set() and (args.batches == 0 or written < args.batches):
            version = generator.pick_version(args.version_mix)
            rows = generator.generate_batch(args.batch_size, version)
            path = generator.write_batch(rows, version, args.output_dir)
            written += 1
            report = generator.last_report
            if report.bad_file:
                logger.info("Generated batch %d: bad file (%s) → %s (%s)", written, report.bad_file, path.name,
                            version.name)
            else:
                extras = "".join(f", {label}={n}" for label, n in (
                    ("invalid", sum(report.invalid.values())), ("duplicates", report.duplicates),
                    ("late", report.late), ("awkward", report.awkward),
                ) if n) + (", BOM+CRLF" if report.bom_crlf else "")
                logger.info("Generated batch %d: %d events → %s (%s%s)", written, len(rows), path.name,
                            version.name, extras)
            if args.batches and written >= args.batches:
                break
            next_due += args.rate_seconds
            stop.wait(max(0.0, next_due - time.monotonic()))
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    logger.info("Stopped after %d file(s)", written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
