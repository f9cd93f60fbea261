"""Schema registry: the three CSV layouts of the event feed and how each upcasts to the canonical one.

| version | columns |
| --- | --- |
| v1 | event_id, user_id, event_type, product_id, price, event_time |
| v2 | v1 + session_id, category, quantity, user_segment (in the order below) |
| v3 | v2 + device_type, browser, geo_country, geo_city, referrer, campaign_id (canonical) |

The versions derive from the contract file (``include/contract/contract.yaml``: the versions in order, and
each feed column says since which version it exists); so do the value sets below.

A file's columns are matched **by name** (``match_header``): case and surrounding blanks are ignored (and a
UTF-8 BOM), the order is free. A file without one of the required columns (``REQUIRED_HEADER_COLUMNS``) is
quarantined with a reason naming them; a header that names a column twice is quarantined too. Optional
columns the file lacks take the defaults in ``MIGRATION_DEFAULTS``: ``quantity`` becomes 1 (a v1 event is
one item) and every other missing column stays NULL ("not recorded"), so nothing is invented that an
analyst could mistake for data. Columns the contract does not know are kept per row as ``rescued_data``.
The version a row records is the newest version among the known columns the file carries (a v3 export
without its marketing columns is still v3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from include.contract.columns import COLUMNS, CONTRACT, FEED_COLUMNS, REQUIRED_HEADER_COLUMNS

_DOMAINS = CONTRACT["domains"]
EVENT_TYPES: tuple[str, ...] = _DOMAINS["event_type"]
LOGIN_REQUIRED_EVENT_TYPES: tuple[str, ...] = _DOMAINS["login_required_event_type"]
CATEGORIES: tuple[str, ...] = _DOMAINS["category"]
USER_SEGMENTS: tuple[str, ...] = _DOMAINS["user_segment"]
DEVICE_TYPES: tuple[str, ...] = _DOMAINS["device_type"]
BROWSERS: tuple[str, ...] = _DOMAINS["browser"]
REFERRERS: tuple[str, ...] = _DOMAINS["referrer"]


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    columns: tuple[str, ...]

    @property
    def header(self) -> str:
        return ",".join(self.columns)


def _version(name: str) -> SchemaVersion:
    """A version's columns: the feed columns of the column table that existed by then, in canonical order."""
    order = CONTRACT["versions"]
    return SchemaVersion(name, tuple(c.name for c in COLUMNS
                                     if c.role == "feed" and order.index(c.since) <= order.index(name)))


VERSIONS: dict[str, SchemaVersion] = {name: _version(name) for name in CONTRACT["versions"]}
V1, V2, V3 = VERSIONS["v1"], VERSIONS["v2"], VERSIONS["v3"]
VERSION_ORDER: tuple[str, ...] = tuple(VERSIONS)
CANONICAL = VERSIONS[VERSION_ORDER[-1]]
CANONICAL_COLUMNS = FEED_COLUMNS
_FEED = {c.name for c in COLUMNS if c.role == "feed"}
_SINCE = {c.name: c.since for c in COLUMNS if c.role == "feed"}

# Value a column takes when the file does not carry it (as CSV text, before typing): its contract default.
MIGRATION_DEFAULTS: Mapping[str, str | None] = {c.name: c.default for c in COLUMNS if c.role == "feed"}


class UnknownSchemaVersion(ValueError):
    """A header the contract cannot read (a required column missing, a name twice); the file must be
    quarantined, not guessed at."""



@dataclass(frozen=True)
class HeaderMatch:
    """How a file's header maps onto the contract."""

    version: SchemaVersion
    positions: dict[str, int]        # contract column -> field index in the file
    rescued: tuple[tuple[str, int], ...]  # (column name as written, field index) of columns the contract lacks
    width: int                       # fields per record


def _clean(name: str) -> str:
    return name.lstrip("\ufeff").strip()


def match_header(header_fields: Sequence[str]) -> HeaderMatch:
    """Map a header onto the contract by column name (case, blanks and a BOM ignored; any order)."""
    positions: dict[str, int] = {}
    rescued: list[tuple[str, int]] = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(header_fields):
        written = _clean(raw)
        key = written.lower()
        if key in seen:
            raise UnknownSchemaVersion(f"header names column {written!r} twice (fields {seen[key]} and {index + 1})")
        seen[key] = str(index + 1)
        if key in _FEED:
            positions[key] = index
        else:
            rescued.append((written or f"_column_{index + 1}", index))
    missing = [column for column in REQUIRED_HEADER_COLUMNS if column not in positions]
    if missing:
        preview = ",".join(_clean(f) for f in header_fields)[:200]
        raise UnknownSchemaVersion(
            f"header {preview!r} lacks the required column(s) {', '.join(missing)} "
            "(columns are matched by name in any order; only these may not be missing)"
        )
    newest = max(VERSION_ORDER.index(_SINCE[column]) for column in positions)
    return HeaderMatch(VERSIONS[VERSION_ORDER[newest]], positions, tuple(rescued), len(header_fields))

