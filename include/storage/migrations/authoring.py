"""Write a new revision into ``versions/`` (what `make migration` runs): one to fill in, or the one the contract
file's new columns need.

Revisions are numbered in order (0001, 0002, ...), each after the current head, so that a revision's place is
plain from its name and two branches that both add one meet as two heads, which the tests refuse.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from include.contract.columns import COLUMNS, Column
from include.storage.migrations import SchemaError
from include.storage.migrations.columns import contract_changes, contract_revision_sql, migrated_columns
from include.storage.migrations.runner import script_directory

BLANK_SQL = """\
-- The statements of this change, for example:
-- ALTER TABLE pipeline_backfill_ledger ADD COLUMN requested_by TEXT;"""


def next_revision_id(script) -> str:
    head = script.get_current_head()  # raises when there are two heads
    if head is None:
        return "0001"
    if not head.isdigit():
        raise SchemaError(f"the head revision {head!r} is not numbered: name revisions 0001, 0002, ...")
    return f"{int(head) + 1:0{len(head)}d}"


def write_revision(message: str, sql: str = BLANK_SQL, contract_columns: Sequence[Column] = ()) -> Path:
    """Write revision ``next_revision_id`` after the head, with ``sql``; return its file."""
    script = script_directory()
    declared = None
    if contract_columns:
        declared = "{\n" + "".join(f"    {json.dumps(c.name)}: {json.dumps(c.sql_type)},\n" for c in contract_columns) + "}"
    written = script.generate_revision(next_revision_id(script), message, head="head", sql=sql,
                                       contract_columns=declared)
    return Path(written.path)


def write_contract_revision(columns: Sequence[Column] = COLUMNS) -> Path | None:
    """Write the revision that adds the contract file's columns no revision adds yet; None when there are none.
    A column whose type changed needs a revision written by hand (``SchemaError`` says so)."""
    changes = contract_changes(columns, migrated_columns(script_directory()))
    if changes.retyped:
        listed = ", ".join(f"{column.name} ({created} -> {column.sql_type})" for column, created in changes.retyped)
        raise SchemaError(f"contract column(s) changed type: {listed}; a type change is a revision written by hand "
                          "(make migration NAME=\"...\", docs/schema.md)")
    if not changes.new:
        return None
    names = ", ".join(column.name for column in changes.new)
    return write_revision(f"contract columns {names}",
                          contract_revision_sql(changes.new, columns), contract_columns=changes.new)
