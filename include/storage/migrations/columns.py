"""The contract file's columns as migrations: the tables gain a column only through a revision.

Every column of ``include/contract/contract.yaml`` is in the tables that carry a row's contract columns because a
revision added it: the baseline those of its day, a later revision each column the file gained since, written from
the file by `make migration` (``authoring.write_contract_revision``, SQL from ``contract_revision_sql``). Each
such revision names its columns in ``contract_columns`` (name: type). The start-up refuses to run while the file
declares a column no revision added, or another type than the one a revision created (``unmigrated_columns_problem``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from psycopg import sql

from include.contract.columns import COLUMNS, STAGING_KEY_COLUMNS, Column

# The tables that carry a row's contract columns: staging_events every column, revalidation_candidates and
# ecommerce_events all but the staging-only ones (the raw line, the parse errors). The view audit_candidates
# selects the candidate columns (``CANDIDATE_COLUMNS``: the staging key and every column but the staging-only).
CONTRACT_TABLES = ("staging_events", "revalidation_candidates", "ecommerce_events")


def _carries(table: str, column: Column) -> bool:
    return table == "staging_events" or column.role != "staging"


def migrated_columns(script) -> dict[str, str]:
    """name -> type of every contract column the revisions of ``script`` (an Alembic ScriptDirectory) add, as
    their ``contract_columns`` declare them, the newest winning."""
    found: dict[str, str] = {}
    for revision in reversed(list(script.walk_revisions())):  # the baseline first
        found.update(getattr(revision.module, "contract_columns", None) or {})
    return found


@dataclass(frozen=True)
class ContractChanges:
    """What the contract file declares beyond what the revisions created."""

    new: tuple[Column, ...] = ()                   # no revision adds them
    retyped: tuple[tuple[Column, str], ...] = ()   # (the column as declared, the type its revision created)

    def __bool__(self) -> bool:
        return bool(self.new or self.retyped)


def contract_changes(columns: Iterable[Column], migrated: Mapping[str, str]) -> ContractChanges:
    columns = tuple(columns)
    return ContractChanges(
        new=tuple(column for column in columns if column.name not in migrated),
        retyped=tuple((column, migrated[column.name]) for column in columns
                      if column.name in migrated and migrated[column.name] != column.sql_type),
    )


def unmigrated_columns_problem(script, columns: Sequence[Column] = COLUMNS) -> str | None:
    """Why the tables cannot hold the contract file's columns, or None when every one has its revision."""
    changes = contract_changes(columns, migrated_columns(script))
    problems = []
    if changes.new:
        listed = ", ".join(f"{column.name} ({column.sql_type})" for column in changes.new)
        problems.append(f"include/contract/contract.yaml declares column(s) no schema migration adds: {listed}. "
                        "Run `make migration` to write the revision that adds them, review and commit it, then start "
                        "again (it is applied at the start)")
    if changes.retyped:
        listed = ", ".join(f"{column.name} is {column.sql_type} in the file, {created} in the tables"
                           for column, created in changes.retyped)
        problems.append(f"contract column(s) changed type: {listed}. Write a revision that alters them in "
                        f"{', '.join(CONTRACT_TABLES)} (make migration NAME=\"...\") and declares them in its "
                        "contract_columns (docs/schema.md)")
    return "; ".join(problems) or None


def contract_revision_sql(new: Sequence[Column], columns: Sequence[Column]) -> str:
    """The SQL of a revision that adds the contract file's ``new`` columns: each to the tables that carry it, at
    their end, and the view audit_candidates rebuilt when a candidate column is among them (``columns``: every
    column of the file, for the view's list)."""
    statements = [
        sql.SQL("ALTER TABLE {} ADD COLUMN {} {};").format(
            sql.Identifier(table), sql.Identifier(column.name), sql.SQL(column.sql_type)).as_string(None)
        for column in new for table in CONTRACT_TABLES if _carries(table, column)]
    if any(column.role != "staging" for column in new):
        candidates = STAGING_KEY_COLUMNS + tuple(column.name for column in columns if column.role != "staging")
        statements += ["-- audit_candidates lists the candidate columns: rebuilt with the new one(s)",
                       "DROP VIEW audit_candidates;", audit_candidates_view_sql(candidates)]
    return "\n".join(statements)


def audit_candidates_view_sql(candidate_columns: Sequence[str]) -> str:
    """``CREATE VIEW audit_candidates``: what the every-minute audit validates and the publish routes.

    The staged rows of the batches the audit pinned (``audit_pinned_batches``) that parsed, minus the ones it
    excluded (``audit_excluded_rows``: later occurrences of an event_id, event_ids already stored): one row per
    event_id, read where it lies in ``staging_events``, so no candidate row is copied. The definition of the
    newest revision that built the view (``tests/integration/test_schema_upgrade.py`` holds the two together)."""
    selected = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(name)) for name in candidate_columns)
    return sql.SQL(
        "CREATE VIEW audit_candidates AS\n"
        "SELECT {}\n"
        "  FROM staging_events s\n"
        "  JOIN audit_pinned_batches p ON (p.spark_query_id, p.spark_batch_id) = (s.spark_query_id, s.spark_batch_id)\n"
        " WHERE s.parse_errors IS NULL\n"
        "   AND NOT EXISTS (SELECT 1 FROM audit_excluded_rows x WHERE x.staging_row_id = s.staging_row_id);"
    ).format(selected).as_string(None)
