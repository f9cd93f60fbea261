"""How rows get into ``staging_events`` and how the publish clears the ones it published, against a real
PostgreSQL.

The executors' COPY survives a rolled-back transaction without doubling or losing a row. The publish clears
with TRUNCATE when the published batches are all that ``staging_events`` holds; otherwise (rows of other
batches, or another session writing to it right now) with a DELETE of exactly the published batches, without
waiting."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from include.publish.every_minute import clear_staged_rows

pytestmark = [pytest.mark.integration, pytest.mark.db]

PUBLISHED = uuid.UUID("00000000-0000-4000-8000-00000000000a")
OTHER = uuid.UUID("00000000-0000-4000-8000-00000000000b")


def _stage(conn: psycopg.Connection, query_id: uuid.UUID, batch_id: int, rows: int) -> None:
    conn.execute(
        "INSERT INTO staging_events (spark_query_id, spark_batch_id, spark_partition, event_id, source_file, "
        "source_line, raw_data) SELECT %s, %s, 0, gen_random_uuid()::text, 'f.csv', g, 'raw' "
        "FROM generate_series(1, %s) g",
        (query_id, batch_id, rows),
    )


def _publish_clear(pipeline, pinned: list[tuple[uuid.UUID, int]]) -> str:
    """What the publish transaction does around ``clear_staged_rows``: pin the batches, clear, commit."""
    with psycopg.connect(pipeline.settings.postgres_conninfo, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")  # a wait for another session would fail here instead of hanging
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE pinned_batches (spark_query_id uuid, spark_batch_id bigint) ON COMMIT DROP")
            for batch in pinned:
                conn.execute("INSERT INTO pinned_batches VALUES (%s, %s)", batch)
            return clear_staged_rows(conn)


def _staged(pipeline) -> dict[tuple[str, int], int]:
    return {(str(q), b): n for q, b, n in pipeline.query(
        "SELECT spark_query_id, spark_batch_id, count(*) FROM staging_events GROUP BY 1, 2")}


def test_published_batches_alone_are_truncated(pipeline):
    pipeline.reset()
    with psycopg.connect(pipeline.settings.postgres_conninfo, autocommit=True) as conn:
        _stage(conn, PUBLISHED, 0, 300)
        _stage(conn, PUBLISHED, 1, 200)
    assert _publish_clear(pipeline, [(PUBLISHED, 0), (PUBLISHED, 1)]) == "truncate"
    assert _staged(pipeline) == {}


def test_rows_of_other_batches_are_kept(pipeline):
    pipeline.reset()
    with psycopg.connect(pipeline.settings.postgres_conninfo, autocommit=True) as conn:
        _stage(conn, PUBLISHED, 0, 300)
        _stage(conn, OTHER, 0, 50)  # e.g. a backfill's batch, or one staged after the audit pinned its batches
    assert _publish_clear(pipeline, [(PUBLISHED, 0)]) == "delete"
    assert _staged(pipeline) == {(str(OTHER), 0): 50}


def test_a_session_staging_right_now_is_neither_waited_for_nor_lost(pipeline):
    """An ingest (or backfill) COPYing into staging holds its lock until it commits: the publish does not wait
    for it, and the rows it commits afterwards are all there."""
    pipeline.reset()
    with psycopg.connect(pipeline.settings.postgres_conninfo, autocommit=True) as conn:
        _stage(conn, PUBLISHED, 0, 300)
    with psycopg.connect(pipeline.settings.postgres_conninfo) as writer:
        _stage(writer, OTHER, 7, 40)  # uncommitted: holds ROW EXCLUSIVE on staging_events
        started = time.monotonic()
        assert _publish_clear(pipeline, [(PUBLISHED, 0)]) == "delete"
        # a publish that waited for the lock would give up only at its 10 s lock_timeout (and then delete too)
        assert time.monotonic() - started < 5
        writer.commit()
    assert _staged(pipeline) == {(str(OTHER), 7): 40}


@pytest.mark.parametrize("binary", [True, False], ids=["binary COPY (ADBC)", "CSV COPY (reference)"])
def test_a_staging_copy_the_server_rolls_back_is_sent_again_whole(pipeline, binary):
    """The executors' COPY (``copy_arrow_to_staging``): when PostgreSQL rolls the transaction back after every
    row was sent (here a statement trigger fails it once, as a serialization failure would), the retry sends the
    partition's rows again from its spill file: each row staged once, none lost. Both writers: the ADBC one
    reports the failure with its own exception class, retried by its SQLSTATE."""
    import pyarrow as pa

    from include.contract.columns import STAGED_COLUMNS
    from include.storage.staging_table import copy_arrow_to_staging

    pipeline.reset()

    def batch(first: int, rows: int) -> pa.RecordBatch:
        values = {"event_id": [f"e{i}" for i in range(first, first + rows)], "source_file": ["f.csv"] * rows,
                  "source_line": list(range(first, first + rows)), "raw_data": [f"line,{i}" for i in range(rows)]}
        return pa.RecordBatch.from_arrays(
            [pa.array(values[c]) if c in values else pa.nulls(rows, pa.string()) for c in STAGED_COLUMNS],
            names=list(STAGED_COLUMNS))

    with psycopg.connect(pipeline.settings.postgres_conninfo, autocommit=True) as conn:
        conn.execute("""
            CREATE SEQUENCE fail_once;
            CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('fail_once') = 1 THEN  -- a sequence is not rolled back: the second COPY passes
                RAISE EXCEPTION 'injected rollback' USING ERRCODE = 'serialization_failure';
              END IF;
              RETURN NULL;
            END $$;
            CREATE TRIGGER fail_once AFTER INSERT ON staging_events FOR EACH STATEMENT EXECUTE FUNCTION fail_once();
        """)
    try:
        staged, _ = copy_arrow_to_staging(pipeline.settings, str(PUBLISHED), 3, 0,
                                          iter([batch(0, 1500), batch(1500, 0), batch(1500, 700)]), binary=binary)
        attempts = pipeline.scalar("SELECT last_value FROM fail_once")
    finally:
        with psycopg.connect(pipeline.settings.postgres_conninfo, autocommit=True) as conn:
            conn.execute("DROP TRIGGER fail_once ON staging_events; DROP FUNCTION fail_once(); DROP SEQUENCE fail_once")
    assert attempts == 2 and staged == 2200
    assert _staged(pipeline) == {(str(PUBLISHED), 3): 2200}
    assert pipeline.scalar("SELECT count(DISTINCT event_id) FROM staging_events") == 2200
    assert pipeline.query("SELECT min(source_line), max(source_line), min(raw_data) FROM staging_events") == \
        [(0, 2199, "line,0")]


def _stage_every_corpus_twice(pipeline, spark, tmp_path) -> int:
    """Stage the rows Spark types from the parser's whole differential corpus (the generator's output of every
    kind, the evolving feed, injected text) as batch 1 of ``PUBLISHED`` by the binary COPY and as its batch 2
    by the CSV COPY; return the rows of each."""
    from include.contract.parser import MAX_FIELD_CHARS
    from include.storage.staging_table import copy_arrow_to_staging
    from spark_jobs.stage import typed_events
    from spark_jobs.transforms import PARSED_SCHEMA, parse_landed_files
    from tests.spark_jobs.test_parser_paths import evolving_feed, generated_files

    pipeline.reset()
    corpus = [(str(path), path.read_bytes()) for path in generated_files(tmp_path)]
    corpus += [(f"/landing/{name}", content) for name, content in evolving_feed().items()]
    injected = "e1,7,s1,view,42,\"'); DROP TABLE x; --\",1.00,1,new,t\nx,\"a\tb\\c\u00e9\U0001F600\",,,,,,,,\n"
    corpus.append(("/landing/odd.csv", ("event_id,user_id,session_id,event_type,product_id,category,price,"
                                               "quantity,user_segment,event_time\n" + injected
                                               + "e2,1,s,view,1," + "x" * (MAX_FIELD_CHARS + 1) + ",1,1,new,t\n").encode()))
    files = spark.createDataFrame([(i, path, content) for i, (path, content) in enumerate(corpus, 1)],
                                  "delivery_id long, source_file string, content binary")
    typed = typed_events(files.mapInArrow(parse_landed_files, PARSED_SCHEMA), datetime.now(UTC), 60)
    batches = typed.toArrow().to_batches(max_chunksize=997)
    rows = sum(b.num_rows for b in batches)
    assert copy_arrow_to_staging(pipeline.settings, str(PUBLISHED), 1, 0, iter(batches), binary=True)[0] == rows
    assert copy_arrow_to_staging(pipeline.settings, str(PUBLISHED), 2, 0, iter(batches), binary=False)[0] == rows
    return rows


def test_binary_and_csv_staging_copies_store_the_same_rows_on_every_corpus(pipeline, spark, tmp_path):
    """The differential test of the staging COPY: the binary one (ADBC, from Arrow) against the CSV text one it
    replaced, on the rows Spark types from the parser's whole differential corpus (the generator's output of
    every kind, the evolving feed): the same rows, value for value, in every column (NULLs, the raw lines,
    the parse errors, the rescued columns as JSON, decimals, instants)."""
    from include.contract.columns import STAGED_COLUMNS

    rows = _stage_every_corpus_twice(pipeline, spark, tmp_path)
    columns = ", ".join(STAGED_COLUMNS)
    differ = pipeline.query(
        f"(SELECT 'binary only', {columns} FROM staging_events WHERE spark_batch_id = 1 EXCEPT ALL "
        f" SELECT 'binary only', {columns} FROM staging_events WHERE spark_batch_id = 2) UNION ALL "
        f"(SELECT 'csv only', {columns} FROM staging_events WHERE spark_batch_id = 2 EXCEPT ALL "
        f" SELECT 'csv only', {columns} FROM staging_events WHERE spark_batch_id = 1) LIMIT 5")
    assert differ == []
    # the corpus reaches every kind of value the COPY has to carry
    [(total, unparsed, rescued, late, files_seen)] = pipeline.query(
        "SELECT count(*), count(parse_errors), count(rescued_data), count(*) FILTER (WHERE is_late_arrival), "
        "count(DISTINCT source_file) FROM staging_events WHERE spark_batch_id = 1")
    print(f"\nstaging COPY differential: {files_seen} files, {total} rows each way "
          f"({unparsed} with parse errors, {rescued} with rescued columns, {late} late)")
    assert total == rows > 10_000 and unparsed > 100 and rescued >= 50 and late > 0 and files_seen >= 40


def test_the_audit_picks_the_candidates_the_reference_copy_picked_on_every_corpus(pipeline, spark, tmp_path):
    """The differential test of the audit's candidates: the view ``audit_candidates`` (rows validated where
    they lie, with the repeats and stored ids left out by ``prepare_candidates``) against the reference it
    replaced, the ``DISTINCT ON`` copy, on the whole corpus staged twice (every row of the second batch
    repeats one of the first), with three rows without an event_id in each batch and every seventh parsed
    event_id stored already: the same rows."""
    from include.contract.columns import STAGED_COLUMNS
    from include.quality.audit import prepare_candidates

    _stage_every_corpus_twice(pipeline, spark, tmp_path)
    with psycopg.connect(pipeline.settings.postgres_conninfo) as conn:
        for batch in (1, 2):
            conn.execute("INSERT INTO pipeline_batch_ledger (spark_query_id, spark_batch_id, airflow_run_id, "
                         "input_files, input_rows, started_at) VALUES (%s, %s, 'differential', 1, 0, now())",
                         (PUBLISHED, batch))
        # the corpus's rows without an event_id do not parse; three that do, in each batch
        others = ", ".join(c for c in STAGED_COLUMNS if c != "event_id")
        conn.execute(f"INSERT INTO staging_events (spark_query_id, spark_batch_id, spark_partition, {others}) "
                     f"(SELECT spark_query_id, spark_batch_id, spark_partition, {others} FROM staging_events "
                     f" WHERE parse_errors IS NULL AND spark_batch_id = 1 LIMIT 3) UNION ALL "
                     f"(SELECT spark_query_id, spark_batch_id, spark_partition, {others} FROM staging_events "
                     f" WHERE parse_errors IS NULL AND spark_batch_id = 2 LIMIT 3)")
        stored = conn.execute(
            "INSERT INTO ecommerce_events (event_id, event_type, event_time, schema_version, source_file, source_line) "
            "SELECT DISTINCT event_id, 'view', now(), 'v3', 'stored.csv', 1 FROM staging_events "
            "WHERE spark_batch_id = 1 AND parse_errors IS NULL AND event_id IS NOT NULL AND staging_row_id % 7 = 0"
        ).rowcount
        conn.commit()
        audit = prepare_candidates(conn)
        conn.commit()
        missing_id_key = "CASE WHEN s.event_id IS NULL THEN s.staging_row_id END"
        reference = {row_id for (row_id,) in conn.execute(
            f"""SELECT DISTINCT ON (s.event_id, {missing_id_key}) s.staging_row_id
                  FROM staging_events s JOIN pipeline_batch_ledger l USING (spark_query_id, spark_batch_id)
                 WHERE l.published_at IS NULL AND s.parse_errors IS NULL
                   AND NOT EXISTS (SELECT 1 FROM ecommerce_events e WHERE e.event_id = s.event_id)
                 ORDER BY s.event_id, {missing_id_key}, s.spark_batch_id, s.source_file, s.source_line""")}
        candidates = {row_id for (row_id,) in conn.execute("SELECT staging_row_id FROM audit_candidates")}
        [(parsed, without_id)] = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE event_id IS NULL) FROM staging_events WHERE parse_errors IS NULL")
    print(f"\naudit candidates differential: {parsed} parsed rows, {stored} ids stored, {without_id} without an "
          f"event_id; {len(candidates)} candidates each way")
    assert candidates == reference
    assert audit.candidate_rows == len(candidates)
    assert stored > 100 and without_id == 6 and 0 < len(candidates) < parsed // 2 + without_id
