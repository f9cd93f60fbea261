"""${message}

Revision ${up_revision} of the analytics schema, after ${down_revision}. docs/schema.md: how to write one.
"""

from __future__ import annotations

from include.storage.migrations import execute_sql

revision = "${up_revision}"
down_revision = ${'"%s"' % down_revision if down_revision else None}
branch_labels = None
depends_on = None
% if contract_columns:
# The contract file's columns (name: type) this revision adds: the start-up checks that every column of
# include/contract/contract.yaml has the revision that added it.
contract_columns = ${contract_columns}
% endif

# Run as PostgreSQL reads it, in one transaction with every other pending revision: all of them apply, or none.
SQL = """
${sql}
"""


def upgrade() -> None:
    execute_sql(SQL)


def downgrade() -> None:
    raise NotImplementedError("the analytics schema only moves forward: undo a change with a new revision")
