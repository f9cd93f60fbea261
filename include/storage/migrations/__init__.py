"""The analytics schema, versioned: Alembic revisions of raw SQL, applied by the start-up and `make migrate`.

| file | what it is |
| --- | --- |
| ``versions/NNNN_*.py`` | one revision each, numbered in order: its SQL and the revision it follows |
| ``versions/0001_baseline.sql`` | the baseline: the schema of the last release before versioning (frozen) |
| ``runner.py`` | ``upgrade_schema``: every pending revision, in one transaction, under the schema lock |
| ``columns.py`` | the contract file's columns as migrations: which revision added which, the SQL of new ones |
| ``authoring.py`` | writes a new revision: blank (``make migration NAME=...``) or the contract's new columns |
| ``env.py``, ``script.py.mako`` | Alembic's environment and the template of a revision |

The version table ``pipeline_schema_version`` (Alembic's layout: one row, ``version_num``) in the analytics
database records the revision the schema is at. docs/schema.md is the workflow. Nothing here goes to the Spark
executors (``include/airflow/packaging.py`` leaves the package out of the code zip).
"""

from __future__ import annotations


class SchemaError(RuntimeError):
    """The analytics schema cannot be brought to this code's revision; the message says what to do."""


def execute_sql(sql: str) -> None:
    """Run ``sql`` (one statement or many) in the migration's transaction, exactly as written.

    It goes to psycopg without parameters, so nothing in it is read as a placeholder: Alembic's ``op.execute``
    would take `` :name`` for a bind parameter of SQLAlchemy, and ``exec_driver_sql`` a ``%`` for psycopg's."""
    from alembic import op

    if not any(line.strip() and not line.strip().startswith("--") for line in sql.splitlines()):
        # run, an empty revision would be recorded as done, and the SQL written into it later never run
        raise SchemaError("a revision without SQL: write its statements before it runs (docs/schema.md)")
    op.get_bind().connection.driver_connection.execute(sql)
