"""The quality gate: what makes a published run a data-quality breach, and how the failure reads."""

from __future__ import annotations

from include.results import PublishSummary, validity_rate


def problems(summary: PublishSummary, min_validity_rate: float) -> list[str]:
    """Each reason the run breaches quality: validity below MIN_VALIDITY_RATE, a failed table-level check."""
    found = []
    if summary.total and summary.validity_rate < min_validity_rate:
        found.append(f"validity rate {summary.validity_rate}% is below MIN_VALIDITY_RATE {min_validity_rate}%")
    found += [f"table check {name} failed (observed {summary.table_checks[name].observed_value})"
              for name in summary.breached_checks]
    return found


def breach_message(summary: PublishSummary, found: list[str], run_id: str | None) -> str:
    """The failed task's message: what breached, the counts, the top rules, where to look next."""
    top = "; ".join(f"{r.rule}: {r.rows} rows (e.g. {', '.join(r.sample_event_ids[:3]) or 'n/a'})"
                    for r in summary.failing_rules[:3])
    return ("Data quality breach: " + "; ".join(found)
            + f". Counts: {summary.total} total, {summary.valid} valid, {summary.invalid} invalid, "
            f"{summary.duplicates} duplicates. Top failing rules: {top or 'none'}. "
            f"Data Docs: {summary.data_docs}. Dead letters: SELECT * FROM dead_letter_events "
            f"WHERE airflow_run_id = '{run_id}'")


def backfill_problems(done: dict, min_validity_rate: float) -> tuple[list[str], float]:
    """Each reason a whole backfill breaches quality, on its totals (``include.publish.coverage.progress``): the
    validity of its re-derived rows below MIN_VALIDITY_RATE. Returns (the reasons, the validity rate)."""
    valid, invalid = done["pass"], done["rule"] + done["parse"]
    rate = validity_rate(valid, invalid)
    found = [f"validity rate {rate}% of its {valid + invalid} re-derived rows is below MIN_VALIDITY_RATE "
             f"{min_validity_rate}%"] if valid + invalid and rate < min_validity_rate else []
    return found, rate
