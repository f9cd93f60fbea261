"""Backfills in chunks: a row of pipeline_backfill_ledger is a chunk one run re-derives, for a request.

Revision 0002 of the analytics schema, after 0001 (include/publish/coverage.py). A chunk is claimed by the run
that covers it (staged_at NULL until its Spark job has staged it), for a request: an Airflow backfill, or a
window named on the Trigger form, whose reason every move records.
"""

from __future__ import annotations

from include.storage.migrations import execute_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Run as PostgreSQL reads it, in one transaction with every other pending revision: all of them apply, or none.
SQL = """
ALTER TABLE pipeline_backfill_ledger ADD COLUMN IF NOT EXISTS request_key TEXT;
ALTER TABLE pipeline_backfill_ledger ADD COLUMN IF NOT EXISTS request_start TIMESTAMPTZ;
ALTER TABLE pipeline_backfill_ledger ADD COLUMN IF NOT EXISTS request_end TIMESTAMPTZ;
ALTER TABLE pipeline_backfill_ledger ADD COLUMN IF NOT EXISTS reason TEXT;
ALTER TABLE pipeline_backfill_ledger ALTER COLUMN staged_at DROP NOT NULL;
ALTER TABLE pipeline_backfill_ledger ALTER COLUMN staged_at DROP DEFAULT;
CREATE INDEX IF NOT EXISTS ix_pipeline_backfill_ledger_request ON pipeline_backfill_ledger (request_key, window_start);
-- why rows moved: the reason given on the Trigger form, or which backfill moved them
ALTER TABLE dead_letter_moves ADD COLUMN IF NOT EXISTS reason TEXT;
"""


def upgrade() -> None:
    execute_sql(SQL)


def downgrade() -> None:
    raise NotImplementedError("the analytics schema only moves forward: undo a change with a new revision")
