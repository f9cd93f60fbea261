"""The training run for Spark's class-data archive (``include.airflow.packaging.build_class_archive``).

It loads the classes a real run loads, without a database: a session built like the jobs build theirs, the
ingest's warm-up batch (parsing in the Python workers, typing, the Arrow round trips) and an
``availableNow`` stream over a temporary directory with one small file, whose batch goes through the same
transforms. The JVM writes every class it loaded to the archive when it exits.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from include.settings import get_settings
from include.storage.landing import SPARK_GLOB
from spark_jobs.ingest_events import _WARM_UP_CSV, BINARY_FILE_SCHEMA, _count_rows, warm_up
from spark_jobs.staging import build_spark, typed_events
from spark_jobs.transforms import PARSED_SCHEMA, parse_landed_files


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    spark = build_spark("ecommerce_events_class_archive")
    try:
        warm_up(spark, settings)
        with tempfile.TemporaryDirectory(prefix="class-archive-") as tmp:
            landing = Path(tmp) / "landing"
            landing.mkdir()
            (landing / "events.csv").write_bytes(_WARM_UP_CSV)

            def batch(files, batch_id):
                parsed = files.select("path", "content").mapInArrow(parse_landed_files, PARSED_SCHEMA)
                typed_events(parsed, datetime.now(UTC), settings.late_arrival_minutes).mapInArrow(
                    _count_rows, "rows long").collect()

            (spark.readStream.format("binaryFile").schema(BINARY_FILE_SCHEMA).option("pathGlobFilter", SPARK_GLOB)
             .load(str(landing)).writeStream.foreachBatch(batch)
             .option("checkpointLocation", str(Path(tmp) / "checkpoint"))
             .trigger(availableNow=True).start().awaitTermination())
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
