"""The two tables this pipeline publishes, as Airflow assets, and the asset events its writers emit.

Three tasks write ``ecommerce_events`` and ``dead_letter_events``: ``publish`` (every-minute path),
``rederive`` (backfill path) and ``apply`` (``ecommerce_dlq_replay``, after its approval). Each declares the
asset alias ``ecommerce_published`` as its outlet and, once its transaction has committed, adds one event
for each table it changed, with the run's counts as the event's ``extra``. A DAG scheduled on ``EVENTS_ASSET`` (e.g.
``ecommerce_hourly_revenue``) then runs because rows were published, not on a clock.

Why an alias and not the two assets as outlets: Airflow emits an event for every declared asset whenever the
task succeeds, so a run that published nothing (all rows duplicates, every file quarantined, a dry-run
replay) would wake every downstream DAG for nothing, and a run with no dead letters would still announce
new dead letters. Through the alias a task announces exactly the tables it changed.

The URIs name the tables by the Airflow connection they are reached through, not by where that connection points:
``x-airflow-connection://ecommerce_postgres/public/ecommerce_events``. An asset's identity is its name and URI,
and a URI that carried the host, port and database (the PostgreSQL provider's ``postgres://host:port/db/...``,
read from POSTGRES_* as each process parsed the DAG files) changed when the database moved, or differed between
two processes that saw different settings: the asset became inactive and every task declaring it failed with
``AirflowInactiveAssetInInletOrOutletException``. Where the tables are is the connection's business (one source
of truth); the URIs are constants. (``x-`` schemes are Airflow's for URIs no provider normalises.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, AssetAlias

from include.names import POSTGRES_CONN_ID
from include.results import PublishSummary

EVENTS_TABLE = "ecommerce_events"
DEAD_LETTERS_TABLE = "dead_letter_events"


URI_SCHEME = "x-airflow-connection"


def table_uri(table: str, conn_id: str = POSTGRES_CONN_ID, schema: str = "public") -> str:
    """The asset URI of ``schema.table`` in the database of the Airflow connection ``conn_id``."""
    return f"{URI_SCHEME}://{conn_id}/{schema}/{table}"


EVENTS_ASSET = Asset(name=EVENTS_TABLE, uri=table_uri(EVENTS_TABLE), group="ecommerce")
DEAD_LETTERS_ASSET = Asset(name=DEAD_LETTERS_TABLE, uri=table_uri(DEAD_LETTERS_TABLE), group="ecommerce")
PUBLISHED = AssetAlias(name="ecommerce_published", group="ecommerce")


def announce(outlet_events, extra: dict[str, Any], *, events_changed: bool, dead_letters_changed: bool) -> list[str]:
    """Add an event (with ``extra``) for each table that changed; return the names announced."""
    announced = []
    for asset, changed in ((EVENTS_ASSET, events_changed), (DEAD_LETTERS_ASSET, dead_letters_changed)):
        if changed:
            outlet_events[PUBLISHED].add(asset, extra=extra)
            announced.append(asset.name)
    return announced


def announce_publish(outlet_events, summary: PublishSummary) -> list[str]:
    """The events of a ``publish`` (every-minute) or ``rederive`` (backfill) that has committed."""
    extra = {
        "path": summary.path, "rows": summary.total, "valid": summary.valid, "dead_lettered": summary.invalid,
        "duplicates": summary.duplicates, "validity_rate": summary.validity_rate,
        "batch_ids": [batch["batch_id"] for batch in summary.batches],
        "event_time_span": summary.event_time_span,
    }
    if summary.path == "backfill":
        moves = summary.moves
        extra["moves"] = moves
        # rows entered or left ecommerce_events exactly when they have event times
        events_changed = summary.event_time_span is not None
        dead_letters_changed = any(moves.get(key, 0) for key in
                                   ("dead_letters_added", "dead_letters_updated", "moved_to_events"))
    else:
        events_changed = summary.valid > 0
        dead_letters_changed = summary.invalid > 0
    return announce(outlet_events, extra, events_changed=events_changed, dead_letters_changed=dead_letters_changed)


def announce_replay(outlet_events, counts: Mapping[str, Any]) -> list[str]:
    """The events of a dead-letter replay (``include.publish.replay.replay``'s counts); a dry run changes
    nothing and announces nothing."""
    if counts["dry_run"]:
        return []
    extra = {
        "path": "replay", "rows": counts["candidates"], "valid": counts["published"],
        "dead_lettered": counts["still_failing"], "resolved": counts["resolved_already_stored"],
        "event_time_span": counts["event_time_span"],
    }
    touched = counts["published"] + counts["still_failing"] + counts["resolved_already_stored"]
    return announce(outlet_events, extra, events_changed=counts["published"] > 0, dead_letters_changed=touched > 0)


def hours_touched(spans: Iterable[list[str] | None]) -> tuple[str | None, str | None]:
    """The whole UTC hours [from, to) (ISO) that cover the events' ``event_time_span``s; (None, None) when
    no event names a span (then every hour is recomputed)."""
    moments = [datetime.fromisoformat(moment).astimezone(UTC) for span in spans if span for moment in span]
    if not moments:
        return None, None
    first = min(moments).replace(minute=0, second=0, microsecond=0)
    last = max(moments).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return first.isoformat(), last.isoformat()
