"""The column table: every column an event has, read from the contract file (``contract.yaml``, next to
this module). Every other column list derives from it.

| role | what it is |
| --- | --- |
| ``feed`` | a CSV column of the feed; ``since`` is the first schema version that carries it |
| ``derived`` | computed by the ingest (``total_amount``, ``is_late_arrival``) |
| ``lineage`` | where the row came from (schema version, file, line, delivery) |
| ``staging`` | kept only until publish (the raw line and the reasons it could not be typed) |
| ``rescued`` | the values of columns the contract does not know, per row, as JSON (``rescued_data``) |

A feed column is ``required`` when a file without it cannot be read (the v1 columns): those are
``REQUIRED_HEADER_COLUMNS``; every other feed column may be missing from a file and is then NULL (or its
``default``). A feed column is ``not_empty`` when a row cannot be stored without its value (the events table
declares it NOT NULL): those are ``NOT_EMPTY_COLUMNS``, and a row with one of them empty is dead-lettered
when it is typed (``spark_jobs.transforms.with_typed_columns``). Only a required column can be not_empty.

The order is the order of ``staging_events``' event columns and of ``ecommerce_events``; the feed
columns in this order are the canonical (latest) CSV layout. The schema's migrations (include/storage/migrations)
create the same columns with these types, a column added here by the revision `make migration` writes from this
file, and ``tests/integration/test_schema.py`` holds the two together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONTRACT_FILE = Path(__file__).with_name("contract.yaml")
ROLES = ("feed", "derived", "lineage", "staging", "rescued")
SQL_TYPES = ("text", "integer", "bigint", "numeric(12,2)", "numeric(14,2)", "timestamp with time zone", "boolean", "jsonb")


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str          # PostgreSQL type, as information_schema spells it
    role: str              # feed | derived | lineage | staging | rescued
    since: str | None = None  # feed columns: the first schema version that has it
    required: bool = False    # feed columns: a header without it is quarantined
    default: str | None = None  # feed columns: the CSV text a file without the column gets
    not_empty: bool = False   # feed columns: a row with it empty cannot be stored (dead-lettered when typed)


class ContractError(ValueError):
    """The contract file is inconsistent; nothing may run on it."""


def load_contract(path: Path | None = None) -> dict:
    """Read and check the contract file (default: the package's own, also from inside the code zip Spark
    imports from): the columns with their versions, the versions, the domains."""
    import importlib.resources

    import yaml

    if path is None:
        path = CONTRACT_FILE
        text = importlib.resources.files(__package__).joinpath(CONTRACT_FILE.name).read_text(encoding="utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    versions = tuple(raw["versions"])
    columns = tuple(
        Column(c["name"], c["type"], c["role"], c.get("since"), bool(c.get("required", False)), c.get("default"),
               bool(c.get("not_empty", False)))
        for c in raw["columns"]
    )
    problems = [f"{c.name}: role {c.role!r} is not one of {ROLES}" for c in columns if c.role not in ROLES]
    problems += [f"{c.name}: type {c.sql_type!r} is not one of {SQL_TYPES}" for c in columns if c.sql_type not in SQL_TYPES]
    problems += [f"{c.name}: a feed column needs `since` (one of {versions})"
                 for c in columns if c.role == "feed" and c.since not in versions]
    problems += [f"{c.name}: required since {c.since}, but files of {versions[0]} cannot carry it"
                 for c in columns if c.required and c.since != versions[0]]
    problems += [f"{c.name}: not_empty but not required: every row of a file without it would be dead-lettered"
                 for c in columns if c.not_empty and not c.required]
    names = [c.name for c in columns]
    problems += [f"{name}: declared twice" for name in sorted({n for n in names if names.count(n) > 1})]
    if problems:
        raise ContractError(f"{path}: " + "; ".join(problems))
    return {"versions": versions, "columns": columns,
            "domains": {name: tuple(values) for name, values in (raw.get("domains") or {}).items()}}


CONTRACT = load_contract()
COLUMNS: tuple[Column, ...] = CONTRACT["columns"]
BY_NAME = {column.name: column for column in COLUMNS}

FEED_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.role == "feed")
# The columns a file's header must name (else the file is quarantined), and those a row must not leave empty
# (else it is dead-lettered when it is typed): the contract's `required` and `not_empty`.
REQUIRED_HEADER_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.role == "feed" and c.required)
NOT_EMPTY_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.role == "feed" and c.not_empty)
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
