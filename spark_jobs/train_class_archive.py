"""The training run for Spark's class-data archive (``include.airflow.packaging.build_class_archive``).

It loads the classes a real run loads, without a database: a session built like the jobs build theirs, the
ingest's warm-up batch (the delivery source's read and parse in the Python workers, typing, the Arrow round
trips) and an ``availableNow`` stream of the delivery source over a fixed list of one small file (no ledger),
whose batch goes through the same transforms. The JVM writes every class it loaded to the archive when it exits.
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from include.settings import get_settings
from spark_jobs.delivery_source import SOURCE_NAME
from spark_jobs.ingest_events import _WARM_UP_CSV, _count_rows, warm_up
from spark_jobs.session import build_spark
from spark_jobs.stage import typed_events


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    spark = build_spark("ecommerce_events_class_archive")
    try:
        warm_up(spark, settings)
        with tempfile.TemporaryDirectory(prefix="class-archive-") as tmp:
            path = Path(tmp) / "events.csv"
            path.write_bytes(_WARM_UP_CSV)
            fixed = json.dumps([[1, str(path), len(_WARM_UP_CSV), "/class-archive/events.csv"]])

            def batch(parsed, batch_id):
                typed_events(parsed, datetime.now(UTC), settings.late_arrival_minutes).mapInArrow(
                    _count_rows, "rows long").collect()

            (spark.readStream.format(SOURCE_NAME).option("deliveries", fixed).load()
             .writeStream.foreachBatch(batch)
             .option("checkpointLocation", str(Path(tmp) / "checkpoint"))
             .trigger(availableNow=True).start().awaitTermination())
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
