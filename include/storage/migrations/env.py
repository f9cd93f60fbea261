"""Alembic's environment for the analytics schema: the revisions run on the connection ``runner.upgrade_schema``
hands over, inside its transaction and under its schema lock, and the version table is the project's own.

There is no alembic.ini and no offline (``--sql``) mode: `make migrate`, or the start-up, runs them.
"""

from __future__ import annotations

from alembic import context

from include.storage.migrations import SchemaError
from include.storage.migrations.runner import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise SchemaError("the analytics schema's revisions run through `make migrate` (include/storage/migrations/"
                      "runner.py upgrade_schema), which holds the schema lock; not through the alembic command")
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    # all pending revisions in the runner's one transaction: an upgrade is applied whole or not at all
    transaction_per_migration=False,
    on_version_apply=context.config.attributes.get("on_version_apply"),
)
with context.begin_transaction():
    context.run_migrations()
