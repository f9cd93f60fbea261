"""The baseline: the analytics schema as the last release before versioned migrations left it.

Its SQL (``0001_baseline.sql``) is that release's schema script, frozen, and the view its start-up built from the
column table. Idempotent: it creates a new database, and adopts a database of any release before versioning.
"""

from __future__ import annotations

from pathlib import Path

from include.storage.migrations import execute_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
# The contract file's columns (name: type) this revision adds: the start-up checks that every column of
# include/contract/contract.yaml has the revision that added it.
contract_columns = {
    "event_id": "text", "user_id": "integer", "session_id": "text", "event_type": "text", "product_id": "integer",
    "category": "text", "price": "numeric(12,2)", "quantity": "integer", "total_amount": "numeric(14,2)",
    "user_segment": "text", "event_time": "timestamp with time zone", "device_type": "text", "browser": "text",
    "geo_country": "text", "geo_city": "text", "referrer": "text", "campaign_id": "text",
    "is_late_arrival": "boolean", "schema_version": "text", "source_file": "text", "source_line": "integer",
    "raw_data": "text", "parse_errors": "text", "rescued_data": "jsonb", "delivery_id": "bigint",
}

SQL = Path(__file__).with_suffix(".sql")


def upgrade() -> None:
    execute_sql(SQL.read_text())


def downgrade() -> None:
    raise NotImplementedError("the analytics schema only moves forward: undo a change with a new revision")
