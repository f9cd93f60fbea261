"""The seed-style writer: a naive PySpark batch job, what the original system did per run (a `make bench` peer).

    python -m benchmarks.seed_style_writer --table TABLE --file-list LIST

reads the CSV files named in LIST (one path per line) and appends their storable rows to TABLE (which exists,
shaped like ``ecommerce_events``) in the PostgreSQL of POSTGRES_HOST/PORT/DB/USER/PASSWORD (the environment,
never the command line):

1. the files are grouped by their header line (``benchmarks.peers.header_groups``: the contract's three
   versions v1/v2/v3, matched by column name) and each group is one ``spark.read.csv`` (header=true, every
   field a string named as in the header; ``DROPMALFORMED`` drops records with the wrong number of fields); a column the
   file lacks takes the contract's default (``quantity`` of a v1 file is 1) or NULL;
2. the columns are cast to the table's types (``try_cast``); a row whose non-empty value does not cast, or
   without event_id, event_type or event_time, is dropped;
3. ``dropDuplicates(["event_id"])`` over all files (which copy survives is Spark's choice);
4. ``DataFrame.write.jdbc(mode="append")`` through PostgreSQL's JDBC driver (``/usr/share/java/postgresql.jar``,
   Debian's ``libpostgresql-jdbc-java``), Spark's defaults otherwise (batches of 1,000 INSERTs per task).

No contract rules, no dead letters: what it stores is ``bench.storable_csv``'s rows on the bench's files.
Lineage is filled so the rows fit the table: ``schema_version`` of the group, ``source_file``, and
``source_line`` = the record's ordinal among the file's records + 1 (each file is read as one partition, so
``monotonically_increasing_id`` counts within the file; the physical line unless a dropped or multi-line record
comes first). Not what the parser does: a record with a broken quote or a field over 1,024 characters, and a
file that is not UTF-8 past its first lines, are read as Spark reads them, not left out (the bench's files have
none: ``generate`` adds no damage of that kind). ``local[*]``, no UI, session time zone UTC; the rest is
Spark's defaults, as a naive job would leave them. The last output line is a JSON summary of where the time
went (``session_start_s``: JVM and SparkSession; ``job_s``: read to last INSERT; ``stop_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.peers import JDBC_JAR, header_groups
from include.contract.columns import FEED_COLUMNS, NOT_EMPTY_COLUMNS, TYPED_FEED_COLUMNS
from include.contract.versions import MIGRATION_DEFAULTS
from include.settings import Settings

SPARK_TYPES = {"integer": "int", "numeric(12,2)": "decimal(12,2)", "timestamp with time zone": "timestamp"}
# What the job writes; the other columns of the table keep their defaults (is_late_arrival false) or NULL.
WRITTEN_COLUMNS = (*FEED_COLUMNS, "total_amount", "schema_version", "source_file", "source_line")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seed_style_writer", description=__doc__.split("\n")[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--file-list", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()
    files = [Path(line) for line in args.file_list.read_text().splitlines() if line]
    settings = Settings.from_env(os.environ)

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    spark = (
        SparkSession.builder.master("local[*]").appName("seed-style-writer")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraClassPath", str(JDBC_JAR))
        # one file per partition (no packing of small files), so the row counter of a partition is the
        # record's ordinal in its file (source_line)
        .config("spark.sql.files.openCostInBytes", str(1 << 40))
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.log.level", "WARN")
        .getOrCreate()
    )
    session_ready = time.monotonic()
    frames = []
    for group in header_groups(files)[0]:
        match = group.match
        # the header's own names (as strings), so Spark's header check agrees; fields are taken by position
        schema = T.StructType([T.StructField(name, T.StringType()) for name in group.header])
        raw = spark.read.csv([str(p) for p in group.files], schema=schema, header=True, mode="DROPMALFORMED",
                             multiLine=True, escape='"')
        ordinal = F.monotonically_increasing_id().bitwiseAND((1 << 33) - 1)  # the row counter of the partition
        frames.append(raw.select(
            *[raw[match.positions[c]].alias(c) if c in match.positions
              else F.lit(MIGRATION_DEFAULTS[c]).cast("string").alias(c) for c in FEED_COLUMNS],
            F.lit(match.version.name).alias("schema_version"),
            F.regexp_replace(F.col("_metadata.file_path"), "^file:(//)?", "").alias("source_file"),
            (ordinal + 2).cast("int").alias("source_line"),
        ))
    if frames:
        records = frames[0]
        for frame in frames[1:]:
            records = records.unionByName(frame)
        typed = {c: F.expr(f"try_cast({c} AS {SPARK_TYPES[sql]})") for c, sql in TYPED_FEED_COLUMNS.items()}
        castable = [F.col(c).isNull() | typed[c].isNotNull() for c in typed]
        keep = F.lit(True)
        for condition in [F.col(c).isNotNull() for c in NOT_EMPTY_COLUMNS] + castable:
            keep = keep & condition
        events = (
            records.filter(keep)
            .select(*[typed[c].alias(c) if c in typed else F.col(c) for c in records.columns])
            .dropDuplicates(["event_id"])
            .withColumn("total_amount", (F.col("price") * F.col("quantity")).cast("decimal(14,2)"))
            .select(*WRITTEN_COLUMNS)
        )
        url = f"jdbc:postgresql://{settings.postgres_host}:{settings.postgres_port}/{settings.postgres_db}"
        events.write.jdbc(url, args.table, mode="append", properties={
            "driver": "org.postgresql.Driver", "user": settings.postgres_user, "password": settings.postgres_password,
        })
    written = time.monotonic()
    spark.stop()
    # where the process's time went (the bench times the whole process; this line lands in its log and JSON)
    print(json.dumps({"session_start_s": round(session_ready - started, 2), "job_s": round(written - session_ready, 2),
                      "stop_s": round(time.monotonic() - written, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
