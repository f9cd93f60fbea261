"""What the replay DAG's approval step shows a person, and who answered it.

The step is Airflow's own Human-in-the-loop ``ApprovalOperator`` (``dags/ecommerce_dlq_replay.py``); this
module only turns the dry run's counts into the Markdown the form shows, and reads the approver out of the
operator's result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def approval_subject(counts: Mapping[str, Any]) -> str:
    return (f"Replay dead letters: {counts['published']} would be stored, {counts['still_failing']} would "
            f"still fail, {counts['resolved_already_stored']} already stored. Approve?")


def approval_body(counts: Mapping[str, Any]) -> str:
    """Markdown for the approval form: the filters, what the replay would do, the failing rows per rule."""
    filters = {name: value for name, value in (counts.get("filters") or {}).items() if value}
    lines = [
        "A dry run of the replay counted what it would do. **Approve** to do exactly this (dead letters written "
        "since the dry run are left for a later replay); **Reject** to change nothing.",
        "",
        "Selection: " + (", ".join(f"`{name}` = `{value}`" for name, value in filters.items()) or "every open dead letter"),
        "",
        "| outcome | dead letters |",
        "| --- | --- |",
        f"| pass now: stored in `ecommerce_events` | **{counts['published']}** |",
        f"| still fail: stay open, attempt count + 1 | {counts['still_failing']} |",
        f"| event already stored: resolved | {counts['resolved_already_stored']} |",
        f"| parse-kind or without a typed row: not replayed (use a backfill) | "
        f"{counts['parse_kind_skipped'] + counts['not_replayable']} |",
    ]
    per_rule = counts.get("failing_rows_per_rule") or {}
    if per_rule:
        lines += ["", "Still failing, per rule:", "", "| rule | rows |", "| --- | --- |"]
        lines += [f"| `{rule}` | {rows} |" for rule, rows in per_rule.items()]
    return "\n".join(lines)


def approver(decision: Mapping[str, Any] | None) -> str:
    """The name of the user who approved (the ``ApprovalOperator``'s result); refuses anything but an approval,
    so the replay can never run unapproved."""
    if not decision or decision.get("chosen_options") != ["Approve"]:
        raise ValueError(f"the replay was not approved (approval step answered {decision!r})")
    user = decision.get("responded_by_user") or {}
    return str(user.get("name") or user.get("id") or "unknown")
