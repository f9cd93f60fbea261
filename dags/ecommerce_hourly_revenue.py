"""
### Hourly revenue: a downstream DAG that runs because rows were published, not on a clock

An example of what an analyst builds on the pipeline. It is **scheduled on the asset `ecommerce_events`**
(*Assets* in the navigation): every time `ecommerce_events` publishes rows, a backfill re-derives some, or a
dead-letter replay stores some, that task emits an asset event, and this DAG runs once for the events that
arrived since its last run. A run that published nothing emits no event, so this DAG stays idle in a quiet minute.

```
hours_to_refresh ─► refresh_rollup
```

| task | what it does |
| --- | --- |
| `hours_to_refresh` | reads the triggering asset events' `extra` (counts, batch ids, `event_time_span`: the earliest and latest `event_time` of the rows that entered or left `ecommerce_events`) and turns them into whole UTC hours |
| `refresh_rollup` | in one transaction, deletes and recomputes those hours of `hourly_revenue` from `ecommerce_events` (purchases, units, revenue, distinct buyers): running it twice changes nothing (`include/storage/sql/refresh_hourly_revenue.sql`) |

**Trigger it by hand** to rebuild the whole rollup (a manual run has no triggering event: every hour is
recomputed). Query: `SELECT * FROM hourly_revenue ORDER BY hour DESC LIMIT 24;`

The asset events' `extra` (every-minute publish): `path`, `rows`, `valid`, `dead_lettered`, `duplicates`,
`validity_rate`, `batch_ids`, `event_time_span`; a backfill adds `moves`, a replay `resolved`. See
[docs/analytics.md](docs/analytics.md#assets-scheduling-your-own-dag-on-published-rows).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import dag, task

from include.airflow.assets import EVENTS_ASSET
from include.airflow.dag_defaults import default_args
from include.names import HOURLY_REVENUE_DAG_ID, POSTGRES_CONN_ID

SQL_DIR = Path(__file__).resolve().parent.parent / "include" / "storage" / "sql"


@dag(
    dag_id=HOURLY_REVENUE_DAG_ID,
    schedule=[EVENTS_ASSET],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two refreshes of overlapping hours never interleave
    template_searchpath=[str(SQL_DIR)],
    doc_md=__doc__,
    tags=["ecommerce", "analytics", "example"],
    default_args=default_args(retry_delay=timedelta(seconds=30)),
)
def ecommerce_hourly_revenue():
    @task
    def hours_to_refresh(triggering_asset_events=None, run_id: str | None = None) -> dict:
        """The UTC hours [from_hour, to_hour) that the triggering publishes touched (None: every hour)."""
        from include.airflow.assets import hours_touched

        spans = [event.extra.get("event_time_span") for events in (triggering_asset_events or {}).values()
                 for event in events]
        window = hours_touched(spans) if spans else (None, None)
        print(f"{len(spans)} asset event(s); refreshing "
              + (f"hours {window[0]} to {window[1]}" if window[0] else "every hour (no triggering event)"))
        return {"from_hour": window[0], "to_hour": window[1], "run_id": run_id}

    SQLExecuteQueryOperator(
        task_id="refresh_rollup",
        conn_id=POSTGRES_CONN_ID,
        sql="refresh_hourly_revenue.sql",
        parameters=hours_to_refresh(),
        split_statements=True,  # DELETE then INSERT, committed together
        doc_md="Recompute `hourly_revenue` for the hours `hours_to_refresh` found, in one transaction.",
    )


ecommerce_hourly_revenue()
