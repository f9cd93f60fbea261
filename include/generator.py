"""Synthetic e-commerce event feed: one CSV file per batch, dropped atomically into the landing directory.

Usage::

    python -m include.generator [--output-dir DIR] [--rate-seconds 5] [--batch-size 100] [--seed N]
        [--version-mix v1=0.1,v2=0.3,v3=0.6] [--invalid-ratio 0.0] [--duplicate-ratio 0.0]
        [--late-ratio 0.0] [--batches 0]

Every ``--rate-seconds`` a file ``events_<YYYYmmdd_HHMMSS>_<6 hex>.csv`` (UTC stamp) of ``--batch-size``
events is written. Its schema version (see ``include.schema_registry``) is drawn from ``--version-mix`` and
its header is that version's columns. The file is written as a dot-file (``.events_....csv.tmp``, which
Spark ignores) and then renamed, so no reader sees half a file. ``--batches 0`` runs until SIGINT/SIGTERM,
which stop it after the current file. ``--output-dir`` defaults to LANDING_DIR.

Deliberate defects, as fractions of each batch (stochastically rounded to whole rows): ``--invalid-ratio``
rows carry exactly one defect from ``INVALID_KINDS``; ``--duplicate-ratio`` rows are exact copies of an
earlier valid row (of this batch or the previous one); ``--late-ratio`` rows have an event_time 10-120
minutes old. ``EventGenerator.last_report`` says, row by row, what was injected.
"""

from __future__ import annotations

import argparse
import csv
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

from include.schema_registry import (
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
    """What one generated batch contains: ``tags[i]`` describes data row ``i`` of the batch/file."""

    version: str
    tags: tuple[str, ...]  # "valid", "late", "duplicate" or "invalid:<kind>"

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
        n_users: int = 5000, n_products: int = 2000,
    ) -> None:
        ratios = {"invalid_ratio": invalid_ratio, "duplicate_ratio": duplicate_ratio, "late_ratio": late_ratio}
        for name, ratio in ratios.items():
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {ratio}")
        if sum(ratios.values()) > 1.0 + 1e-9:
            raise ValueError("invalid_ratio + duplicate_ratio + late_ratio must not exceed 1")
        if max_price is None:
            from include.settings import get_settings

            max_price = get_settings().max_price
        self.seed = seed if seed is not None else secrets.randbits(32)
        self.invalid_ratio, self.duplicate_ratio, self.late_ratio = invalid_ratio, duplicate_ratio, late_ratio
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
    ) -> list[Row]:
        """``size`` events as canonical (v3-keyed) dicts of strings/None; sets ``last_report``."""
        version = _version(version)
        now = _utc_naive(now or self.clock())
        rng = self.rng
        n_dup = min(self._count(size * self.duplicate_ratio), size)
        n_base = size - n_dup
        n_invalid = min(self._count(size * self.invalid_ratio), n_base)
        n_late = min(self._count(size * self.late_ratio), n_base - n_invalid)
        rows = [self._event(now) for _ in range(n_base)]
        tags = ["valid"] * n_base
        positions = rng.sample(range(n_base), n_invalid + n_late)
        for pos, kind in zip(positions[:n_invalid], self._kinds(version, n_invalid)):
            self._break(rows[pos], kind)
            tags[pos] = f"invalid:{kind}"
        for pos in positions[n_invalid:]:
            rows[pos]["event_time"] = (now - timedelta(minutes=rng.uniform(*LATE_MINUTES))).strftime(
                EVENT_TIME_FORMAT)
            tags[pos] = "late"
        valid = [row for row, tag in zip(rows, tags) if tag == "valid"]
        pool = self._previous_valid + valid
        for _ in range(n_dup if pool else 0):
            source = rng.choice(pool)
            index = next((i for i, row in enumerate(rows) if row is source), -1)
            pos = rng.randint(index + 1, len(rows))
            rows.insert(pos, dict(source))
            tags.insert(pos, "duplicate")
        self._previous_valid = valid
        self.last_report = BatchReport(version.name, tuple(tags))
        return rows

    def write_batch(self, rows: Iterable[Mapping[str, str | None]], version: SchemaVersion | str,
                    output_dir: str | os.PathLike[str]) -> Path:
        """Write ``rows`` atomically as a new ``events_*.csv`` file of ``version`` in ``output_dir``."""
        return write_batch_file(rows, version, output_dir, now=self.clock())

    # ----------------------------------------------------------------- internals
    def _count(self, expected: float) -> int:
        expected = round(expected, 9)
        whole = math.floor(expected)
        return whole + (1 if self.rng.random() < expected - whole else 0)

    def _kinds(self, version: SchemaVersion, n: int) -> list[str]:
        kinds, out = list(invalid_kinds_for(version)), []
        while len(out) < n:  # shuffled rounds: every kind appears before any repeats
            self.rng.shuffle(kinds)
            out.extend(kinds)
        return out[:n]

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
                     version: SchemaVersion | str) -> None:
    """Write ``rows`` (canonical dicts) as a CSV of ``version``: its header, then its columns in order."""
    columns = _version(version).columns
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([row.get(column) for column in columns] for row in rows)
        handle.flush()
        os.fsync(handle.fileno())


def write_batch_file(rows: Iterable[Mapping[str, str | None]], version: SchemaVersion | str,
                     output_dir: str | os.PathLike[str], now: datetime | None = None) -> Path:
    """Atomically create ``output_dir/events_<UTC stamp>_<6 hex>.csv`` (dot-prefixed temp file + rename)."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = _utc_naive(now or _utc_now()).strftime("%Y%m%d_%H%M%S")
    final = directory / f"events_{stamp}_{secrets.token_hex(3)}.csv"
    while final.exists():
        final = directory / f"events_{stamp}_{secrets.token_hex(3)}.csv"
    temp = directory / f".{final.name}.tmp"
    try:
        write_events_csv(temp, rows, version)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return final


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


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m include.generator", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--output-dir", type=Path, default=None, help="default: LANDING_DIR from settings")
    add("--rate-seconds", type=float, default=5.0, help="seconds between files (default 5)")
    add("--batch-size", type=int, default=100, help="events per file (default 100)")
    add("--seed", type=int, default=None, help="seed for reproducible events (default: random)")
    add("--version-mix", type=_argument(parse_version_mix), default=parse_version_mix(DEFAULT_VERSION_MIX),
        help=f"schema version weights (default {DEFAULT_VERSION_MIX})")
    for name in ("invalid", "duplicate", "late"):
        add(f"--{name}-ratio", type=_argument(_ratio), default=0.0, help=f"share of {name} rows (default 0)")
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
    if args.invalid_ratio + args.duplicate_ratio + args.late_ratio > 1.0 + 1e-9:
        parser.error("--invalid-ratio + --duplicate-ratio + --late-ratio must not exceed 1")
    _configure_logging()
    if args.output_dir is None:
        from include.settings import get_settings

        args.output_dir = get_settings().landing_dir
    generator = EventGenerator(args.seed, invalid_ratio=args.invalid_ratio,
                               duplicate_ratio=args.duplicate_ratio, late_ratio=args.late_ratio)
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
            extras = "".join(f", {label}={n}" for label, n in (
                ("invalid", sum(report.invalid.values())), ("duplicates", report.duplicates), ("late", report.late),
            ) if n)
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
