"""Schema registry: the three CSV layouts of the event feed and how each upcasts to the canonical one.

| version | columns |
| --- | --- |
| v1 | event_id, user_id, event_type, product_id, price, event_time |
| v2 | v1 + session_id, category, quantity, user_segment (in the order below) |
| v3 | v2 + device_type, browser, geo_country, geo_city, referrer, campaign_id (canonical) |

The versions derive from the column table (``include.contract.columns``: each feed column says since which
version it exists).

A file's version is decided by its header line alone (an exact match of the column names, after a UTF-8 BOM
is stripped and a CRLF ending is removed). ``migrate`` fills the columns a version lacks with the defaults
in ``MIGRATION_DEFAULTS``: ``quantity`` becomes 1 (a v1 event is one item) and every other missing column
stays NULL ("not recorded"), so nothing is invented that an analyst could mistake for data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from include.contract.columns import COLUMNS, FEED_COLUMNS

EVENT_TYPES: tuple[str, ...] = ("view", "search", "add_to_cart", "remove_from_cart", "wishlist", "purchase")
# Business rule of the original system: these actions need a logged-in user.
LOGIN_REQUIRED_EVENT_TYPES: tuple[str, ...] = ("add_to_cart", "remove_from_cart", "wishlist", "purchase")
CATEGORIES: tuple[str, ...] = (
    "electronics", "clothing", "home", "books", "sports", "beauty", "toys", "grocery",
)
USER_SEGMENTS: tuple[str, ...] = ("new", "regular", "premium", "vip")
DEVICE_TYPES: tuple[str, ...] = ("desktop", "mobile", "tablet")
BROWSERS: tuple[str, ...] = ("chrome", "firefox", "safari", "edge", "app")
REFERRERS: tuple[str, ...] = ("direct", "google", "facebook", "instagram", "email", "affiliate")


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    columns: tuple[str, ...]

    @property
    def header(self) -> str:
        return ",".join(self.columns)


def _version(name: str) -> SchemaVersion:
    """A version's columns: the feed columns of the column table that existed by then, in canonical order."""
    return SchemaVersion(name, tuple(c.name for c in COLUMNS if c.role == "feed" and c.since <= name))


V1, V2, V3 = _version("v1"), _version("v2"), _version("v3")
VERSIONS: dict[str, SchemaVersion] = {v.name: v for v in (V1, V2, V3)}
CANONICAL = V3
CANONICAL_COLUMNS = FEED_COLUMNS

# Value a column takes when the file's version does not carry it (as CSV text, before typing).
MIGRATION_DEFAULTS: Mapping[str, str | None] = {
    column: ("1" if column == "quantity" else None) for column in CANONICAL_COLUMNS
}

_BY_HEADER: dict[tuple[str, ...], SchemaVersion] = {v.columns: v for v in VERSIONS.values()}


class UnknownSchemaVersion(ValueError):
    """A header matches no registered version; the file must be quarantined, not guessed at."""


def detect_version(header_fields: Sequence[str]) -> SchemaVersion:
    """Return the version whose columns are exactly ``header_fields`` (BOM and surrounding spaces ignored)."""
    cleaned = [f.strip() for f in header_fields]
    if cleaned:
        cleaned[0] = cleaned[0].lstrip("\ufeff").strip()
    try:
        return _BY_HEADER[tuple(cleaned)]
    except KeyError:
        preview = ",".join(cleaned)[:200]
        raise UnknownSchemaVersion(
            f"header {preview!r} matches no schema version (known: "
            + "; ".join(f"{v.name}={v.header}" for v in VERSIONS.values())
            + ")"
        ) from None


def migrate(record: Mapping[str, str | None], version: SchemaVersion) -> dict[str, str | None]:
    """Upcast one record of ``version`` to the canonical column set, filling documented defaults."""
    return {
        column: record[column] if column in version.columns else MIGRATION_DEFAULTS[column]
        for column in CANONICAL_COLUMNS
    }
