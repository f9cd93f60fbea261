"""What the tasks of a run hand each other, typed: the audit's result and the publish summary.

Airflow keeps task results as JSON in XCom; ``to_xcom`` / ``from_xcom`` convert (the classes are not on
Airflow's list of classes it may deserialise itself, and plain JSON stays readable in the UI's XCom tab).
A task reads fields (``summary.validity_rate``), never string keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class RuleResult:
    """Great Expectations' outcome for one row rule."""

    unexpected_count: int
    success: bool = True
    description: str = ""
    sample_event_ids: list[str] = field(default_factory=list)
    exception: str | None = None


@dataclass
class TableCheck:
    """Great Expectations' outcome for one table-level expectation (it fails the quality gate, routes no row)."""

    success: bool
    observed_value: Any = None


@dataclass
class Validation:
    """One run of the suite over a table of candidate rows."""

    suite: str
    success: bool
    rules: dict[str, RuleResult]
    table_checks: dict[str, TableCheck] = field(default_factory=dict)
    data_docs: str | None = None
    validation_seconds: float = 0.0
    # the moment the rules were evaluated at (ISO-8601): the routing evaluates them at the same one
    audited_at: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Validation:
        return cls(**{**data, "rules": {k: RuleResult(**v) for k, v in data["rules"].items()},
                      "table_checks": {k: TableCheck(**v) for k, v in data.get("table_checks", {}).items()}})


@dataclass
class AuditResult:
    """``audit`` → ``publish``: the batches the audit pinned and what the suite found in their rows."""

    batches: list[tuple[str, int]]   # (spark query id, spark batch id), staged and unpublished
    input_files: int
    candidate_rows: int
    validation: Validation | None = None  # None when no batch was waiting
    # ecommerce_events' write generation when the audit left out the stored event_ids (include.storage.locks.publish_lock)
    events_generation: int | None = None

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: dict[str, Any]) -> AuditResult:
        validation = data.get("validation")
        return cls(batches=[(str(q), int(b)) for q, b in data["batches"]], input_files=data["input_files"],
                   candidate_rows=data["candidate_rows"],
                   validation=Validation.from_dict(validation) if validation else None,
                   events_generation=data.get("events_generation"))


@dataclass
class FailingRule:
    rule: str
    rows: int
    description: str
    sample_event_ids: list[str]


@dataclass
class PublishSummary:
    """``publish`` (every-minute path) or ``rederive`` (backfill path) → ``quality_gate`` and the alerts.

    ``total = valid + invalid + duplicates`` always; ``batches`` holds one entry per published Spark batch
    (every-minute path) and ``moves`` what a backfill moved between the two tables (backfill path)."""

    path: str                        # "every_minute" | "backfill"
    total: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    late: int = 0
    quarantined_files: int = 0
    validity_rate: float = 100.0
    failing_rules: list[FailingRule] = field(default_factory=list)  # rules of severity drop (dead letters)
    warned: int = 0                                                  # stored rows with a warn-level violation
    warnings: list[FailingRule] = field(default_factory=list)       # rules of severity warn that rows broke
    table_checks: dict[str, TableCheck] = field(default_factory=dict)
    data_docs: str | None = None
    batches: list[dict[str, Any]] = field(default_factory=list)
    moves: dict[str, int] = field(default_factory=dict)
    already_published: bool = False
    # columns the contract does not know, seen for the first time in this publish: name, source_file, sample
    new_columns: list[dict[str, Any]] = field(default_factory=list)
    # [earliest, latest] event_time (ISO) of the rows that entered or left ecommerce_events; None: no row did
    event_time_span: list[str] | None = None

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: dict[str, Any]) -> PublishSummary:
        return cls(**{**data, "failing_rules": [FailingRule(**r) for r in data.get("failing_rules", [])],
                      "warnings": [FailingRule(**r) for r in data.get("warnings", [])],
                      "table_checks": {k: TableCheck(**v) for k, v in data.get("table_checks", {}).items()}})

    def describe(self) -> str:
        """One line for the task log."""
        if self.path == "backfill":
            return (f"backfill re-read {self.moves.get('input_files', 0)} file(s), {self.total} rows: "
                    f"{self.moves.get('moved_to_events', 0)} moved into ecommerce_events, "
                    f"{self.moves.get('moved_to_dead_letter', 0)} into dead_letter_events (see dead_letter_moves); "
                    f"validity {self.validity_rate}%")
        return (f"published {len(self.batches)} batch(es): {self.total} rows -> {self.valid} valid, "
                f"{self.invalid} invalid, {self.duplicates} duplicates, {self.late} late, "
                f"{self.quarantined_files} file(s) quarantined; validity {self.validity_rate}%")

    @property
    def breached_checks(self) -> list[str]:
        return sorted(name for name, check in self.table_checks.items() if not check.success)


def time_span(moments: Iterable[datetime | None]) -> list[str] | None:
    """[earliest, latest] of ``moments`` as ISO strings (an XCom and an asset event's extra hold JSON), or
    None when there is none."""
    known = [moment for moment in moments if moment is not None]
    return [min(known).isoformat(), max(known).isoformat()] if known else None


def validity_rate(valid: int, invalid: int) -> float:
    """Share of the distinct rows of a batch that passed, in percent (duplicates are neither)."""
    return round(100.0 * valid / (valid + invalid), 2) if valid + invalid else 100.0


def failing_rules(validation: Validation | None, severity: Mapping[str, str] | None = None,
                  level: str = "drop") -> list[FailingRule]:
    """The rules of severity ``level`` (by ``severity``, rule -> warn | drop | fail; drop when absent) that
    rows broke, most rows first."""
    rules = validation.rules if validation else {}
    severity = severity or {}
    return sorted((FailingRule(name, r.unexpected_count, r.description, r.sample_event_ids)
                   for name, r in rules.items() if r.unexpected_count and severity.get(name, "drop") == level),
                  key=lambda r: -r.rows)
