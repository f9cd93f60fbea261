"""``detect_work`` of an every-minute run: claim what has landed, and is there anything for the ingest to do?

It claims every complete file of LANDING_DIR as a delivery and quarantines what is not a file to read
(``include.storage.deliveries.claim``), raises the WARNINGs about quarantined files and about files waiting too
long (``include.ops.alerts.landing``), and asks the circuit breaker whether runs may go on. Anything to do
means deliveries waiting for the ingest, or batches an earlier run staged but did not publish. The answer costs
a directory listing and a few short transactions: no JVM for an empty minute.
"""

from __future__ import annotations

from datetime import UTC, datetime

from include.ops import circuit_breaker
from include.ops.alerts.landing import alert_quarantined, alert_waiting
from include.settings import Settings
from include.storage.connections import with_connection
from include.storage.deliveries import claim


def detect_every_minute_work(settings: Settings, run_id: str | None) -> bool:
    breaker = circuit_breaker.breaker_from_settings(settings)

    def look(conn):
        claimed = claim(settings, conn, run_id)
        waiting, unpublished = conn.execute(
            "SELECT (SELECT count(*) FROM deliveries WHERE status = 'claimed'), "
            "(SELECT count(*) FROM pipeline_batch_ledger WHERE published_at IS NULL)").fetchone()
        now = datetime.now(UTC)  # the decision is pure: the same state and time give the same answer
        before, _ = circuit_breaker.transition(conn, lambda state: breaker.decide(state, now).state)
        return claimed, waiting, unpublished, breaker.decide(before, now)

    claimed, waiting, unpublished, decision = with_connection(settings, look)
    for delivery in claimed.deliveries:
        print(f"claimed {delivery.file_name} as delivery {delivery.delivery_id} ({delivery.size_bytes} bytes)")
    for delivery, reason in claimed.quarantined:
        print(f"quarantined {delivery.file_name} (delivery {delivery.delivery_id}): {reason}")
    for entry, verdict, first_seen in claimed.stock.waiting:
        print(f"waiting in {settings.landing_dir.name}/: {entry.name}: {verdict.reason} (first seen {first_seen:%H:%M:%S})")
    now = datetime.now(UTC)

    def alerts(conn) -> None:
        alert_quarantined(settings, conn, run_id)
        alert_waiting(settings, conn, claimed.stock.stuck(now, settings.landing_stuck_minutes), run_id)

    with_connection(settings, alerts, autocommit=True)
    print(f"{waiting} delivery(ies) waiting for the ingest; {unpublished} batch(es) staged, unpublished")
    print(decision.message)
    return bool(waiting or unpublished) and decision.allowed

