"""The steps and statements every writer of ``ecommerce_events`` / ``dead_letter_events`` shares, written once.

Three paths write the two tables: the every-minute publish, a backfill's re-derive and a dead-letter replay.
Each one, inside its one transaction:

1. takes the publish lock (``include.storage.locks.publish_lock``), so their transactions never interleave;
2. routes the candidate rows that break a rule into the temp tables ``rule_failures`` (severity drop),
   ``rule_warnings`` (warn) and ``rule_blockers`` (fail) (``route_rule_failures``), refusing where routing
   disagrees with Great Expectations' count, and stopping when a ``fail`` rule is broken;
3. stores the passing rows (``insert_events``: an event_id already stored makes the row a duplicate; the
   every-minute publish skips that check when no writer has stored an event since its audit, see ``publish_lock``);
4. records the warn-level violations of the rows it stored (``record_violations``) and every row that changed
   table in ``dead_letter_moves`` (``record_moves``; backfill and replay).

Every statement is composed with ``psycopg.sql``: tables and columns are identifiers (the columns from the
contract's lists, ``include.contract.columns``), values are literals or placeholders, and a statement names each
relation it reads: a caller hands over the name of its candidates, never an alias the statement expects. Only
the rules' predicates and reasons come in as SQL text: the contract's rules derive them
(``include.contract.rules.routing_predicate`` / ``reason_sql``), and Great Expectations' counts check them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import psycopg
from psycopg.sql import SQL, Composable, Composed, Identifier, Literal

from include.contract.columns import EVENT_COLUMNS
from include.contract.rules import ROW_RULES, RowRule, reason_sql, routing_predicate, severities, suite_parameters
from include.results import Validation
from include.settings import Settings


class RoutingMismatch(RuntimeError):
    """The SQL routing of a rule disagrees with Great Expectations' count; nothing was published."""


class RuleFailed(RuntimeError):
    """A rule of severity ``fail`` is broken: nothing was published, the batch stays staged."""


# The run's lineage of a stored row or a dead letter: the Airflow run that published it, the Spark batch it came in.
RUN_LINEAGE = ("airflow_run_id", "spark_query_id", "spark_batch_id")
# What a dead letter carries of its line, in the order the dead-letter steps list (and group) it: the contract's
# lineage columns (version, file, line, delivery) around the run's.
DEAD_LETTER_LINEAGE = ("schema_version", "source_file", "source_line", *RUN_LINEAGE, "delivery_id")
# Where route_rule_failures puts a row that breaks a rule, by the rule's severity.
ROUTES = {"drop": "rule_failures", "warn": "rule_warnings", "fail": "rule_blockers"}
NOTHING, NULL = SQL(""), SQL("NULL")


def columns(names: Iterable[str], relation: str | None = None) -> Composed:
    """``a, b, c``, or ``relation.a, relation.b, relation.c``: quoted identifiers."""
    return SQL(", ").join(Identifier(relation, name) if relation else Identifier(name) for name in names)


def join_using(relation: str, *keys: str) -> Composed:
    """`` JOIN relation USING (keys)``, to follow a FROM item."""
    return SQL(" JOIN {} USING ({})").format(Identifier(relation), columns(keys))


def dead_letter_lineage(relation: str, run_id: Composable) -> Composed:
    """The values of ``DEAD_LETTER_LINEAGE`` for a dead letter of a row of ``relation``, run id ``run_id``."""
    return SQL(", ").join(run_id if name == "airflow_run_id" else Identifier(relation, name)
                          for name in DEAD_LETTER_LINEAGE)


def passes_every_rule(candidates: str) -> Composed:
    """True for a row of ``candidates`` that broke no rule of severity drop (has no row in ``rule_failures``)."""
    return SQL("NOT EXISTS (SELECT 1 FROM rule_failures WHERE rule_failures.staging_row_id = {})").format(
        Identifier(candidates, "staging_row_id"))


# ---- route: the rows that break a rule, by severity, checked against Great Expectations

def route_rule_failures(conn: psycopg.Connection, validation: Validation | None, settings: Settings,
                        candidates: str) -> None:
    """Fill the temp tables (row id, rule, reason) from the validated table ``candidates`` with each rule's
    routing predicate, by the rule's severity: ``rule_failures`` (drop: dead letters), ``rule_warnings`` (warn:
    stored, recorded) and ``rule_blockers`` (fail). Refuses (``RoutingMismatch``) where routing disagrees with
    Great Expectations' count, and raises ``RuleFailed`` when a ``fail`` rule is broken, before anything is
    written. ``validation`` None means the table was empty and not validated: nothing is routed."""
    create_route_tables(conn)
    if validation is None:
        return
    severity = severities(settings)
    parameters = suite_parameters(settings, validation.audited_at)
    predicates = {rule.name: SQL(routing_predicate(rule, parameters)) for rule in ROW_RULES}
    collect_failing_candidates(conn, candidates, predicates.values())
    for rule in ROW_RULES:
        route_rule(conn, rule, severity[rule.name], predicates[rule.name], SQL(reason_sql(rule, parameters)),
                   validation.rules[rule.name].unexpected_count)
    analyze_routes(conn)
    refuse_broken_fail_rules(conn, candidates)


def create_route_tables(conn: psycopg.Connection) -> None:
    for route in ROUTES.values():
        conn.execute(SQL("CREATE TEMP TABLE {} (staging_row_id bigint, rule text, reason text) ON COMMIT DROP")
                     .format(Identifier(route)))


def collect_failing_candidates(conn: psycopg.Connection, candidates: str, predicates: Iterable[SQL]) -> None:
    """``failing_candidates``: the rows of ``candidates`` that break any rule.

    One scan of the whole table finds the rows that break any rule (a few percent); each rule's routing then
    reads only those. A predicate that is NULL for a row selects it neither here nor alone."""
    conn.execute(SQL("CREATE TEMP TABLE failing_candidates ON COMMIT DROP AS SELECT * FROM {} WHERE {}").format(
        Identifier(candidates), SQL(" OR ").join(SQL("({})").format(predicate) for predicate in predicates)))


def route_rule(conn: psycopg.Connection, rule: RowRule, severity: str, predicate: SQL, reason: SQL,
               expected: int) -> None:
    """The failing candidates that break ``rule`` into the route of its severity, with their reason; exactly
    ``expected`` of them (Great Expectations' count), or ``RoutingMismatch``."""
    routed = conn.execute(
        SQL("INSERT INTO {route} SELECT staging_row_id, %s, {reason} FROM failing_candidates WHERE {predicate}")
        .format(route=Identifier(ROUTES[severity]), reason=reason, predicate=predicate),
        (rule.name,),
    ).rowcount
    if routed != expected:
        raise RoutingMismatch(
            f"rule {rule.name}: routing selects {routed} rows, Great Expectations counted {expected}; "
            "nothing was written (fix routing_predicate for this expectation type)"
        )


def analyze_routes(conn: psycopg.Connection) -> None:
    conn.execute("CREATE INDEX ON rule_failures (staging_row_id)")
    # Temp tables are never analysed by autovacuum: without this the planner guesses their size from their
    # pages and joins the few failing rows to the whole candidate and staging tables by hashing those
    # (the rule dead letters took 39.7 s for 100,000 of 5M rows).
    conn.execute("ANALYZE rule_failures, rule_warnings, rule_blockers")


def refuse_broken_fail_rules(conn: psycopg.Connection, candidates: str) -> None:
    """``RuleFailed`` naming each rule of severity fail that rows of ``candidates`` break, with a few event_ids."""
    blocked = conn.execute(SQL(
        "SELECT rule_blockers.rule, count(*), (array_agg({event_id} ORDER BY {row_id}))[1:5] "
        "FROM rule_blockers JOIN {candidates} USING (staging_row_id) GROUP BY rule_blockers.rule "
        "ORDER BY rule_blockers.rule").format(
            event_id=Identifier(candidates, "event_id"), row_id=Identifier(candidates, "staging_row_id"),
            candidates=Identifier(candidates))).fetchall()
    if blocked:
        broken = "; ".join(f"rule {rule} (severity fail) is broken by {rows} row(s), e.g. event_id "
                           f"{', '.join(map(str, event_ids))}" for rule, rows, event_ids in blocked)
        raise RuleFailed(f"{broken}. Nothing of these batches was published; they stay staged and the next run "
                         "publishes them once the data or the rule's severity (Airflow Variable "
                         "ecommerce_rule_severity) is fixed.")


# ---- the statements that store rows and record what happened to them

def insert_events(candidates: str, *, run_id: Composable, where: Composable, returning: Sequence[str],
                  join: Composable = NOTHING, order_by: Sequence[str] = (), skip_stored: bool = True) -> Composed:
    """``INSERT … SELECT`` of the rows of ``candidates`` (a table or view of candidate rows, ``join`` may join
    more relations to it) that ``where`` selects into ``ecommerce_events``, in the order of its columns
    ``order_by``; ``run_id`` is the Airflow run id recorded on the rows. An event_id already stored is skipped
    (a duplicate); the statement returns the ``returning`` columns of the stored rows.

    ``skip_stored=False`` is for candidates known to hold no stored and no repeated event_id (an audit's, with
    the write generation unchanged since: ``include.storage.locks.publish_lock``): a plain INSERT, which costs a
    third less than ``ON CONFLICT`` at 1M rows into 4M (16.7 s against 25.9 s, docs/performance.md). Were a
    row to conflict after all, the primary key fails the transaction: nothing is lost or stored twice."""
    return SQL(
        "INSERT INTO ecommerce_events ({events}, {lineage}) SELECT {values}, {run_id}, {spark} FROM {candidates}{join}"
        " WHERE {where}{order_by}{on_conflict} RETURNING {returning}"
    ).format(
        events=columns(EVENT_COLUMNS), lineage=columns(RUN_LINEAGE), values=columns(EVENT_COLUMNS, candidates),
        run_id=run_id, spark=columns(RUN_LINEAGE[1:], candidates), candidates=Identifier(candidates), join=join,
        where=where, order_by=SQL(" ORDER BY {}").format(columns(order_by, candidates)) if order_by else NOTHING,
        on_conflict=SQL(" ON CONFLICT (event_id) DO NOTHING") if skip_stored else NOTHING,
        returning=columns(returning),
    )


def record_violations(candidates: str, *, run_id: Composable, where: Composable,
                      join: Composable = NOTHING) -> Composed:
    """``INSERT … SELECT`` into ``rule_violations`` of the warn-level violations (temp table ``rule_warnings``)
    of the rows of ``candidates`` (``join`` may join more relations to it) that ``where`` selects: the rows
    stored in ``ecommerce_events`` by this transaction. An (event, rule) already recorded is kept as it is, so a
    backfill re-deriving a window records nothing twice. Returns spark_query_id, spark_batch_id, event_id."""
    return SQL(
        "INSERT INTO rule_violations (event_id, rule, reason, source_file, source_line, {lineage}, delivery_id)"
        " SELECT {event_id}, rule_warnings.rule, rule_warnings.reason, {line}, {run_id}, {spark}, {delivery}"
        " FROM rule_warnings JOIN ({candidates}{join}) USING (staging_row_id) WHERE {where}"
        " ON CONFLICT (event_id, rule) DO NOTHING RETURNING spark_query_id, spark_batch_id, event_id"
    ).format(
        lineage=columns(RUN_LINEAGE), event_id=Identifier(candidates, "event_id"),
        line=columns(("source_file", "source_line"), candidates), run_id=run_id,
        spark=columns(RUN_LINEAGE[1:], candidates), delivery=Identifier(candidates, "delivery_id"),
        candidates=Identifier(candidates), join=join, where=where,
    )


def record_moves(moved: Composable, *, direction: str, cause: str, run_id: Composable,
                 approved_by: Composable = NULL, reason: Composable = NULL) -> Composed:
    """``INSERT … SELECT`` into ``dead_letter_moves`` of the rows of ``moved`` (a FROM item yielding event_id,
    source_file, source_line, delivery_id, dead_letter_id, failed_rules), each moved ``direction`` because of
    ``cause``, by the run ``run_id``, approved by ``approved_by``, for ``reason``."""
    return SQL(
        "INSERT INTO dead_letter_moves (direction, cause, {moved_columns}, airflow_run_id, approved_by, reason)"
        " SELECT {direction}, {cause}, {moved_columns}, {run_id}, {approved_by}, {reason} FROM {moved}"
    ).format(
        moved_columns=columns(("event_id", "source_file", "source_line", "delivery_id", "dead_letter_id",
                               "failed_rules")),
        direction=Literal(direction), cause=Literal(cause), run_id=run_id, approved_by=approved_by, reason=reason,
        moved=moved,
    )
