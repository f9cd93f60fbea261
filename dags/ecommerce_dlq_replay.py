"""
### Dead-letter replay: re-validate dead letters with the current rules and publish those that now pass

Trigger it by hand (*Trigger DAG* → fill in the form, or `airflow dags trigger ecommerce_dlq_replay
--conf '{"rule": "price_in_range", "dry_run": false}'`). It selects the **open**, **rule**-kind rows of
`dead_letter_events` that match the parameters, validates them again with the same Great Expectations suite
and thresholds as every run (`MAX_PRICE`, …, as configured **now**), then in one transaction:

| outcome | what happens to the dead letter |
| --- | --- |
| passes now | stored in `ecommerce_events`; status `replayed`; a `dead_letter_moves` row (`to_events`, `replay`) |
| still fails | stays `open`; `replay_attempts` + 1; `failed_rules` / `validation_errors` show the current rules |
| its event_id is stored meanwhile | status `resolved` (a duplicate of a stored event) |

| param | meaning |
| --- | --- |
| `rule` | only dead letters that broke this rule (empty: any rule) |
| `failed_from`, `failed_to` | only dead letters written in [from, to) (`failed_at`, UTC) |
| `file` | only dead letters of this source file (full landing path or just the file name) |
| `dry_run` | **on by default**: count what would happen and change nothing |

The counts are printed in the task log and are the task's return value (XCom `return_value`). A real run
(not a dry run) that changed rows emits asset events for `ecommerce_events` / `dead_letter_events` (README
"Assets"), so DAGs scheduled on them (e.g. `ecommerce_hourly_revenue`) pick up the replayed rows.

**Parse-kind dead letters** (lines that could not be parsed or typed) are not replayed here: they have no
typed row to validate. After a parser fix, re-read their files with a backfill of the window they landed in
(`airflow backfill create --dag-id ecommerce_events …`, README "Backfills and replays").

Replays and backfills take the same PostgreSQL locks as the every-minute publish, so they never race it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from include.airflow.assets import DEAD_LETTERS_ASSET, PUBLISHED
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
    default_args={"owner": "data-engineering", "retries": 2, "retry_delay": timedelta(seconds=30)},
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
    @task(inlets=[DEAD_LETTERS_ASSET], outlets=[PUBLISHED])  # lineage on the Assets page; events: the alias
    def replay(params: dict | None = None, run_id: str | None = None, outlet_events=None) -> dict:
        """Re-validate the selected open dead letters with the current suite; publish those that now pass."""
        from include.airflow.callbacks import settings_from_connection
        from include.publish.replay import replay as replay_dead_letters

        def moment(value):
            return datetime.fromisoformat(value) if value else None

        params = params or {}
        counts = replay_dead_letters(
            settings_from_connection(), run_id, rule=params.get("rule") or None,
            failed_from=moment(params.get("failed_from")), failed_to=moment(params.get("failed_to")),
            source_file=params.get("file") or None, dry_run=bool(params.get("dry_run", True)),
        )
        print(("DRY RUN (nothing changed): " if counts["dry_run"] else "")
              + f"{counts['selected']} open dead letter(s) selected; {counts['candidates']} re-validated: "
              f"{counts['published']} now pass and were published, {counts['still_failing']} still fail "
              f"(attempt count +1), {counts['resolved_already_stored']} resolved (event already stored); "
              f"{counts['parse_kind_skipped']} parse-kind and {counts['not_replayable']} without a typed row "
              f"skipped (re-read them with a backfill); failing rows per rule: "
              f"{counts['failing_rows_per_rule'] or 'none'}")
        from include.airflow.assets import announce_replay

        announced = announce_replay(outlet_events, counts)
        print(f"asset events: {', '.join(announced) or 'none (nothing changed)'}")
        return counts

    replay()


ecommerce_dlq_replay()
