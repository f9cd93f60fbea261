"""
### Dead-letter replay: re-validate dead letters with the current rules and publish those that now pass

Trigger it by hand (*Trigger DAG*: the form's params say what each one selects). It re-validates the **open**,
**rule**-kind rows of `dead_letter_events` that match with the same Great Expectations suite and thresholds
as every run, as configured **now**. `dry_run` (on by default) only counts; with it off, a person approves
the counts (*Required actions*) before `apply` replays exactly what was counted.

```
dry_run ─► wants_changes ─► approve ─► apply
```

What happens to each dead letter, and why parse-kind ones are re-read by a backfill instead:
`docs/operations.md`, "Dead-letter replay"; how to trigger and approve it: `docs/operations.md`, "Commands and UI
steps".
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from include.airflow.assets import DEAD_LETTERS_ASSET, PUBLISHED
from include.airflow.dag_defaults import default_args
from include.contract.rules import RULES_BY_NAME
from include.names import REPLAY_DAG_ID


@dag(
    dag_id=REPLAY_DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ecommerce", "dead-letters", "replay"],
    default_args=default_args(retry_delay=timedelta(seconds=30)),
    params={
        "rule": Param(None, type=["null", "string"], enum=[None, *RULES_BY_NAME],
                      description="Only dead letters that broke this rule (empty: any rule)."),
        "failed_from": Param(None, type=["null", "string"], format="date-time",
                             description="Only dead letters written at or after this time (UTC)."),
        "failed_to": Param(None, type=["null", "string"], format="date-time",
                           description="Only dead letters written before this time (UTC)."),
        "file": Param(None, type=["null", "string"],
                      description="Only dead letters of this source file (landing path or file name)."),
        "dry_run": Param(True, type="boolean",
                         description="Count what a replay would do and change nothing."),
    },
)
def ecommerce_dlq_replay():
    def _replay(params: dict, run_id: str | None, **approved) -> dict:
        from include.airflow.settings_resolution import settings_from_connection
        from include.publish.replay import replay

        def moment(value):
            return datetime.fromisoformat(value) if value else None

        return replay(settings_from_connection(), run_id, rule=params.get("rule") or None,
                      failed_from=moment(params.get("failed_from")), failed_to=moment(params.get("failed_to")),
                      source_file=params.get("file") or None, **approved)

    def _describe(counts: dict) -> str:
        return (("DRY RUN (nothing changed): " if counts["dry_run"] else "")
                + f"{counts['selected']} open dead letter(s) selected; {counts['candidates']} re-validated: "
                f"{counts['published']} now pass and were published, {counts['still_failing']} still fail "
                f"(attempt count +1), {counts['resolved_already_stored']} resolved (event already stored); "
                f"{counts['parse_kind_skipped']} parse-kind and {counts['not_replayable']} without a typed row "
                f"skipped (re-read them with a backfill); failing rows per rule: "
                f"{counts['failing_rows_per_rule'] or 'none'}")

    @task(multiple_outputs=True)  # the approval form reads two of the keys
    def dry_run(params: dict | None = None, run_id: str | None = None) -> dict:
        """Re-validate the selected open dead letters and count what a replay would do; change nothing."""
        from include.airflow.approval import approval_body, approval_subject

        counts = _replay(params or {}, run_id, dry_run=True)
        print(_describe(counts))
        return {**counts, "approval_subject": approval_subject(counts), "approval_body": approval_body(counts)}

    @task.short_circuit
    def wants_changes(counts: dict, params: dict | None = None) -> bool:
        """A dry run (the default) ends here, and so does a selection a replay would not change."""
        if (params or {}).get("dry_run", True):
            print("dry_run is on: nothing was changed (trigger with dry_run off to replay, after an approval)")
            return False
        if not any(counts[key] for key in ("published", "still_failing", "resolved_already_stored")):
            print("the selection holds no dead letter a replay would change: no approval asked")
            return False
        return True

    counted = dry_run()
    approve = ApprovalOperator(
        task_id="approve",
        subject=counted["approval_subject"],
        body=counted["approval_body"],
        response_timeout=timedelta(days=1),  # unanswered for a day: the task fails and the run ends unchanged
        doc_md="Waits for a person: **Approve** replays exactly what the dry run counted, **Reject** ends the run "
               "without changes (*Required actions* in the navigation, or the task's page).",
    )

    @task(inlets=[DEAD_LETTERS_ASSET], outlets=[PUBLISHED])  # lineage on the Assets page; events: the alias
    def apply(counts: dict, params: dict | None = None, run_id: str | None = None, ti=None,
              outlet_events=None) -> dict:
        """Replay what the approved dry run counted, recording the approver with every replayed row."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.airflow.approval import approver
        from include.airflow.assets import announce_replay
        from include.publish.replay import APPROVED_COUNTS, SelectionChanged

        who = approver(ti.xcom_pull(task_ids="approve"))
        try:
            done = _replay(params or {}, run_id, dry_run=False, up_to_id=counts["up_to_id"], approved_by=who,
                           expected={key: counts[key] for key in APPROVED_COUNTS})
        except SelectionChanged as error:  # the same on every retry: fail now
            raise AirflowFailException(str(error)) from error
        print(f"approved by {who}: " + _describe(done))
        announced = announce_replay(outlet_events, done)
        print(f"asset events: {', '.join(announced) or 'none (nothing changed)'}")
        return done

    wants_changes(counted) >> approve >> apply(counted)


ecommerce_dlq_replay()
