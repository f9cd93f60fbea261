"""The differential test of the publish paths: the code in ``include/publish`` against the reference it replaced
(``tests/fixtures/publish_reference``, the same paths before they became named steps composed with psycopg.sql).

Two databases, each at the head of the schema, get the same staged corpora: Spark's typed rows of the
generator's output of every kind (valid rows, every rule broken, duplicates within and across files, late rows,
rows that cannot be typed, damaged files), the evolving feed (rescued columns) and injected text. On one side
the reference publishes them, on the other the new code, step for step:

1. every-minute publishes: two batches at once by the plain INSERT; a batch with a re-delivered file and an event
   stored between audit and publish (ON CONFLICT); a rule of severity ``fail`` (RuleFailed), a routing that
   disagrees with Great Expectations (RoutingMismatch), an audit a newer audit replaced (AuditOutOfDate), then
   the publish with two rules at ``drop``, and its retry after the commit;
2. backfills re-deriving owned deliveries under other thresholds and severities, with rows moving both ways, the
   same backfill again (it changes nothing), its batch published meanwhile (BackfillAlreadyPublished), and a
   backfill that reopens the dead letters the first one resolved;
3. dead-letter replays: a dry run, a replay whose approved counts no longer hold (SelectionChanged), the approved
   replay (one dead letter's event_id stored meanwhile), and one selected by file and time.

After every step both sides must have returned the same result (or raised the same exception with the same
message) and printed the same lines, and every table the paths write must hold the same rows, value for value:
but for the ids a sequence hands out in the order of a plan (``SEQUENCE_IDS``: a move names its dead letter by
the dead letter's line instead), and the moments a statement stamps (``now()``, ``clock_timestamp()``) and the
timings derived from them, compared by whether they are set. Great Expectations validates once per step, on the
reference's database, and both sides route by that one validation (their candidates are the same rows).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from types import ModuleType

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from include.publish import backfill, every_minute, replay
from include.quality.audit import prepare_candidates, validate
from include.settings import Settings
from include.storage.locks import publish_lock
from include.storage.migrations.runner import upgrade_schema
from tests.fixtures.publish_reference import backfill as reference_backfill
from tests.fixtures.publish_reference import every_minute as reference_every_minute
from tests.fixtures.publish_reference import replay as reference_replay

pytestmark = [pytest.mark.integration, pytest.mark.db]

QUERY = "00000000-0000-4000-8000-0000000000d1"  # the every-minute ingest's Spark query
TABLES = ("ecommerce_events", "dead_letter_events", "rule_violations", "data_quality_metrics", "dead_letter_moves",
          "pipeline_batch_ledger", "pipeline_backfill_ledger", "deliveries", "staging_events", "feed_columns_seen",
          "audit_pinned_batches", "audit_excluded_rows", "revalidation_candidates", "ecommerce_events_generation")
# stamped by the statement that writes them (a moment, or a time measured from one): compared by being set
STAMPED = {"processed_at", "failed_at", "status_changed_at", "last_replayed_at", "recorded_at", "moved_at",
           "published_at", "staged_at", "first_seen_at", "processing_time_ms", "throughput"}
# Ids a sequence hands out in the order a statement's plan yields its rows (a plan may differ between the two
# databases, whose tables autovacuum analyses at its own moments): left aside, and a move's dead letter is named
# by its line. (The staged rows' ids follow the COPY, the same on both sides.)
SEQUENCE_IDS = {"dead_letter_events": "id", "rule_violations": "id", "data_quality_metrics": "id",
                "dead_letter_moves": "id", "revalidation_candidates": "staging_row_id"}
DEAD_LETTER_LINE = ("(SELECT ARRAY[d.delivery_id::text, d.source_line::text, d.event_id] FROM dead_letter_events d "
                    "WHERE d.id = dead_letter_id)")
DROP_DOMAIN_RULES = json.dumps({"category_known": "drop", "user_segment_known": "drop"})


@dataclass
class Side:
    name: str
    settings: Settings
    every_minute: ModuleType
    backfill: ModuleType
    replay: ModuleType

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.settings.postgres_conninfo)

    def run(self, work):
        """``work(conn)`` on a new connection, as a task runs it (``with_connection``)."""
        with self.connect() as conn:
            return work(conn)

    def execute(self, statement: str, params=None) -> list[tuple]:
        def work(conn: psycopg.Connection) -> list[tuple]:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
        return self.run(work)


def outcome(call) -> tuple:
    """What a call returned, or the exception it raised (class name and message), and what it printed."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            result = call()
    except Exception as error:  # noqa: BLE001 - any exception is an outcome to compare
        return "raised", type(error).__name__, str(error), printed.getvalue()
    return "returned", asdict(result) if hasattr(result, "__dataclass_fields__") else result, printed.getvalue()


def snapshot(side: Side) -> dict[str, list[tuple]]:
    """Every row of every table the paths write, sorted; stamped moments as whether they are set, sequence ids
    aside."""
    tables = {}
    with side.connect() as conn:
        for table in TABLES:
            columns = [name for (name,) in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
                (table,))]
            select = ", ".join(f"{c} IS NOT NULL" if c in STAMPED else DEAD_LETTER_LINE if c == "dead_letter_id" else c
                               for c in columns if c != SEQUENCE_IDS.get(table))
            tables[table] = sorted(conn.execute(f"SELECT {select} FROM {table}").fetchall(), key=repr)
    return tables


def difference(expected: list[tuple], actual: list[tuple]) -> str:
    """A few of the rows only the reference wrote and of those only the new code wrote."""
    expected_rows, actual_rows = Counter(map(repr, expected)), Counter(map(repr, actual))
    return (f"{len(expected)} rows against {len(actual)}; only the reference's: "
            f"{list(expected_rows - actual_rows)[:3]}; only the new code's: {list(actual_rows - expected_rows)[:3]}")


class Differential:
    """Both sides, the corpus's typed rows, and the counts reported at the end."""

    def __init__(self, reference: Side, steps: Side, typed: pa.Table, corpus: dict[int, str]):
        self.sides = (reference, steps)
        self.typed, self.corpus = typed, corpus
        self.counts: dict[str, dict[str, int]] = {}
        self.results: dict[str, object] = {}  # what each side's call of the last step returned

    def both(self, step: str, call, raises: str | None = None, ids: tuple[str, ...] = ()) -> tuple:
        """``call(side)`` on each side: the same outcome (returned, or ``raises``; the result's ``ids`` aside), the
        same tables; the reference's outcome."""
        outcomes = {side.name: outcome(lambda side=side: call(side)) for side in self.sides}
        reference, steps = outcomes.values()
        assert reference[:2] == ("raised", raises) if raises else reference[0] == "returned", (step, reference)
        self.results = {name: result for name, (_, result, *_) in outcomes.items()}

        def aside(outcome: tuple) -> tuple:
            kind, result, *rest = outcome
            return kind, {k: v for k, v in result.items() if k not in ids} if ids else result, *rest
        assert aside(steps) == aside(reference), step
        expected, actual = (snapshot(side) for side in self.sides)
        for table in TABLES:
            assert actual[table] == expected[table], \
                f"{step}: {table} differs: {difference(expected[table], actual[table])}"
        self.counts[step] = {table: len(rows) for table, rows in expected.items() if rows}
        return reference

    def sql(self, statement: str, params=None) -> list[tuple]:
        """The same statement on both sides (setting the scene); its rows, the same on both."""
        reference, steps = (side.execute(statement, params) for side in self.sides)
        assert reference == steps, statement
        return reference

    def stage(self, query_id: str, batch_id: int, deliveries: list[int], *, redelivered: dict[int, int] | None = None,
              every_minute_batch: bool = True) -> None:
        """Stage the typed rows of ``deliveries`` (and of ``redelivered``: new id -> the delivery it repeats) as
        one batch on both sides, with its deliveries and, for the every-minute path, its ledger row."""
        from include.storage.staging_table import copy_arrow_to_staging

        redelivered = redelivered or {}
        parts = [self.typed.filter(pc.is_in(self.typed["delivery_id"], value_set=pa.array(deliveries, pa.int64())))]
        for new, old in redelivered.items():
            part = self.typed.filter(pc.equal(self.typed["delivery_id"], old))
            parts.append(part.set_column(part.schema.get_field_index("delivery_id"), "delivery_id",
                                         pa.array([new] * part.num_rows, pa.int64())))
        rows = pa.concat_tables(parts)
        for side in self.sides:
            copy_arrow_to_staging(side.settings, query_id, batch_id, 0, iter(rows.to_batches(max_chunksize=997)))
        if not every_minute_batch:
            return
        for delivery in [*deliveries, *redelivered]:
            source = self.corpus[redelivered.get(delivery, delivery)]
            self.sql("INSERT INTO deliveries (delivery_id, file_name, source_file, size_bytes, claimed_at, "
                     "completed_by, status, path, spark_query_id, spark_batch_id, staged_at) VALUES (%s, %s, %s, 1, "
                     "'2026-12-01T10:00Z', 'settled', 'archived', '', %s, %s, '2026-12-01T10:01Z')",
                     (delivery, source.rsplit("/", 1)[-1], source, query_id, batch_id))
        self.sql("INSERT INTO pipeline_batch_ledger (spark_query_id, spark_batch_id, airflow_run_id, input_files, "
                 "input_rows, quarantined_files, started_at) VALUES (%s, %s, %s, %s, %s, 1, '2026-12-01T10:00Z')",
                 (query_id, batch_id, f"scheduled__batch_{batch_id}", len(deliveries) + len(redelivered),
                  rows.num_rows))

    def audit(self, settings: dict) -> dict[str, object]:
        """Each side's audit of its staged batches, validated once (the candidates are the same rows)."""
        audits = {}
        for side in self.sides:
            with side.connect() as conn:
                audits[side.name] = prepare_candidates(conn)
        assert len({json.dumps(asdict(a)) for a in audits.values()}) == 1
        reference = self.sides[0]
        validation = validate(replace(reference.settings, **settings), "differential")
        for audited in audits.values():
            audited.validation = copy.deepcopy(validation)
        return audits

    def publish(self, step: str, audits: dict, settings: dict, run_id: str, raises: str | None = None) -> tuple:
        return self.both(step, lambda side: side.run(lambda conn: side.every_minute.publish(
            conn, audits[side.name], replace(side.settings, **settings), run_id)), raises)


def growing_business(directory) -> list:
    """Two files of good v3 rows, a fifth of them in a new category or a new segment (rules of severity warn)."""
    from scripts.generator import EventGenerator

    files = []
    for seed in (31, 32):
        generator = EventGenerator(seed, invalid_ratio=0.0, duplicate_ratio=0.0, late_ratio=0.0, structural_ratio=0.0)
        rows = generator.generate_batch(200, "v3")
        for i, row in enumerate(rows[:40]):
            row["category" if i % 2 else "user_segment"] = "garden" if i % 2 else "returning"
        files.append(generator.write_batch(rows, "v3", directory))
    return files


@pytest.fixture
def differential(pipeline, spark, tmp_path):
    from include.contract.parser import MAX_FIELD_CHARS
    from spark_jobs.stage import typed_events
    from spark_jobs.transforms import PARSED_SCHEMA, parse_landed_files
    from tests.spark_jobs.test_parser_paths import evolving_feed, generated_files

    growing = [(str(path), path.read_bytes()) for path in growing_business(tmp_path / "growing")]
    corpus = growing[:1] + [(str(path), path.read_bytes()) for path in generated_files(tmp_path / "generated")]
    corpus += [(f"/landing/{name}", content) for name, content in evolving_feed().items()]
    header = "event_id,user_id,session_id,event_type,product_id,category,price,quantity,user_segment,event_time\n"
    corpus.append(("/landing/odd.csv", (header + "e1,7,s1,view,42,\"'); DROP TABLE x; --\",1.00,1,new,t\n"
                                        "x,\"a\tb\\c\u00e9\U0001F600\",,,,,,,,\n"
                                        "e2,1,s,view,1," + "x" * (MAX_FIELD_CHARS + 1) + ",1,1,new,t\n").encode()))
    corpus += growing[1:]
    files = spark.createDataFrame([(i, path, content) for i, (path, content) in enumerate(corpus, 1)],
                                  "delivery_id long, source_file string, content binary")
    typed = typed_events(files.mapInArrow(parse_landed_files, PARSED_SCHEMA), datetime.now(UTC), 60).toArrow()
    with pipeline.scratch_database("publish_reference") as reference, \
            pipeline.scratch_database("publish_steps") as steps:
        sides = []
        for name, conninfo, modules in (
                ("reference", reference, (reference_every_minute, reference_backfill, reference_replay)),
                ("steps", steps, (every_minute, backfill, replay))):
            upgrade_schema(conninfo)
            settings = replace(pipeline.settings, postgres_db=psycopg.conninfo.conninfo_to_dict(conninfo)["dbname"],
                               great_expectations_dir=tmp_path / "gx")
            sides.append(Side(name, settings, *modules))
        yield Differential(*sides, typed, {i: path for i, (path, _) in enumerate(corpus, 1)})


def test_the_publish_paths_write_what_the_reference_wrote_on_every_corpus(differential):
    d = differential
    files = len(d.corpus)
    assert files > 50 and d.typed.num_rows > 10_000
    first, second, third = list(range(1, 21)), list(range(21, 36)), list(range(36, files + 1))
    redelivery = files + 1  # the file of delivery 2, delivered again

    # 1. every-minute publishes
    d.stage(QUERY, 0, first)
    d.stage(QUERY, 1, second)
    result = d.publish("two batches, plain INSERT", d.audit({"max_price": 500.0}), {"max_price": 500.0}, "run_1")
    assert result[1]["invalid"] > 100 and result[1]["warned"] > 0 and result[1]["late"] > 0

    d.stage(QUERY, 2, third[:10], redelivered={redelivery: 2})
    audits = d.audit({"max_price": 500.0})
    stored_meanwhile = d.sql("SELECT event_id FROM audit_candidates ORDER BY event_id LIMIT 1")[0][0]
    for side in d.sides:  # another writer (a replay, a backfill) stores one of the candidates under the lock
        with side.connect() as conn, conn.transaction():
            publish_lock(conn)
            conn.execute("INSERT INTO ecommerce_events (event_id, event_type, event_time, schema_version, source_file, "
                         "source_line) VALUES (%s, 'view', '2026-12-01T10:00Z', 'v3', '/archive/x.csv', 1)",
                         (stored_meanwhile,))
    result = d.publish("a re-delivered file and an event stored meanwhile, ON CONFLICT", audits,
                       {"max_price": 500.0}, "run_2")
    assert "write generation" in result[2] and result[1]["duplicates"] > 300 and result[1]["new_columns"]

    d.stage(QUERY, 3, third[10:])
    audits = d.audit({"max_price": 500.0})
    severity = {"max_price": 500.0, "rule_severity": json.dumps({"category_known": "fail"})}
    d.publish("a rule of severity fail", audits, severity, "run_3", raises="RuleFailed")
    tampered = copy.deepcopy(audits)
    for audited in tampered.values():
        audited.validation.rules["price_in_range"].unexpected_count += 1
    d.publish("a routing that disagrees with GX", tampered, {"max_price": 500.0}, "run_3", raises="RoutingMismatch")
    d.stage(QUERY, 4, [], redelivered={redelivery + 1: 40})
    newer = d.audit({"max_price": 500.0})
    d.publish("an audit another replaced", audits, {"max_price": 500.0}, "run_3", raises="AuditOutOfDate")
    settings = {"max_price": 500.0, "rule_severity": DROP_DOMAIN_RULES}
    d.publish("the domain rules at drop", newer, settings, "run_4")
    assert d.publish("its retry after the commit", newer, settings, "run_4")[1]["already_published"]

    # 2. backfills: re-derive owned deliveries (every kind of line, a re-delivered file's duplicates)
    def rederive(step: str, deliveries: list[int], settings: dict, reason: str | None = "differential") -> tuple:
        run_id = f"backfill__{step}"
        batch = str(uuid.uuid5(uuid.NAMESPACE_URL, step))
        d.sql("INSERT INTO pipeline_backfill_ledger (backfill_batch_id, airflow_run_id, window_start, window_end, "
              "input_files, input_rows, source_files, started_at, staged_at, deliveries, request_key, reason) "
              "VALUES (%s, %s, '2026-12-01T10:00Z', '2026-12-01T11:00Z', %s, 0, '{}', '2026-12-01T12:00Z', "
              "'2026-12-01T12:01Z', %s, %s, %s)", (batch, run_id, len(deliveries), deliveries, step, reason))
        d.stage(batch, 0, [i for i in deliveries if i <= files], every_minute_batch=False,
                redelivered={i: 2 for i in deliveries if i > files})
        pinned = d.both(f"{step}: candidates", lambda side: side.run(
            lambda conn: side.backfill.prepare_candidates(conn, run_id)))
        validation = validate(replace(d.sides[0].settings, **settings), run_id, table="revalidation_candidates")

        def publish(side: Side):
            return side.run(lambda conn: side.backfill.publish_backfill(
                conn, side.backfill.PinnedBackfill(**pinned[1]), copy.deepcopy(validation),
                replace(side.settings, **settings), run_id))
        return d.both(step, publish) + (publish,)

    owned = [*range(1, 16), redelivery]
    both_ways = {"max_price": 10000.0, "rule_severity": DROP_DOMAIN_RULES}
    moved = rederive("backfill under other rules", owned, both_ways)[1]
    assert moved["moved_to_events"] > 100 and moved["moved_to_dead_letter"] > 0 and moved["duplicate"] > 300
    again = rederive("the same backfill again", owned, both_ways, reason=None)
    assert again[1]["moved_to_events"] == again[1]["moved_to_dead_letter"] == again[1]["dead_letters_added"] == 0
    d.both("its batch published meanwhile", again[-1], raises="BackfillAlreadyPublished")
    back = rederive("a backfill that reopens dead letters", owned[:8], {"max_price": 500.0})[1]
    assert back["moved_to_dead_letter"] > 50 and back["dead_letters_updated"] > 50

    # 3. dead-letter replays
    def replayed(step: str, settings: dict, *, dry_run: bool, filters: dict, expected=None, raises=None,
                 up_to: dict[str, int] | None = None) -> tuple:
        """A replay of the dead letters ``filters`` select (on each side up to its dead letter ``up_to``);
        its candidates' counts, its outcome, and the highest dead letter id each side selected."""
        def selection(side: Side) -> tuple:
            return side.replay.selection(**filters, up_to_id=up_to[side.name] if up_to else None)

        prepared = d.both(f"{step}: candidates", lambda side: side.run(
            lambda conn: side.replay.prepare_candidates(conn, *selection(side))), ids=("up_to_id",))
        selected = {name: result["up_to_id"] for name, result in d.results.items()}
        validation = validate(replace(d.sides[0].settings, **settings), step, table="revalidation_candidates") \
            if prepared[1]["candidates"] else None

        def apply(conn: psycopg.Connection, side: Side) -> dict:
            counts = side.replay.apply(conn, copy.deepcopy(validation), replace(side.settings, **settings),
                                       *selection(side), step, dry_run, "approver", expected)
            conn.execute("TRUNCATE revalidation_candidates")  # as replay() does after it
            return counts
        return prepared[1], d.both(step, lambda side: side.run(lambda conn: apply(conn, side)), raises)[1], selected

    price = {"rule": "price_in_range", "failed_from": None, "failed_to": None, "source_file": None}
    [(event_id,)] = d.sql("SELECT min(event_id) FROM dead_letter_events WHERE status = 'open' AND error_kind = 'rule' "
                          "AND failed_rules = '{price_in_range}' AND typed_row IS NOT NULL")
    d.sql("INSERT INTO ecommerce_events (event_id, event_type, event_time, schema_version, source_file, source_line) "
          "VALUES (%s, 'view', '2026-12-01T10:00Z', 'v3', '/archive/y.csv', 1)", (event_id,))
    _, counted, up_to = replayed("a dry run", {"max_price": 10000.0}, dry_run=True, filters=price)
    assert counted["published"] > 50 and counted["resolved_already_stored"] >= 1
    wrong = {**counted, "published": counted["published"] - 1}
    replayed("approved counts that no longer hold", {"max_price": 10000.0}, dry_run=False, filters=price,
             expected=wrong, raises="SelectionChanged", up_to=up_to)
    replayed("the approved replay", {"max_price": 10000.0}, dry_run=False, filters=price, expected=counted,
             up_to=up_to)
    [(still_open,)] = d.sql("SELECT source_file FROM dead_letter_events WHERE status = 'open' AND error_kind = 'rule' "
                            "AND typed_row IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1")
    named = {"rule": None, "failed_from": datetime(2000, 1, 1, tzinfo=UTC),
             "failed_to": datetime.now(UTC) + timedelta(days=1), "source_file": still_open.rsplit("/", 1)[-1]}
    prepared, counted, _ = replayed("a replay by file and time", {"max_price": 100.0}, dry_run=False, filters=named)
    assert prepared["candidates"] > 0 and counted["still_failing"] > 0

    print("\npublish differential, rows per table after each step (the same on both sides):")
    for step, counts in d.counts.items():
        print(f"  {step}: {json.dumps(counts)}")
