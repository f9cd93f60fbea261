"""The column table: every column an event has, declared once. Every other column list derives from it.

| role | what it is |
| --- | --- |
| ``feed`` | a CSV column of the feed; ``since`` is the first schema version that carries it |
| ``derived`` | computed by the ingest (``total_amount``, ``is_late_arrival``) |
| ``lineage`` | where the row came from (schema version, file, line) |
| ``staging`` | kept only until publish (the raw line and the reasons it could not be typed) |
| ``rescued`` | the values of columns the contract does not know, per row, as JSON (``rescued_data``) |

A feed column is ``required`` when a file without it cannot be read (the v1 columns); every other feed
column may be missing from a file and is then NULL (or its upcast default).

The order is the order of ``staging_events``' event columns and of ``ecommerce_events``; the feed
columns in this order are the canonical (latest) CSV layout. ``include/storage/sql/schema.sql`` declares
the same columns with these types, and ``tests/integration/test_schema.py`` holds the two together.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str          # PostgreSQL type, as information_schema spells it
    role: str              # feed | derived | lineage | staging | rescued
    since: str | None = None  # feed columns: the first schema version that has it
    required: bool = False    # feed columns: a file without it is quarantined


COLUMNS: tuple[Column, ...] = (
    Column("event_id", "text", "feed", "v1", required=True),
    Column("user_id", "integer", "feed", "v1", required=True),
    Column("session_id", "text", "feed", "v2"),
    Column("event_type", "text", "feed", "v1", required=True),
    Column("product_id", "integer", "feed", "v1", required=True),
    Column("category", "text", "feed", "v2"),
    Column("price", "numeric(12,2)", "feed", "v1", required=True),
    Column("quantity", "integer", "feed", "v2"),
    Column("total_amount", "numeric(14,2)", "derived"),
    Column("user_segment", "text", "feed", "v2"),
    Column("event_time", "timestamp with time zone", "feed", "v1", required=True),
    Column("device_type", "text", "feed", "v3"),
    Column("browser", "text", "feed", "v3"),
    Column("geo_country", "text", "feed", "v3"),
    Column("geo_city", "text", "feed", "v3"),
    Column("referrer", "text", "feed", "v3"),
    Column("campaign_id", "text", "feed", "v3"),
    Column("is_late_arrival", "boolean", "derived"),
    Column("schema_version", "text", "lineage"),
    Column("source_file", "text", "lineage"),
    Column("source_line", "integer", "lineage"),
    Column("raw_data", "text", "staging"),
    Column("parse_errors", "text", "staging"),
    Column("rescued_data", "jsonb", "rescued"),
)
BY_NAME = {column.name: column for column in COLUMNS}

FEED_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.role == "feed")
# What the ingest stages per row, in COPY order (the staging key columns come first, added by the job).
STAGED_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS)
# What ecommerce_events stores of a staged row (the run/batch lineage is added by the publish).
EVENT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.role != "staging")
# What the parser hands to Spark: the feed columns as text, plus lineage and the staging-only columns.
PARSED_COLUMNS: tuple[str, ...] = FEED_COLUMNS + tuple(
    c.name for c in COLUMNS if c.role in ("lineage", "staging", "rescued"))
# Feed columns Spark must cast from text (the rest stay text).
TYPED_FEED_COLUMNS: dict[str, str] = {c.name: c.sql_type for c in COLUMNS if c.role == "feed" and c.sql_type != "text"}
# Key of a staged row and of the Spark batch it came in.
STAGING_KEY_COLUMNS: tuple[str, ...] = ("staging_row_id", "spark_query_id", "spark_batch_id", "spark_partition")
# audit_candidates / revalidation_candidates: a staged row without its raw line and parse errors.
CANDIDATE_COLUMNS: tuple[str, ...] = STAGING_KEY_COLUMNS + EVENT_COLUMNS
