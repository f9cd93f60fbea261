"""Bring the analytics schema to this code's revision: what the start-up (``scripts.pipeline init``, so `make run`
and `make once`) and `make migrate` run, as the owner of the schema.

``upgrade_schema`` first checks that every column of the contract file has its migration (no DDL at runtime),
then, in one transaction under the schema lock, applies every pending revision: two starts at once apply them
once, the second waits and finds nothing to do. A database of a release before versioning has the tables and no
version table: the baseline revision adopts it (its script is what every start of those releases ran).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql

from include.names import SCHEMA_LOCK
from include.storage.locks import xact_lock
from include.storage.migrations import SchemaError

MIGRATIONS_DIR = Path(__file__).resolve().parent
# The version table, in the analytics database: named for the project, so that it never meets Airflow's own
# `alembic_version` should the metadata and the analytics schema share a database.
VERSION_TABLE = "pipeline_schema_version"
BASELINE = "0001"

# Alembic's `op` and `context` are module-level proxies: one migration at a time per process.
_ONE_AT_A_TIME = threading.Lock()


@dataclass(frozen=True)
class Upgrade:
    """What ``upgrade_schema`` found and did."""

    before: str | None           # the revision the database was at (None: no version table)
    after: str                   # the revision it is at now
    applied: tuple[str, ...]     # the revisions run, oldest first
    adopted: bool = False        # a database of a release before versioning (tables, no version table)

    def describe(self) -> str:
        if not self.applied:
            return f"analytics schema up to date (revision {self.after})"
        steps = ", ".join(self.applied)
        if self.adopted:
            return (f"analytics schema of a release before versioning adopted by the baseline; "
                    f"now at revision {self.after} (ran {steps})")
        if self.before is None:
            return f"analytics schema created at revision {self.after} (ran {steps})"
        return f"analytics schema migrated from revision {self.before} to {self.after} (ran {steps})"


def alembic_config() -> Config:
    """Alembic's configuration, without an alembic.ini: the script directory is this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def upgrade_schema(conninfo: str, target: str = "head") -> Upgrade:
    """Apply every pending revision up to ``target`` to the database of ``conninfo`` (a libpq string; every
    keyword it holds, ``sslmode`` and ``options`` too, reaches the connection). Raises ``SchemaError`` when the
    contract file has columns no revision adds, when the database is at a revision this code does not know, or
    when a revision fails (then nothing of this upgrade is applied)."""
    from include.storage.migrations.columns import unmigrated_columns_problem

    script = script_directory()
    if problem := unmigrated_columns_problem(script):
        raise SchemaError(problem)
    applied: list[str] = []
    config = alembic_config()
    config.attributes["on_version_apply"] = lambda *, step, **_: applied.append(step.up_revision_id)
    with _ONE_AT_A_TIME, _alembic_connection(conninfo) as connection:
        raw = connection.connection.driver_connection
        xact_lock(raw, SCHEMA_LOCK)  # held to the end of the transaction: a second start waits here
        before = current_revision(raw)
        known = {revision.revision for revision in script.walk_revisions()}
        if before is not None and before not in known:
            raise SchemaError(
                f"the analytics database is at schema revision {before}, which this code does not have (it has "
                f"{script.get_current_head()}): a newer release migrated it. Run that release, or this one against "
                "a database restored from before that upgrade.")
        adopted = before is None and _exists(raw, "ecommerce_events")
        config.attributes["connection"] = connection
        try:
            command.upgrade(config, target)
        except Exception as error:
            failed = _next_revision(script, before, applied, target)
            raise SchemaError(f"schema revision {failed} failed, and nothing of this upgrade was applied "
                              f"(one transaction; the database stays at {before or 'no revision'}): {error}") from error
        after = current_revision(raw)
    return Upgrade(before, after, tuple(applied), adopted)


@contextmanager
def _alembic_connection(conninfo: str) -> Iterator:
    """One SQLAlchemy connection (psycopg 3) in a transaction that commits when the block ends. The engine
    connects through psycopg with ``conninfo`` as it is, never through a URL that would have to quote it."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


def current_revision(conn: psycopg.Connection) -> str | None:
    """The revision the database's version table records; None when it has none."""
    if not _exists(conn, VERSION_TABLE):
        return None
    row = conn.execute(sql.SQL("SELECT version_num FROM {}").format(sql.Identifier(VERSION_TABLE))).fetchone()
    return row[0] if row else None


def _exists(conn: psycopg.Connection, relation: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,)).fetchone()[0]


def _next_revision(script: ScriptDirectory, before: str | None, applied: list[str], target: str) -> str:
    """The revision an upgrade from ``before`` was running when it failed, after ``applied``."""
    pending = [revision.revision for revision in reversed(list(script.iterate_revisions(target, before or "base")))]
    return next((revision for revision in pending if revision not in applied), target)
