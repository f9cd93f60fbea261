"""The revisions of the analytics schema, without a database: one line of numbered revisions, a frozen baseline,
and the contract file's columns each added by a revision (`make migration` writes the revision of a new one)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

import pytest

from include.contract.columns import BY_NAME, COLUMNS, Column
from include.storage.migrations.authoring import next_revision_id
from include.storage.migrations.columns import contract_changes, contract_revision_sql, unmigrated_columns_problem
from include.storage.migrations.runner import BASELINE, MIGRATIONS_DIR, script_directory

pytestmark = pytest.mark.unit

SCRIPT = script_directory()
COUPON = Column("coupon_code", "text", "feed", since="v4")


def test_the_revisions_are_one_line_numbered_in_order():
    """Two branches that each add a revision after the same head meet as two heads: renumber one after the other
    (its ``down_revision`` and its number) before the merge."""
    assert len(SCRIPT.get_heads()) == 1, f"two heads {SCRIPT.get_heads()}: put one revision after the other"
    line = list(reversed(list(SCRIPT.walk_revisions())))
    assert [revision.revision for revision in line] == [f"{number:04d}" for number in range(1, len(line) + 1)]
    assert [revision.down_revision for revision in line] == [None] + [revision.revision for revision in line[:-1]]
    for revision in line:
        assert re.fullmatch(rf"{revision.revision}_\w+\.py", revision.path.rsplit("/", 1)[-1]), revision.path


def test_the_baseline_never_changes():
    """Deployments at 0001 never run it again: a change made to it would reach new databases only. A schema change
    is a new revision (`make migration NAME="..."`), also one merged from a branch that edited the old schema.sql."""
    baseline = MIGRATIONS_DIR / "versions" / f"{BASELINE}_baseline.sql"
    assert hashlib.sha256(baseline.read_bytes()).hexdigest() == (
        "4a836c4b60fbcf1623a74359b2eeb098fbef0cec5898cb5d912229f8a5a90cbd"), (
        f"{baseline} changed: restore it and put the change into a new revision (docs/schema.md)")


def test_every_column_of_the_contract_file_has_the_revision_that_adds_it():
    assert unmigrated_columns_problem(SCRIPT) is None


def test_a_column_the_contract_file_gains_stops_the_start_until_a_revision_adds_it():
    problem = unmigrated_columns_problem(SCRIPT, COLUMNS + (COUPON,))
    assert "declares column(s) no schema migration adds: coupon_code (text)" in problem
    assert "Run `make migration`" in problem


def test_a_column_whose_type_changed_asks_for_a_revision_written_by_hand():
    widened = tuple(replace(c, sql_type="bigint") if c.name == "user_id" else c for c in COLUMNS)
    changes = contract_changes(widened, {c.name: c.sql_type for c in COLUMNS})
    assert changes.new == () and changes.retyped == ((replace(BY_NAME["user_id"], sql_type="bigint"), "integer"),)
    problem = unmigrated_columns_problem(SCRIPT, widened)
    assert "user_id is bigint in the file, integer in the tables" in problem and 'NAME="..."' in problem


def test_the_revision_of_a_new_column_adds_it_to_each_table_that_carries_it_and_rebuilds_the_view():
    statements = contract_revision_sql([COUPON], COLUMNS + (COUPON,)).splitlines()
    assert statements[:3] == [f'ALTER TABLE "{table}" ADD COLUMN "coupon_code" text;'
                              for table in ("staging_events", "revalidation_candidates", "ecommerce_events")]
    assert "DROP VIEW audit_candidates;" in statements
    view = "\n".join(statements[statements.index("DROP VIEW audit_candidates;") + 1:])
    assert view.startswith("CREATE VIEW audit_candidates AS") and 's."coupon_code"\n  FROM staging_events s' in view

    raw_header = Column("raw_header", "text", "staging")  # kept until publish: not an event's, not a candidate's
    assert contract_revision_sql([raw_header], COLUMNS + (raw_header,)) == (
        'ALTER TABLE "staging_events" ADD COLUMN "raw_header" text;')


class _Head:
    def __init__(self, head: str | None) -> None:
        self.head = head

    def get_current_head(self) -> str | None:
        return self.head


@pytest.mark.parametrize(("head", "following"), [(None, "0001"), ("0001", "0002"), ("0009", "0010"),
                                                 ("9999", "10000")])
def test_the_next_revision_is_numbered_after_the_head(head, following):
    assert next_revision_id(_Head(head)) == following
